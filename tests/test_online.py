"""Online learning core: label-smoothing targets, hard user labels, replay, one real update.

Synthetic data: a bright disc on a dark noisy background (class 1 = disc), small tiny-UNet
configurations so that each test takes seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from learner.inference import predict_labels
from learner.jobs import TrainJob, ValidationImage, run_train_job
from learner.metrics import dice_per_class
from learner.networks import NetworkConfig, build_network
from learner.online import (
    OnlineExample,
    OnlineSettings,
    UpdateCancelled,
    apply_user_labels,
    label_smoothing_target,
    predict_slices,
    prepare_image,
    proxy_target,
    replay_slices,
    schedule_weight,
    train_online,
)
from learner.registry import ModelRegistry
from learner.replay import ReplayBuffer, SoftSlices
from registration.volume import UNLABELLED

TINY_CHANNELS = (4, 8, 16, 32, 64)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks gain nothing from threads, and on a busy 2-core machine contended
    intra-op threads make them many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(num_classes: int = 2) -> NetworkConfig:
    return NetworkConfig(num_classes=num_classes, channels=TINY_CHANNELS, deep_supervision=False)


def disc_volume(seed: int, shape: tuple[int, int, int] = (6, 48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (z, y, x), label uint8 (z, y, x)): a bright disc (1) at a random place."""
    rng = np.random.default_rng(seed)
    _, h, w = shape
    y, x = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.35, 0.65, 2) * (h, w)
    radius = rng.uniform(0.18, 0.26) * min(h, w)
    disc = ((y - cy) ** 2 + (x - cx) ** 2) < radius**2
    label = np.broadcast_to(disc, shape).astype(np.uint8)
    image = (0.2 + 0.6 * label + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    return image, label


def write_project_files(folder: Path, seed: int, name: str) -> dict[str, str]:
    """Image and proxy label files of one synthetic volume; returns their paths."""
    image, label = disc_volume(seed)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}-image.npy", image)
    np.save(folder / f"{name}-label.npy", label)
    return {"image_path": str(folder / f"{name}-image.npy"), "label_path": str(folder / f"{name}-label.npy")}


def new_registry(root: Path, num_classes: int = 2, seed: int = 0) -> ModelRegistry:
    registry = ModelRegistry(root)
    registry.create_initial(tiny_config(num_classes), seed=seed)
    return registry


# -- targets --------------------------------------------------------------------------------


def test_label_smoothing_target_mixes_previous_prediction_and_proxy():
    previous = np.array([[0.8, 0.5, 0.1], [0.2, 0.5, 0.9]], np.float32)  # (C=2, 3 voxels)
    proxy = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]], np.float32)
    weight = np.array([0.25, 1.0, 0.0], np.float32)
    target = label_smoothing_target(previous, proxy, weight)
    # voxel 0: 0.75*[0.8, 0.2] + 0.25*[0, 1] = [0.6, 0.4]; voxel 1: the proxy; voxel 2: previous.
    np.testing.assert_allclose(target, [[0.6, 1.0, 0.1], [0.4, 0.0, 0.9]], atol=1e-6)
    np.testing.assert_allclose(target.sum(axis=0), 1.0, atol=1e-6)


def test_schedule_weight_is_the_sigmoid_over_images_seen():
    assert schedule_weight(10, 20) == pytest.approx(0.5)
    assert schedule_weight(0, 20) == pytest.approx(1 / (1 + np.exp(2.0)))
    assert schedule_weight(20, 20) == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert schedule_weight(5, 20) < schedule_weight(6, 20)


def test_user_voxels_are_hard_labels_with_full_weight():
    num_classes = 3
    shape = (2, 4, 4)
    proxy_labels = np.zeros(shape, np.int64)
    confidence = np.full(shape, 0.2, np.float32)
    user = np.full(shape, UNLABELLED, np.uint8)
    user[0, 1, 1] = 2
    user[1, 3, 0] = 1
    example = OnlineExample(
        image=np.zeros(shape, np.float32), num_classes=num_classes,
        proxy_labels=proxy_labels, confidence=confidence, user_labels=user,
    )
    y, w = proxy_target(example, OnlineSettings(size=16))
    np.testing.assert_array_equal(y[:, 0, 1, 1], [0, 0, 1])
    np.testing.assert_array_equal(y[:, 1, 3, 0], [0, 1, 0])
    assert w[0, 1, 1] == 1.0 and w[1, 3, 0] == 1.0
    drawn = user != UNLABELLED
    np.testing.assert_allclose(w[~drawn], 0.2)
    np.testing.assert_array_equal(y[0][~drawn], 1.0)

    with pytest.raises(ValueError, match="num_classes"):
        apply_user_labels(y, w, np.where(drawn, 7, UNLABELLED).astype(np.uint8), num_classes)


def test_prepared_targets_keep_scribbles_hard_and_smooth_elsewhere():
    torch.manual_seed(0)
    model = build_network(tiny_config(2)).eval()
    image, label = disc_volume(3, shape=(3, 32, 32))
    confidence = np.zeros(image.shape, np.float32)
    confidence[1] = 1.0  # annotated slice
    confidence[0] = confidence[2] = 0.5
    user = np.full(image.shape, UNLABELLED, np.uint8)
    user[1, 2:5, 2:5] = 0
    user[1, 14:18, 14:18] = 1
    example = OnlineExample(image, 2, proxy_labels=label, confidence=confidence, user_labels=user)
    prepared = prepare_image(example, model, OnlineSettings(size=32, residual_loss_weight=0.0))

    drawn = prepared.scribble != UNLABELLED
    assert drawn.sum() == user.__ne__(UNLABELLED).sum()  # same size: nothing resized away
    hard = np.take_along_axis(prepared.targets, prepared.scribble[:, None].astype(np.int64) % 2, axis=1)[:, 0]
    np.testing.assert_allclose(hard[drawn], 1.0)

    previous = predict_slices(model, prepared.images, torch.device("cpu"))
    expected_slice0 = 0.5 * previous[0] + 0.5 * np.eye(2, dtype=np.float32)[label[0].astype(int)].transpose(2, 0, 1)
    np.testing.assert_allclose(prepared.targets[0], expected_slice0, atol=1e-5)
    np.testing.assert_allclose(prepared.weights, 1.0)  # α = 0: uniform loss weights


def test_zero_confidence_targets_the_previous_prediction_and_accepted_labels_are_hard():
    torch.manual_seed(1)
    model = build_network(tiny_config(2)).eval()
    image, label = disc_volume(4, shape=(2, 32, 32))
    example = OnlineExample(image, 2, proxy_labels=label, confidence=np.zeros(image.shape, np.float32))
    prepared = prepare_image(example, model, OnlineSettings(size=32))
    previous = predict_slices(model, prepared.images, torch.device("cpu"))
    np.testing.assert_allclose(prepared.targets, previous, atol=1e-6)
    np.testing.assert_allclose(prepared.residual, 0.0, atol=1e-6)

    accepted = OnlineExample(image, 2, proxy_labels=1 - label, accepted_label=label)
    y, w = proxy_target(accepted, OnlineSettings(size=32))
    np.testing.assert_array_equal(y.argmax(axis=0), label)
    np.testing.assert_array_equal(w, 1.0)


def test_slice_sampling_prefers_slices_with_foreground():
    torch.manual_seed(2)
    model = build_network(tiny_config(2)).eval()
    image, label = disc_volume(5, shape=(4, 32, 32))
    label[[0, 3]] = 0  # only the middle slices hold the structure
    example = OnlineExample(image, 2, proxy_labels=label)
    prepared = prepare_image(example, model, OnlineSettings(size=32))
    p = prepared.slice_probabilities
    assert p.sum() == pytest.approx(1.0)
    assert min(p[1], p[2]) > max(p[0], p[3])
    chosen = replay_slices(prepared, 2, seed=0)
    assert len(chosen) == 2


def test_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown online learning settings"):
        OnlineSettings.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="multiple of 16"):
        OnlineSettings(size=40)
    with pytest.raises(ValueError, match="confidence_mode"):
        OnlineSettings(confidence_mode="guess")
    assert OnlineSettings.from_dict(OnlineSettings(size=64).to_dict()) == OnlineSettings(size=64)


# -- replay ---------------------------------------------------------------------------------


def soft_slices(value: float, n: int = 3, size: int = 8, num_classes: int = 2) -> SoftSlices:
    images = np.full((n, size, size), value, np.float32)
    targets = np.zeros((n, num_classes, size, size), np.float32)
    targets[:, 0] = 1.0
    return SoftSlices(images, targets, np.ones((n, size, size), np.float32))


def test_replay_fifo_evicts_the_oldest_and_persists_across_instances(tmp_path):
    buffer = ReplayBuffer(tmp_path, capacity=2, policy="fifo")
    for i, image_id in enumerate(["a", "b", "c"]):
        assert buffer.add(image_id, soft_slices(float(i)))
    assert buffer.image_ids() == ["b", "c"]
    assert len(list(tmp_path.glob("*.npz"))) == 2  # the evicted file is gone

    buffer.add("b", soft_slices(9.0, n=5))  # a newer round of b replaces it and makes it newest
    assert buffer.image_ids() == ["c", "b"]

    reopened = ReplayBuffer(tmp_path, capacity=2, policy="fifo")
    assert reopened.image_ids() == ["c", "b"]
    assert reopened.images_seen == 3
    restored = reopened.get("b")
    assert len(restored) == 5 and np.all(restored.images == 9.0)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [e["image_id"] for e in index["entries"]] == ["c", "b"]


def test_replay_sampling_excludes_the_current_image(tmp_path):
    buffer = ReplayBuffer(tmp_path, capacity=3)
    buffer.add("a", soft_slices(1.0))
    buffer.add("b", soft_slices(2.0))
    rng = np.random.default_rng(0)
    drawn = buffer.sample(20, rng, exclude=["a"])
    assert len(drawn) == 20 and np.all(drawn.images == 2.0)
    assert buffer.sample(4, rng, exclude=["a", "b"]) is None
    assert ReplayBuffer(tmp_path / "off", capacity=0).add("a", soft_slices(1.0)) is False


def test_replay_reservoir_stays_within_capacity_and_samples_the_whole_stream(tmp_path):
    buffer = ReplayBuffer(tmp_path, capacity=3, policy="reservoir", seed=0)
    stored = [buffer.add(f"img{i}", soft_slices(float(i), n=1, size=4)) for i in range(30)]
    assert len(buffer) == 3
    assert buffer.images_seen == 30
    assert all(stored[:3]) and not all(stored[3:])  # later images are kept only sometimes
    assert any(int(i[3:]) >= 3 for i in buffer.image_ids())
    assert len(list(tmp_path.glob("*.npz"))) == 3


# -- updates --------------------------------------------------------------------------------


def test_update_mixes_replay_slices_into_every_batch(tmp_path):
    torch.manual_seed(3)
    model = build_network(tiny_config(2))
    image, label = disc_volume(6, shape=(3, 32, 32))
    settings = OnlineSettings(size=32, batch_size=3, replay_per_batch=1)
    prepared = prepare_image(OnlineExample(image, 2, proxy_labels=label), model, settings)
    replay = ReplayBuffer(tmp_path, capacity=2)
    replay.add("earlier", replay_slices(prepared, 2))
    steps = []
    result = train_online(
        model, prepared, settings, steps=4, num_classes=2, replay=replay, image_id="now",
        progress=lambda step, total: steps.append((step, total)),
    )
    assert result.replay_slices_used == 4
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(np.isfinite(result.losses)) and not model.training

    alone = train_online(model, prepared, settings, steps=2, num_classes=2, replay=replay, image_id="earlier")
    assert alone.replay_slices_used == 0  # its own entry is never replayed


def test_a_stopped_update_stores_no_version(tmp_path):
    registry = new_registry(tmp_path / "registry")
    files = write_project_files(tmp_path / "files", 7, "a")
    job = TrainJob(
        project_id="p", image_id="a", round_id="1", image_path=files["image_path"], num_classes=2,
        proxy_labels_path=files["label_path"], steps=50, settings={"size": 32},
    )
    calls = []

    def stop_after_three() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(UpdateCancelled):
        run_train_job(job, registry, None, should_stop=stop_after_three, device="cpu")
    assert [r.version for r in registry.versions()] == [0]


def test_train_job_round_trips_through_json():
    job = TrainJob(
        project_id="p", image_id=7, round_id=2, image_path="/x/image.nii.gz", num_classes=4,
        validation=[ValidationImage("v", "/x/v.nii.gz", "/x/v-label.nii.gz")],
        settings={"size": 64, "replay_capacity": 2},
    )
    again = TrainJob.from_json(job.to_json())
    assert again == job and again.image_id == "7" and again.coalesce_key == ("p", "7")
    with pytest.raises(ValueError, match="unknown online learning settings"):
        TrainJob(project_id="p", image_id="a", round_id="1", image_path="x", num_classes=2, settings={"bogus": 1})


def mean_dice(model, image, label, size):
    return float(np.mean(list(dice_per_class(predict_labels(model, image, size=size, device="cpu"), label, 2).values())))


@pytest.mark.slow
def test_an_online_job_learns_a_disc_from_a_random_start(tmp_path):
    registry = new_registry(tmp_path / "registry")
    files = write_project_files(tmp_path / "files", 11, "train")
    test_image, test_label = disc_volume(12)
    job = TrainJob(
        project_id="p", image_id="train", round_id="1", image_path=files["image_path"], num_classes=2,
        proxy_labels_path=files["label_path"], steps=120, settings={"size": 32},
    )
    result = run_train_job(job, registry, ReplayBuffer(tmp_path / "replay"), device="cpu")

    assert result.version == 1 and result.parent == 0 and result.promoted
    assert registry.serving_version() == 1
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])
    before = mean_dice(registry.load(0)[0], test_image, test_label, 32)
    after = mean_dice(registry.load(1)[0], test_image, test_label, 32)
    assert after > before + 0.2, (before, after)
    assert after > 0.8, (before, after)
