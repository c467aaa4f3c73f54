"""``scribbleflow bench stream`` end to end: a real server subprocess on loopback, a tiny
synthetic stream (two NIfTI volumes, one holdout volume), two rounds per volume, two online
steps per job. Checks the report's keys and that its numbers agree with what they measure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clients import stream_metrics as sm
from clients.bench_stream import StreamOptions, run_stream_benchmark
from learner.scribbles import boundary_effort
from registration.io.volume import write_volume_atomic
from registration.round import ROUND_PHASES
from tests.helpers import synthetic_volume

SHAPE_ZYX = (5, 24, 28)  # non-cubic: axis mix-ups change the numbers

pytestmark = pytest.mark.slow  # 114 s on this 2-core machine at load average 9 (server start, jobs, offline model)


@pytest.fixture
def stream_dirs(tmp_path, monkeypatch):
    for split, seeds in (("stream", (0, 1)), ("holdout", (2,))):
        for seed in seeds:
            volume, label = synthetic_volume(SHAPE_ZYX, seed=seed)
            write_volume_atomic(volume, tmp_path / split / "images" / f"case{seed}.nii.gz")
            write_volume_atomic(volume, tmp_path / split / "labels" / f"case{seed}.nii.gz", label)
    # The embedded server reads these (a tiny network, two steps per job, no validation images).
    for name, value in (("ONLINE_STEPS", "2"), ("CONSOLIDATION_STEPS", "2"), ("CONSOLIDATION_JOBS", "2"), ("MODEL_SIZE", "32"), ("MODEL_CHANNELS", "[4, 8, 16]"),
                        ("VALIDATION_EVERY", "0"), ("REPLAY_CAPACITY", "1"), ("COMPUTE_THREADS", "1"),
                        ("ATLAS_BESIDE_MODEL", "true")):
        monkeypatch.setenv(f"SCRIBBLEFLOW_{name}", value)
    return tmp_path


def test_bench_stream_end_to_end(stream_dirs, tmp_path):
    out = tmp_path / "out" / "stream.json"
    options = StreamOptions(
        data=str(stream_dirs / "stream"), holdout=str(stream_dirs / "holdout"), out=str(out),
        plots=str(tmp_path / "plots"), max_rounds=2, target_dice=0.99, progress=False, job_timeout=300,
    )
    report = run_stream_benchmark(options)
    summary = report["summary"]
    assert tuple(summary)[: len(sm.SUMMARY_KEYS)] == sm.SUMMARY_KEYS
    assert json.loads(out.read_text())["summary"] == json.loads(json.dumps(summary))
    assert summary["errors"] == 0, summary["error_messages"]
    assert summary["volumes"] == 2 and "failed" not in summary["jobs"]
    # Every round and accept queued a job (a round job may be superseded or stopped by its accept),
    # and every accept job a chain of two consolidation jobs, which the benchmark waited for before the
    # next image.
    assert summary["jobs_by_trigger"] == {"round": summary["rounds"], "accept": 2, "consolidate": 4}
    assert sum(summary["jobs"].values()) == summary["rounds"] + 6 and summary["jobs"]["succeeded"] >= 6
    consolidations = [v for v in report["learning_curve"]["versions"] if v["source"] == "consolidation"]
    assert len(consolidations) == 4 and all(v["metrics"]["steps"] == 2 for v in consolidations)

    # The first volume opens with version 0 (nothing accepted yet). The second, once a model is
    # trained, gets both the model's and the atlas's openings; it is the first one's look-alike (the
    # same structures, other noise) and nobody has measured the model, so the atlas opens it, far
    # better than the first opening (it may leave no slice to correct: no round at all).
    first, second = report["volumes"]
    assert first["opening_source"] == "model" and first["alternative_dice"] is None
    assert second["opening_source"] == "atlas" and 0.0 <= second["alternative_dice"] <= 1.0
    assert second["opening_dice"] > 0.85 > first["opening_dice"]
    assert set(second["opening_scores"]) == {"similarity", "model_dice", "atlas_dice"}
    assert summary["openings_with_alternative"] == 1
    assert summary["better_opening_shown"] == int(second["opening_dice"] >= second["alternative_dice"])
    assert summary["mean_better_opening_dice"] == max(second["opening_dice"], second["alternative_dice"])

    truths = {f"case{s}": synthetic_volume(SHAPE_ZYX, seed=s)[1] for s in (0, 1)}
    for volume in report["volumes"]:
        rounds = volume["rounds"]
        assert len(rounds) <= 2
        assert all(0.0 <= r["dice"] <= 1.0 and 0.0 <= r["proxy_dice"] <= 1.0 for r in rounds)
        assert all(r["latency_s"] > 0 and r["effort"]["voxels"] > 0 for r in rounds)
        # Effort against full annotation, recounted with the learner's own boundary counter.
        planes = [tuple(p) for p in volume["touched_planes"]]
        assert len(planes) == len(rounds)  # one new plane per round
        truth = truths[volume["name"]]
        touched = sum(boundary_effort(truth, [i for a, i in planes if a == axis], axis=axis)[0] for axis in range(3))
        full = boundary_effort(truth, [], axis=0)[1]
        assert volume["effort"]["full_boundary_pixels"] == full
        assert volume["effort"]["effort_reduction_pct"] == pytest.approx(100 * (1 - touched / full))
        assert not rounds or volume["final_dice"] == rounds[-1]["dice"]
        assert volume["accept_job"]["state"] == "succeeded" and volume["annotation_to_model_s"] > 0
        for entry in rounds:
            if entry["suggestion"] is not None:
                assert not entry["suggestion"]["suggested_was_drawn"]

    assert 0 < summary["round_latency_p50_s"] <= summary["round_latency_p95_s"]
    assert summary["rounds_with_job"] + summary["rounds_without_job"] == summary["rounds"]
    # The server's account of the stream's rounds: each round once in each phase and each part of its computation.
    assert set(summary["server_round_compute_phases"]) == set(ROUND_PHASES)
    for phases in (summary["server_round_phases"], summary["server_round_compute_phases"]):
        assert all(phase["count"] == summary["rounds"] for phase in phases.values()), phases
    assert 0.0 <= summary["suggestion_hit_rate"] <= 1.0 and 0.0 <= summary["random_slice_hit_rate"] <= 1.0
    assert summary["mean_effort_reduction_pct"] == pytest.approx(
        np.mean([v["effort"]["effort_reduction_pct"] for v in report["volumes"]]))
    dice_shown_then_returned = [
        pair for v in report["volumes"]
        for pair in zip([v["opening_dice"]] + [r["dice"] for r in v["rounds"]], [r["dice"] for r in v["rounds"]],
                        strict=False)
    ]
    drops = sum(after < before - 0.005 for before, after in dice_shown_then_returned)
    assert summary["first_rounds_below_opening"] + summary["rounds_lowering_dice"] == drops

    # Every model version was scored on the holdout; the serving one is the online result.
    versions = {v["version"] for v in report["learning_curve"]["versions"]}
    assert {int(v) for v in report["holdout"]["versions"]} == versions
    assert summary["online_holdout_dice"] == report["holdout"]["versions"][str(summary["serving_version"])][
        "mean_dice"]
    by_version = {v["version"]: v for v in report["learning_curve"]["versions"]}
    lineage, version = [], summary["serving_version"]
    while version is not None and len(lineage) <= len(by_version):
        lineage.append(by_version[version])
        version = by_version[version]["parent"]
    # Two steps per fine-tuned version on the serving version's lineage; an average adds none.
    fine_tuned = [v for v in lineage if v["source"] in ("online", "consolidation")]
    assert summary["online_steps_serving_lineage"] == 2 * len(fine_tuned) > 0
    assert all(v["metrics"]["steps"] == 0 for v in lineage if v["source"] == "average")
    assert summary["offline"]["iterations"] == summary["online_steps_serving_lineage"]
    assert 0.0 <= summary["offline_holdout_dice"] <= 1.0
    assert summary["forgetting"] is not None and len(summary["forgetting_cases"]["after_learned"]) == 1
    assert summary["gate_errors"] == sum(v["gate_error"] for v in report["gate"])

    for path in report["plots"].values():
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
