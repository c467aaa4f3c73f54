"""The stream benchmark's measures (clients/stream_metrics.py) on hand-computed cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from clients import stream_metrics as sm


def square_volume() -> np.ndarray:
    """(2, 5, 5): slice 0 holds a 3 x 3 square of label 1 at rows/columns 1..3, slice 1 is empty."""
    truth = np.zeros((2, 5, 5), dtype=np.int64)
    truth[0, 1:4, 1:4] = 1
    return truth


def test_boundary_pixels_along_each_axis():
    truth = square_volume()
    # z-slices: the square's ring of 8 (its centre has no other label beside it), nothing on slice 1.
    np.testing.assert_array_equal(sm.boundary_pixels_per_slice(truth, 0), [8, 0])
    # y-slices (z, x): rows 1..3 each hold a 1 x 3 line on z = 0, every pixel of it on the border.
    np.testing.assert_array_equal(sm.boundary_pixels_per_slice(truth, 1), [0, 3, 3, 3, 0])
    assert sm.touched_boundary_pixels(truth, [(0, 0)]) == 8
    assert sm.touched_boundary_pixels(truth, [(0, 1), (1, 2), (1, 2)]) == 3  # a plane counts once


def test_effort_reduction_and_stroke_ratio():
    assert sm.effort_reduction_pct(25, 100) == pytest.approx(75.0)
    assert sm.effort_reduction_pct(100, 100) == pytest.approx(0.0)
    assert sm.effort_reduction_pct(0, 0) is None
    assert sm.stroke_voxel_ratio(30, 120) == pytest.approx(0.25)
    assert sm.stroke_voxel_ratio(30, 0) is None


def test_errors_per_slice():
    truth = np.zeros((3, 4, 4), dtype=np.int64)
    segmentation = truth.copy()
    segmentation[0, 0, :3] = 2
    segmentation[2, 3, 3] = 1
    np.testing.assert_array_equal(sm.errors_per_slice(segmentation, truth, 0), [3, 0, 1])
    np.testing.assert_array_equal(sm.errors_per_slice(segmentation, truth, 2), [1, 1, 1, 1])
    with pytest.raises(ValueError, match="shape"):
        sm.errors_per_slice(segmentation[:2], truth, 0)


def test_suggestion_outcome_against_random_undrawn_slices():
    errors = np.array([0, 50, 3, 0])
    small = sm.suggestion_outcome(errors, suggested=1, drawn={0}, slice_pixels=1000)  # a hit needs 1 voxel
    assert small["hit_threshold"] == 1
    assert small["suggested_error_voxels"] == 50 and small["suggested_hit"] and not small["suggested_was_drawn"]
    assert small["random_error_voxels"] == pytest.approx(53 / 3)  # undrawn: slices 1, 2, 3
    assert small["random_hit_rate"] == pytest.approx(2 / 3)
    large = sm.suggestion_outcome(errors, suggested=2, drawn={0}, slice_pixels=4000)  # a hit needs 4 voxels
    assert large["hit_threshold"] == 4 and not large["suggested_hit"]
    assert large["random_hit_rate"] == pytest.approx(1 / 3)
    drawn = sm.suggestion_outcome(errors, suggested=0, drawn={0, 1, 2, 3}, slice_pixels=10)
    assert drawn["suggested_was_drawn"] and drawn["random_hit_rate"] is None


def test_percentiles_means_thirds_and_fifths():
    assert sm.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert sm.percentile([], 95) is None
    assert sm.mean([1.0, None, 3.0]) == pytest.approx(2.0)
    assert sm.thirds([1, 2, 3, 4, 5, 6, 7]) == (pytest.approx(2.0), pytest.approx(6.0))  # thirds of 3
    assert sm.thirds([]) == (None, None)
    assert [sm.first_fifth(n) for n in (0, 3, 10, 12, 30)] == [0, 1, 2, 2, 6]


def test_forgetting_over_the_images_in_both():
    after = {"a": 0.8, "b": 0.6}
    end = {"a": 0.7, "b": 0.65, "c": 0.1}
    assert sm.forgetting(after, end) == pytest.approx((0.1 - 0.05) / 2)
    assert sm.forgetting({}, end) is None


def test_serving_at_a_moment():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    versions = [
        {"version": 0, "created_at": t0, "promoted": True},
        {"version": 1, "created_at": t0 + timedelta(seconds=10), "promoted": True},
        {"version": 2, "created_at": t0 + timedelta(seconds=20), "promoted": False},
        {"version": 3, "created_at": t0 + timedelta(seconds=30), "promoted": True},
    ]
    assert sm.serving_at(versions, t0 - timedelta(seconds=1)) is None
    assert sm.serving_at(versions, t0 + timedelta(seconds=25)) == 1  # version 2 was rejected
    assert sm.serving_at(versions, t0 + timedelta(seconds=31)) == 3


def test_gate_verdicts_against_the_holdout():
    versions = [
        {"version": 0, "promoted": True, "gated": False},
        {"version": 1, "promoted": True},
        {"version": 2, "promoted": False},
        {"version": 3, "promoted": True},
        {"version": 4, "promoted": True},
    ]
    holdout = {0: 0.1, 1: 0.5, 2: 0.9, 3: 0.45, 4: 0.44}
    verdicts = {v["version"]: v for v in sm.gate_verdicts(versions, holdout, tolerance=0.02)}
    assert set(verdicts) == {1, 2, 3, 4}  # version 0 never went through the gate
    assert verdicts[1]["compared_with"] == 0 and not verdicts[1]["gate_error"]
    assert verdicts[2]["compared_with"] == 1 and verdicts[2]["missed_improvement"]
    assert verdicts[3]["compared_with"] == 1 and verdicts[3]["gate_error"]  # 0.05 below, promoted
    assert verdicts[4]["compared_with"] == 3 and not verdicts[4]["gate_error"]  # 0.01 below: within tolerance


def test_summary_table_has_a_row_per_summary_key_and_a_column_per_report():
    from clients.stream_table import table

    reports = [{"summary": {"volumes": 3, "mean_final_dice": 0.91234, "errors": 0}}, {"summary": {"volumes": 4}}]
    lines = table(reports, ["residual", "random"]).splitlines()
    assert lines[0] == "| | residual | random |"
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert set(sm.SUMMARY_KEYS) <= set(rows)  # every issue key, even when missing
    assert rows["volumes"] == "| volumes | 3 | 4 |"
    assert rows["mean_final_dice"] == "| mean_final_dice | 0.912 | – |"
    assert rows["errors"] == "| errors | 0 | – |" and "gate_errors" not in rows


def test_rounds_lowering_counts_the_first_round_against_the_opening_and_the_rest_against_the_round_before():
    assert sm.lowered(0.80, 0.79) and not sm.lowered(0.80, 0.797) and not sm.lowered(0.5, 0.9)
    assert sm.rounds_lowering(0.80, [0.70, 0.75, 0.60, 0.598, 0.9]) == (True, 1)
    assert sm.rounds_lowering(0.0, [0.5, 0.4]) == (False, 1)
    assert sm.rounds_lowering(0.9, []) == (False, 0)


def test_round_phases_read_from_metrics_text_and_counted_between_two_reads():
    def exposition(compute_count: int, compute_sum: float) -> str:
        return "\n".join([
            "# TYPE scribbleflow_round_phase_seconds histogram",
            f'scribbleflow_round_phase_seconds_bucket{{le="0.5",phase="compute"}} {compute_count}.0',
            f'scribbleflow_round_phase_seconds_count{{phase="compute"}} {compute_count}.0',
            f'scribbleflow_round_phase_seconds_sum{{phase="compute"}} {compute_sum}',
            'scribbleflow_round_phase_seconds_created{phase="compute"} 1.7e9',
            'scribbleflow_round_phase_seconds_count{phase="read"} 2.0',
            'scribbleflow_round_phase_seconds_sum{phase="read"} 0.5',
            'scribbleflow_round_compute_seconds_sum{project="1"} 99.0',
        ])

    before = sm.histogram_by_label(exposition(2, 1.0), "scribbleflow_round_phase_seconds", "phase")
    assert before == {"compute": {"count": 2.0, "sum_s": 1.0, "mean_s": 0.5},
                      "read": {"count": 2.0, "sum_s": 0.5, "mean_s": 0.25}}
    after = sm.histogram_by_label(exposition(5, 2.5), "scribbleflow_round_phase_seconds", "phase")
    assert sm.histogram_change(before, after) == {"compute": {"count": 3.0, "sum_s": 1.5, "mean_s": 0.5}}
    assert sm.histogram_change({}, after)["read"]["count"] == 2.0
