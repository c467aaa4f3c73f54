"""The round benchmark without a server: stand-in models and a trained checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clients.bench_rounds import drawn_plane_mask, main, volume_effort
from learner.checkpoints import save_checkpoint
from learner.networks import build_network
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
        argv += ["--model", "truth"]
    main(argv)
    report = json.loads((tmp_path / "rounds.json").read_text())
    rows, summary = report["rows"], report["summary"]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(0.0 <= r["dice_fused"] <= 1.0 and 0.0 <= r["dice_model"] <= 1.0 for r in rows)
    if with_checkpoint:
        assert summary["model"].endswith("model.pt") and summary["validation_dice"] == 0.4
    else:
        assert summary["dice_model"] == 1.0  # the truth as the model
        assert summary["rounds_fused_below_model"] == sum(r["dice_fused"] < 1.0 for r in rows)
    assert summary["effort_full_boundary_pixels"] > 0 and summary["target_dice"] == 0.9
    assert 0 <= summary["effort_touched_boundary_pixels"] <= summary["effort_full_boundary_pixels"]
    assert all(r["wrong_on_drawn"] >= 0 and r["wrong_elsewhere"] >= 0 for r in rows)
    assert report["volumes"][0]["reached_target"] == (summary["reached_target"] == 1)


def test_volume_effort_counts_the_planes_touched_until_the_target():
    truth = np.zeros((4, 6, 6), dtype=np.int64)
    truth[:, 1:5, 1:5] = 1  # 12 boundary pixels on every z plane
    rows = [{"slice": [0, 0], "dice_fused": 0.5}, {"slice": [0, 2], "dice_fused": 0.95},
            {"slice": [0, 3], "dice_fused": 0.97}]
    assert volume_effort(truth, rows, 0.9) == {
        "reached_target": True, "touched_boundary_pixels": 24, "full_boundary_pixels": 48}
    assert volume_effort(truth, rows, 0.99) == {
        "reached_target": False, "touched_boundary_pixels": 36, "full_boundary_pixels": 48}
    mask = drawn_plane_mask(truth.shape, {(0, 1), (2, 5)})
    assert mask[1].all() and mask[:, :, 5].all() and int(mask.sum()) == 36 + 24 - 6
