"""Weight averaging of versions: the mean itself, the line it is taken over, how the gate
chooses between a fine-tuned version and its average, and where training goes on from."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from learner.averaging import average_state_dicts
from learner.jobs import TrainJob, ValidationImage, run_train_job
from learner.networks import NetworkConfig, build_network
from learner.registry import ModelRegistry, RegistryError
from learner.replay import ReplayBuffer
from tests.helpers import TINY_CHANNELS, new_registry, tiny_config, write_project_files
from tests.learner.test_registry import SIZE, supervised_disc_model, validation_cases

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def network_with_statistics(seed: int) -> torch.nn.Module:
    """A tiny network of its own weights whose batch-norm statistics have been updated."""
    torch.manual_seed(seed)
    model = build_network(tiny_config(2))
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32) * (seed + 1))
    return model.eval()


def test_average_state_dicts_is_the_mean_of_parameters_and_batch_norm_statistics():
    models = [network_with_statistics(seed) for seed in (1, 2, 3)]
    before = [copy.deepcopy(m.state_dict()) for m in models]
    state = average_state_dicts(m.state_dict() for m in models)

    statistics = [name for name in state if name.endswith("running_var")]
    assert statistics, "the tiny network has batch-norm layers"
    for name, tensor in state.items():
        if tensor.is_floating_point():
            expected = torch.stack([b[name] for b in before]).mean(dim=0)
            torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-7)
        else:  # num_batches_tracked: the newest model's
            assert torch.equal(tensor, before[-1][name])
    # The running statistics differ between the models, so their mean is a new value.
    assert not torch.allclose(state[statistics[0]], before[-1][statistics[0]])
    for model, saved in zip(models, before, strict=True):  # the inputs are left as they were
        assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    newest = models[-1].state_dict()  # the result shares no memory with the inputs
    assert not any(state[k].data_ptr() == newest[k].data_ptr() for k in state)


def test_average_state_dicts_refuses_different_architectures():
    wide = build_network(NetworkConfig(num_classes=2, channels=[2 * c for c in TINY_CHANNELS],
                                       deep_supervision=False))
    with pytest.raises(ValueError, match="does not match the first model"):
        average_state_dicts([wide.state_dict(), build_network(tiny_config(2)).state_dict()])
    with pytest.raises(ValueError, match="at least one"):
        average_state_dicts([])


def chain(registry: ModelRegistry, models, first_parent: int = 0) -> list[int]:
    """Store ``models`` as online versions, each the parent of the next, and serve each in turn
    (no validation images: promoted without a check)."""
    versions, parent = [], first_parent
    for model in models:
        record = registry.add_candidate(model, tiny_config(2), parent=parent, source={"kind": "online"})
        assert registry.promote_or_reject(record.version, [], 0.02, size=SIZE).promoted
        versions.append(parent := record.version)
    return versions


def test_the_averaging_line_follows_parents_of_trained_weights_of_one_network(tmp_path):
    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    v1, v2, v3, v4 = chain(registry, [network_with_statistics(s) for s in range(4)])
    assert registry.averaging_line(v4, 3) == [v2, v3, v4]
    assert registry.averaging_line(v4, 10) == [v1, v2, v3, v4]  # the untrained version 0 ends the line
    assert registry.averaging_line(v4, 1) == [v4]

    average = registry.add_average([v2, v3, v4], source={"job_id": "j"})
    assert (average.parent, average.status, average.source) == (
        v4, "candidate", {"job_id": "j", "kind": "average", "members": [v2, v3, v4]})
    expected = average_state_dicts(registry.load(v)[0].state_dict() for v in (v2, v3, v4))
    stored = registry.load(average.version)[0].state_dict()
    assert all(torch.equal(stored[k], expected[k]) for k in expected)

    # A version fine-tuned from an average (an explicit base) starts a new line.
    after_average = registry.add_candidate(network_with_statistics(9), tiny_config(2), parent=average.version,
                                           source={"kind": "online"})
    assert registry.averaging_line(after_average.version, 3) == [after_average.version]
    # So does another architecture.
    wide_config = NetworkConfig(num_classes=2, channels=[2 * c for c in TINY_CHANNELS], deep_supervision=False)
    wide = registry.add_candidate(build_network(wide_config), wide_config, parent=v4, source={"kind": "online"})
    assert registry.averaging_line(wide.version, 3) == [wide.version]
    with pytest.raises(ValueError, match="at least two"):
        registry.add_average([v4])
    versions_before = [r.version for r in registry.versions()]
    with pytest.raises(RegistryError, match="no model version 99"):
        registry.add_average([v3, 99, v4])
    assert [r.version for r in registry.versions()] == versions_before  # nothing stored


def test_the_averaging_line_starts_at_an_imported_checkpoint(tmp_path):
    from learner.checkpoints import save_checkpoint

    registry = ModelRegistry(tmp_path / "registry")
    registry.create_initial(tiny_config(2), seed=0)
    (online,) = chain(registry, [network_with_statistics(1)])
    save_checkpoint(tmp_path / "offline.pt", network_with_statistics(2), tiny_config(2), {"size": SIZE})
    imported = registry.import_checkpoint(tmp_path / "offline.pt")
    assert imported.parent == online  # what served before, not what it was trained from
    after = registry.add_candidate(network_with_statistics(3), tiny_config(2), parent=imported.version,
                                   source={"kind": "online"}).version
    assert registry.averaging_line(after, 5) == [imported.version, after]


def test_the_gate_serves_an_average_that_scores_as_well_and_training_goes_on_from_its_newest_member(tmp_path):
    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    good = supervised_disc_model()
    (v1,) = chain(registry, [good])
    # The job's version equals its parent, so their mean is the same model: a tie, and the average wins it.
    fine_tuned = registry.add_candidate(copy.deepcopy(good), tiny_config(2), parent=v1, source={"kind": "online"})
    average = registry.add_average(registry.averaging_line(fine_tuned.version, 3))
    decision = registry.promote_or_reject(fine_tuned.version, validation_cases(), 0.02, size=SIZE,
                                          average=average.version)

    assert decision.promoted and decision.candidate == average.version
    assert decision.average_dice == pytest.approx(decision.fine_tuned_dice) and decision.fine_tuned == fine_tuned.version
    assert registry.serving_version() == average.version
    assert registry.record(fine_tuned.version).status == "averaged"
    assert registry.record(average.version).metrics["judged"] is True
    assert registry.record(fine_tuned.version).metrics["judged"] is False
    assert registry.record(v1).status == "retired"
    assert registry.training_head() == fine_tuned.version
    assert f"average of versions [{v1}, {fine_tuned.version}]" in decision.reason
    with pytest.raises(RegistryError, match="not a candidate"):
        registry.promote_or_reject(fine_tuned.version, validation_cases(), 0.02, size=SIZE)


def test_the_gate_serves_a_fine_tuned_version_that_beats_its_average_and_rejects_both_when_worse(tmp_path):
    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    (weak,) = chain(registry, [network_with_statistics(5)])  # a random network served as trained
    good = registry.add_candidate(supervised_disc_model(), tiny_config(2), parent=weak, source={"kind": "online"})
    average = registry.add_average(registry.averaging_line(good.version, 3))
    decision = registry.promote_or_reject(good.version, validation_cases(), 0.02, size=SIZE, average=average.version)
    assert decision.promoted and decision.candidate == good.version, decision.reason
    assert decision.fine_tuned_dice > decision.average_dice
    assert registry.serving_version() == good.version == registry.training_head()
    assert registry.record(average.version).status == "rejected"

    # A collapsed job after the good one: neither it nor its average may serve.
    collapsed = registry.add_candidate(network_with_statistics(6), tiny_config(2), parent=good.version,
                                       source={"kind": "online"})
    line = registry.averaging_line(collapsed.version, 3)
    assert line == [weak, good.version, collapsed.version]
    average = registry.add_average(line)
    decision = registry.promote_or_reject(collapsed.version, validation_cases(), 0.02, size=SIZE,
                                          average=average.version)
    assert not decision.promoted, decision.reason
    assert {registry.record(v).status for v in (collapsed.version, average.version)} == {"rejected"}
    assert [registry.record(v).metrics["judged"] for v in (collapsed.version, average.version)].count(True) == 1
    assert registry.serving_version() == good.version == registry.training_head()

    unrelated = registry.add_average([weak, good.version])
    other = registry.add_candidate(network_with_statistics(7), tiny_config(2), parent=good.version,
                                   source={"kind": "online"})
    with pytest.raises(RegistryError, match="not an average ending with"):
        registry.promote_or_reject(other.version, validation_cases(), 0.02, size=SIZE, average=unrelated.version)


def test_a_job_fine_tunes_the_newest_member_of_a_serving_average_and_offers_the_gate_its_own(tmp_path):
    registry = new_registry(tmp_path / "registry")
    (v1,) = chain(registry, [supervised_disc_model()])
    # A copy of v1 and their mean: a tie, so the average serves and the copy is the training head.
    fine_tuned = registry.add_candidate(registry.load(v1, fresh=True)[0], tiny_config(2), parent=v1,
                                        source={"kind": "online"})
    average = registry.add_average([v1, fine_tuned.version])
    assert registry.promote_or_reject(fine_tuned.version, validation_cases(), 0.02, size=SIZE,
                                      average=average.version).promoted
    assert registry.serving_version() == average.version and registry.training_head() == fine_tuned.version

    gate = []
    for case in validation_cases():
        np.save(tmp_path / f"{case.name}-image.npy", case.image)
        np.save(tmp_path / f"{case.name}-label.npy", case.label)
        gate.append(ValidationImage(case.name, str(tmp_path / f"{case.name}-image.npy"),
                                    str(tmp_path / f"{case.name}-label.npy")))

    def job(name: str, seed: int, **fields) -> TrainJob:
        files = write_project_files(tmp_path / name, seed, name)
        return TrainJob(project_id="p", image_id=name, round_id="1", image_path=files["image_path"], num_classes=2,
                        proxy_labels_path=files["label_path"], steps=4, **fields)

    replay = ReplayBuffer(tmp_path / "replay")
    result = run_train_job(job("a", 11, validation=gate, settings={"size": SIZE, "serve_average": 3}),
                           registry, replay, device="cpu")
    assert result.parent == fine_tuned.version  # not the serving average
    new = registry.record(result.fine_tuned_version)
    assert new.source["reference_version"] == average.version  # P_prev: what was being served
    assert result.gate["average"] == result.fine_tuned_version + 1
    assert registry.record(result.gate["average"]).source["members"] == [v1, fine_tuned.version, new.version]
    assert result.version in (new.version, result.gate["average"])
    assert registry.record(result.version).metrics["judged"] is True

    # Nothing to measure on (no validation images), or averaging off: no average is stored.
    for name, seed, fields in (("b", 12, {"settings": {"size": SIZE, "serve_average": 3}}),
                               ("c", 13, {"validation": gate, "settings": {"size": SIZE, "serve_average": 1}})):
        count = len(registry.versions())
        result = run_train_job(job(name, seed, **fields), registry, replay, device="cpu")
        assert result.gate["average"] is None and len(registry.versions()) == count + 1, name
        assert result.version == result.fine_tuned_version and "judged" not in registry.record(result.version).metrics


def test_a_redelivered_job_reports_the_version_its_gate_judged(tmp_path):
    from learner.worker import _version_of_job

    registry = ModelRegistry(tmp_path)
    registry.create_initial(tiny_config(2), seed=0)
    (v1,) = chain(registry, [supervised_disc_model()])
    job = {"kind": "online", "job_id": "j", "project_id": "p", "image_id": "i", "round_id": "1"}
    fine_tuned = registry.add_candidate(registry.load(v1, fresh=True)[0], tiny_config(2), parent=v1, source=job,
                                        metrics={"steps": 7})
    average = registry.add_average([v1, fine_tuned.version], source={k: v for k, v in job.items() if k != "kind"})
    # Stored, not yet gated (the worker died in between): the job's own version, not promoted.
    before = _version_of_job(registry, "j")
    assert (before["version"], before["promoted"], before["steps"]) == (fine_tuned.version, False, 7)
    registry.promote_or_reject(fine_tuned.version, validation_cases(), 0.02, size=SIZE, average=average.version)
    after = _version_of_job(registry, "j")
    assert (after["version"], after["promoted"], after["parent"]) == (average.version, True, v1)
    assert after["fine_tuned_version"] == fine_tuned.version and after["steps"] == 7
    assert after["serving_version"] == average.version and _version_of_job(registry, "other") is None
