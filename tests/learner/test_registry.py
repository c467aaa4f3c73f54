"""Model registry: version numbering, atomic manifest, import checks, the promotion gate."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from learner.checkpoints import save_checkpoint
from learner.networks import build_network
from learner.objective import build_objective
from learner.preprocess import normalize_intensity, resize_images, resize_labels
from learner.registry import (
    CheckpointMismatch,
    ModelRegistry,
    RegistryError,
    ValidationCase,
    mean_validation_dice,
)
from learner.train import training_step
from tests.helpers import disc_volume, tiny_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32


def supervised_disc_model(steps: int = 25):
    """A tiny network trained with dense labels on one disc volume (deterministic)."""
    torch.manual_seed(0)
    model = build_network(tiny_config(2))
    image, label = disc_volume(21)
    batch = {
        "image": resize_images(torch.from_numpy(normalize_intensity(image))[:, None], SIZE, SIZE),
        "label": resize_labels(torch.from_numpy(label.astype(np.int64)), SIZE, SIZE),
    }
    objective = build_objective("full", 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        training_step(model, objective, batch, optimizer)
    return model.eval()


def validation_cases(seeds=(31, 32)) -> list[ValidationCase]:
    return [ValidationCase(f"case{s}", *disc_volume(s)) for s in seeds]


def test_versions_are_numbered_and_the_manifest_is_written_whole(tmp_path):
    registry = ModelRegistry(tmp_path)
    assert registry.serving_version() is None and registry.versions() == []
    v0 = registry.create_initial(tiny_config(2), seed=0)
    model, config, _ = registry.load(0)
    v1 = registry.add_candidate(model, config, parent=0, source={"kind": "online", "image_id": "a"})
    v2 = registry.add_candidate(model, config, parent=1, source={"kind": "online", "image_id": "b"})
    assert [v0.version, v1.version, v2.version] == [0, 1, 2]
    assert [r.status for r in registry.versions()] == ["serving", "candidate", "candidate"]

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [r["version"] for r in manifest["versions"]] == [0, 1, 2]
    assert manifest["versions"][2]["parent"] == 1 and manifest["versions"][2]["source"]["image_id"] == "b"
    assert not list(tmp_path.rglob(".tmp-*"))  # temp files renamed into place, none left
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == ["v000000.pt", "v000001.pt", "v000002.pt"]

    other = ModelRegistry(tmp_path)  # a second object on the same folder (another thread or process)
    assert [r.to_dict() for r in other.versions()] == [r.to_dict() for r in registry.versions()]
    with pytest.raises(RegistryError, match="already holds"):
        registry.create_initial(tiny_config(2), seed=0)


def test_initial_version_is_deterministic_for_a_seed(tmp_path):
    def weights(folder, seed):
        registry = ModelRegistry(folder)
        registry.create_initial(tiny_config(2), seed=seed)
        return registry.load(0)[0].state_dict()

    a, b, c = weights(tmp_path / "a", 5), weights(tmp_path / "b", 5), weights(tmp_path / "c", 6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_load_shares_a_cached_model_and_gives_private_copies_for_training(tmp_path):
    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    shared, _, _ = registry.load(0)
    assert registry.load(0)[0] is shared
    private, _, _ = registry.load(0, fresh=True)
    assert private is not shared
    with torch.no_grad():
        next(private.parameters()).add_(1.0)
    assert not torch.equal(next(private.parameters()), next(shared.parameters()))


def test_import_checks_classes_and_channels(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    registry.create_initial(tiny_config(4), seed=0)
    wrong = tmp_path / "three-classes.pt"
    save_checkpoint(wrong, build_network(tiny_config(3)), tiny_config(3), {"size": SIZE})
    with pytest.raises(CheckpointMismatch, match="num_classes is 3, the project needs 4"):
        registry.import_checkpoint(wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatch, match="not a readable"):
        registry.import_checkpoint(garbage)
    assert [r.version for r in registry.versions()] == [0]

    right = tmp_path / "four-classes.pt"
    save_checkpoint(right, build_network(tiny_config(4)), tiny_config(4), {"size": SIZE})
    record = registry.import_checkpoint(right)
    assert (record.version, record.parent, record.status) == (1, 0, "serving")
    assert record.source == {"kind": "imported", "file": "four-classes.pt", "metadata": {"size": SIZE}}
    assert registry.record(0).status == "retired"

    empty = ModelRegistry(tmp_path / "empty")
    with pytest.raises(CheckpointMismatch, match="in_channels is 1, the project needs 2"):
        empty.import_checkpoint(right, num_classes=4, in_channels=2)
    assert empty.import_checkpoint(right, num_classes=4).version == 0  # a warm start


def test_gate_promotes_a_better_and_rejects_a_worse_candidate(tmp_path):
    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    random_model, config, _ = registry.load(0)
    cases = validation_cases()

    better = registry.add_candidate(supervised_disc_model(), config, parent=0, source={"kind": "online"})
    decision = registry.promote_or_reject(better.version, cases, tolerance=0.02, size=SIZE)
    assert decision.promoted and registry.serving_version() == better.version
    assert decision.candidate_dice > decision.serving_dice + 0.2
    assert "version 0" in decision.reason

    worse = registry.add_candidate(random_model, config, parent=better.version, source={"kind": "online"})
    decision = registry.promote_or_reject(worse.version, cases, tolerance=0.02, size=SIZE)
    assert not decision.promoted
    assert registry.serving_version() == better.version
    rejected = registry.record(worse.version)
    assert rejected.status == "rejected" and rejected.reason == decision.reason
    assert (tmp_path / "versions" / rejected.checkpoint).exists()  # kept, listed, not served

    curve = {row["version"]: row for row in registry.learning_curve()}
    assert curve[worse.version]["val_dice"] < curve[better.version]["val_dice"]
    assert curve[0]["status"] == "retired" and curve[better.version]["status"] == "serving"
    with pytest.raises(RegistryError, match="not a candidate"):
        registry.promote_or_reject(worse.version, cases, tolerance=0.02, size=SIZE)


def noisy_copy(model: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """``model`` with Gaussian noise of relative size ``scale`` on every weight (a slightly worse model)."""
    worse = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in worse.parameters():
            parameter.add_(scale * parameter.std().nan_to_num(0.0) * torch.randn(parameter.shape, generator=generator))
    return worse.eval()


def measured_dice(model, cases) -> float:
    return mean_validation_dice(model, cases, 2, size=SIZE)[0]


@pytest.mark.parametrize("drop_in_tolerances, promoted", [(0.5, True), (2.0, False)])
def test_gate_decides_by_its_tolerance(tmp_path, drop_in_tolerances, promoted):
    """A candidate whose Dice is tolerance/2 below the serving version's passes; 2 x tolerance
    below, it is rejected and the serving version stays. The tolerance is set from the measured
    drop, so the test holds whatever the exact Dice of the two models is."""
    cases = validation_cases()
    good = supervised_disc_model()
    worse = next(m for m in (noisy_copy(good, s, 7) for s in (0.05, 0.1, 0.2, 0.3))
                 if 0.005 < measured_dice(good, cases) - measured_dice(m, cases) < 0.3)
    drop = measured_dice(good, cases) - measured_dice(worse, cases)
    tolerance = drop / drop_in_tolerances

    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    config = registry.network_config()
    serving = registry.add_candidate(good, config, parent=0, source={"kind": "online"})
    assert registry.promote_or_reject(serving.version, cases, tolerance, size=SIZE).promoted
    candidate = registry.add_candidate(worse, config, parent=serving.version, source={"kind": "online"})
    decision = registry.promote_or_reject(candidate.version, cases, tolerance, size=SIZE)

    assert decision.serving_dice - decision.candidate_dice == pytest.approx(drop, abs=1e-6)
    assert decision.promoted is promoted
    assert registry.serving_version() == (candidate.version if promoted else serving.version)
    assert registry.record(candidate.version).status == ("serving" if promoted else "rejected")


def test_gate_compares_with_the_best_served_version_so_small_drops_do_not_add_up(tmp_path):
    cases = validation_cases()
    good = supervised_disc_model()
    worse = [noisy_copy(good, s, 11) for s in (0.1, 0.2, 0.3)]
    dice = [measured_dice(good, cases)] + [measured_dice(m, cases) for m in worse]
    assert dice[0] > dice[1] > dice[2] > dice[3], dice  # each noisier copy a little worse
    tolerance = (dice[0] - dice[2]) * 0.75  # one step down passes, two steps below the best do not

    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    config = registry.network_config()
    best = registry.add_candidate(good, config, parent=0, source={"kind": "online"})
    registry.promote_or_reject(best.version, cases, tolerance, size=SIZE)
    step = registry.add_candidate(worse[0], config, parent=best.version, source={"kind": "online"})
    assert registry.promote_or_reject(step.version, cases, tolerance, size=SIZE).promoted
    drift = registry.add_candidate(worse[1], config, parent=step.version, source={"kind": "online"})
    decision = registry.promote_or_reject(drift.version, cases, tolerance, size=SIZE)
    # Within tolerance of the serving version, but not of the best one served on these images.
    assert decision.candidate_dice >= decision.serving_dice - tolerance
    assert not decision.promoted and decision.best_version == best.version
    assert registry.serving_version() == step.version


def test_gate_without_validation_images_promotes_and_says_so(tmp_path):
    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    model, config, _ = registry.load(0)
    candidate = registry.add_candidate(model, config, parent=0, source={"kind": "online"})
    decision = registry.promote_or_reject(candidate.version, [], tolerance=0.0, size=SIZE)
    assert decision.promoted and "no validation images" in decision.reason
    assert registry.serving_version() == candidate.version


def test_gate_without_validation_images_keeps_an_imported_checkpoint(tmp_path):
    registry = ModelRegistry(tmp_path / "registry")
    registry.create_initial(tiny_config(2), seed=0)
    model, config, _ = registry.load(0)
    save_checkpoint(tmp_path / "offline.pt", model, config, {"method": "full"})
    imported = registry.import_checkpoint(tmp_path / "offline.pt")
    candidate = registry.add_candidate(model, config, parent=imported.version, source={"kind": "online"})
    decision = registry.promote_or_reject(candidate.version, [], tolerance=0.0, size=SIZE)
    assert not decision.promoted and "imported version" in decision.reason
    assert registry.serving_version() == imported.version
    assert registry.record(candidate.version).status == "rejected"


def test_gate_on_training_images_rejects_a_collapsed_candidate_and_records_no_validation_dice(tmp_path):
    """Until a project holds out an image, the server gates on its accepted training images
    (``in_sample``): the same comparison, so a candidate that lost what the serving version
    could do is rejected, but the Dice it measures is not a validation Dice."""
    cases = validation_cases()
    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    random_model, config, _ = registry.load(0)
    good = registry.add_candidate(supervised_disc_model(), config, parent=0, source={"kind": "online"})
    decision = registry.promote_or_reject(good.version, cases, tolerance=0.02, size=SIZE, in_sample=True)
    assert decision.promoted and decision.in_sample
    assert decision.reason.startswith("training Dice") and "accepted training image(s)" in decision.reason

    collapsed = registry.add_candidate(random_model, config, parent=good.version, source={"kind": "online"})
    decision = registry.promote_or_reject(collapsed.version, cases, tolerance=0.02, size=SIZE, in_sample=True)
    assert not decision.promoted and decision.in_sample
    assert decision.serving_dice > decision.candidate_dice + 0.2
    assert registry.serving_version() == good.version
    for version in (good.version, collapsed.version):
        record = registry.record(version)
        assert record.validation_dice is None and record.metrics["fit_dice"] is not None, record.metrics

    # Held-out images later: measured afresh, as validation Dice.
    held_out = registry.add_candidate(supervised_disc_model(), config, parent=good.version, source={"kind": "online"})
    decision = registry.promote_or_reject(held_out.version, validation_cases((33,)), tolerance=0.02, size=SIZE)
    assert not decision.in_sample and "training" not in decision.reason
    assert registry.record(held_out.version).validation_dice is not None


def test_gate_on_training_images_keeps_an_imported_checkpoint(tmp_path):
    """Training images favour the candidate that trained on them, so they never replace the
    admin's imported checkpoint (only held-out images do)."""
    registry = ModelRegistry(tmp_path / "registry")
    registry.create_initial(tiny_config(2), seed=0)
    model, config, _ = registry.load(0)
    save_checkpoint(tmp_path / "offline.pt", model, config, {"method": "full"})
    imported = registry.import_checkpoint(tmp_path / "offline.pt")
    candidate = registry.add_candidate(supervised_disc_model(), config, parent=imported.version,
                                       source={"kind": "online"})
    decision = registry.promote_or_reject(candidate.version, validation_cases(), tolerance=0.0, size=SIZE,
                                          in_sample=True)
    assert not decision.promoted and "held-out" in decision.reason and "imported version" in decision.reason
    assert registry.serving_version() == imported.version
