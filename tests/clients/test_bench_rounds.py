"""The round benchmark without a server: stand-in models and a trained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clients import stream_metrics as sm
from clients.bench_rounds import (
    drawn_plane_mask,
    final_rows,
    first_rounds_below_opening,
    main,
    rounds_lowering_dice,
    volume_effort,
)
from learner.checkpoints import save_checkpoint
from learner.networks import build_network
from registration.round import ROUND_PHASES
from tests.helpers import tiny_config, write_h5_dataset


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_rounds_report_fused_proxy_and_model_dice(tmp_path, with_checkpoint, capsys):
    data = write_h5_dataset(tmp_path / "data", 1, shape_zyx=(5, 32, 40))
    argv = ["--data", str(data), "--limit", "1", "--rounds", "2", "--out", str(tmp_path / "rounds.json")]
    if with_checkpoint:
        torch.manual_seed(0)
        config = tiny_config(3)
        path = save_checkpoint(tmp_path / "model.pt", build_network(config), config,
                               {"size": 32, "val_mean_dice": 0.4})
        argv += ["--checkpoint", str(path)]
    else:
        argv += ["--model", "uniform"]
    main(argv)
    report = json.loads((tmp_path / "rounds.json").read_text())
    rows, summary = report["rows"], report["summary"]
    assert [r["round"] for r in rows] == list(range(1, len(rows) + 1)) and 1 <= len(rows) <= 2
    assert all(0.0 <= r["dice_fused"] <= 1.0 and 0.0 <= r["dice_model"] <= 1.0 for r in rows)
    assert all(r["stroke_voxels"] > 0 for r in rows)  # a plane with nothing to fix is skipped
    if with_checkpoint:
        assert summary["model"].endswith("model.pt") and summary["validation_dice"] == 0.4
    else:
        assert summary["rounds_fused_below_model"] == sum(r["dice_fused"] < r["dice_model"] for r in rows)
    assert summary["effort_full_boundary_pixels"] > 0 and summary["target_dice"] == 0.9
    assert all(0.0 < r["drawn_voxel_share"] <= 1.0 for r in rows)
    # every phase of the computation timed, together within the round's time
    assert all(set(r["phase_seconds"]) == set(ROUND_PHASES) and min(r["phase_seconds"].values()) >= 0.0
               and 0.0 < sum(r["phase_seconds"].values()) <= r["seconds"] for r in rows)
    assert summary["phase_ms_mean"]["propagate"] > 0.0 and summary["phase_ms_mean"]["densify"] > 0.0
    assert report["volumes"][0]["reached_target"] == (summary["reached_target"] == 1)
    # each round corrects the answer before it: round 1 the model's opening
    assert rows[0]["dice_shown"] == rows[0]["dice_model"]
    assert all(after["dice_shown"] == before["dice_fused"]
               for before, after in zip(rows, rows[1:], strict=False) if after["round"] > 1)


def test_a_perfect_model_leaves_nothing_to_draw(tmp_path):
    data = write_h5_dataset(tmp_path / "data", 2, shape_zyx=(5, 32, 40))
    main(["--data", str(data), "--limit", "2", "--rounds", "3", "--model", "truth", "--out", str(tmp_path / "r.json")])
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rows"] == [] and report["summary"]["volumes"] == 2
    assert report["summary"]["reached_target"] == 2 and report["summary"]["effort_touched_boundary_pixels"] == 0
    assert report["summary"]["final_dice_fused"] == 1.0  # the opening's


def _row(plane, dice, strokes=5):
    return {"slice": list(plane), "dice_fused": dice, "stroke_voxels": strokes}


def test_volume_effort_counts_the_planes_drawn_on_until_the_target():
    truth = np.zeros((4, 8, 8), dtype=np.int64)
    for z, width in enumerate((2, 3, 4, 5)):  # boundary pixels per z plane: 4, 8, 12, 16
        truth[z, 1:1 + width, 1:1 + width] = 1
    full = 4 + 8 + 12 + 16
    rows = [_row((0, 0), 0.5), _row((0, 2), 0.95), _row((0, 3), 0.97)]
    assert volume_effort(truth, rows, 0.9, 0.2) == {"reached_target": True, "final_dice": 0.97,
                                                    "touched_boundary_pixels": 16,
                                               "full_boundary_pixels": full}
    assert volume_effort(truth, rows, 0.99, 0.2) == {"reached_target": False, "final_dice": 0.97,
                                                     "touched_boundary_pixels": 32,
                                                "full_boundary_pixels": full}
    # a plane with nothing to fix is not drawn on; a y plane counts its own boundary pixels
    rows = [_row((0, 1), 0.5, strokes=0), _row((1, 2), 0.95)]
    y_plane = int(sm.boundary_pixels_per_slice(truth, 1)[2])
    assert y_plane > 0
    assert volume_effort(truth, rows, 0.9, 0.2)["touched_boundary_pixels"] == y_plane
    # an opening already at the target needs no round at all
    assert volume_effort(truth, [], 0.9, 0.93) == {
        "reached_target": True, "final_dice": 0.93, "touched_boundary_pixels": 0, "full_boundary_pixels": full}
    mask = drawn_plane_mask(truth.shape, {(0, 1), (2, 5)})
    assert mask[1].all() and mask[:, :, 5].all() and not mask[0, :, :5].any()
    assert int(mask.sum()) == 8 * 8 + 4 * 8 - 8


def test_rounds_lowering_dice_counts_drops_within_a_volume():
    rows = [{"case": "a", "round": 1, "dice_shown": 0.9, "dice_fused": 0.80},
            {"case": "a", "round": 2, "dice_shown": 0.80, "dice_fused": 0.797},
            {"case": "a", "round": 3, "dice_shown": 0.797, "dice_fused": 0.70},
            {"case": "b", "round": 1, "dice_shown": 0.0, "dice_fused": 0.30},
            {"case": "b", "round": 2, "dice_shown": 0.30, "dice_fused": 0.31}]
    # 0.797 -> 0.70; 0.80 -> 0.797 is within the tolerance; a first round is not compared here
    assert rounds_lowering_dice(rows) == 1
    assert sm.DROP_TOLERANCE == 0.005
    assert [r["round"] for r in final_rows(rows)] == [3, 2]


def test_first_rounds_below_opening_counts_round_one_against_what_was_shown():
    def first(shown: float, fused: float, number: int = 1) -> dict:
        return {"round": number, "dice_shown": shown, "dice_fused": fused}

    assert first_rounds_below_opening([first(0.80, 0.70)]) == 1
    assert first_rounds_below_opening([first(0.0, 0.5)]) == 0  # a rise
    assert first_rounds_below_opening([first(0.80, 0.797)]) == 0  # within the tolerance
    assert first_rounds_below_opening([first(0.70, 0.60, number=2)]) == 0  # a later round
    assert first_rounds_below_opening([first(0.80, 0.70), first(0.80, 0.75), first(0.5, 0.9)]) == 2
