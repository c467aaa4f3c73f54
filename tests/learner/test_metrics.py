"""3D Dice and HD95 per class on hand-made volumes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.metrics import case_metrics, dice_per_class, hd95_per_class, summarize


def test_dice_hand_computed():
    truth = np.zeros((4, 10, 10), dtype=np.int64)
    pred = np.zeros_like(truth)
    truth[1:3, 2:6, 2:6] = 1  # 32 voxels
    pred[1:3, 2:6, 4:8] = 1  # 32 voxels, 16 shared
    truth[0, 0, 0] = 2
    pred[3, 9, 9] = 2  # disjoint
    dice = dice_per_class(pred, truth, num_classes=4)
    assert dice[1] == pytest.approx(2 * 16 / 64)
    assert dice[2] == 0.0
    assert dice[3] == 1.0  # absent from both: perfect by convention
    assert set(dice) == {1, 2, 3}


def test_dice_one_side_empty_is_zero():
    truth = np.zeros((2, 4, 4), dtype=np.int64)
    truth[0, 0, 0] = 1
    assert dice_per_class(np.zeros_like(truth), truth, 2)[1] == 0.0
    assert dice_per_class(truth, np.zeros_like(truth), 2)[1] == 0.0


def test_hd95_point_distances_in_voxels_and_millimetres():
    truth = np.zeros((8, 8, 8), dtype=np.int64)
    pred = np.zeros_like(truth)
    truth[1, 4, 4] = 1
    pred[4, 4, 4] = 1  # three voxels away along z
    assert hd95_per_class(pred, truth, 2)[1] == pytest.approx(3.0)
    assert hd95_per_class(pred, truth, 2, spacing_zyx=(2.0, 1.0, 1.0))[1] == pytest.approx(6.0)
    assert hd95_per_class(truth, truth, 2)[1] == 0.0


def test_hd95_empty_conventions():
    truth = np.zeros((3, 5, 5), dtype=np.int64)
    pred = np.zeros_like(truth)
    pred[1, 2, 2] = 1
    result = hd95_per_class(pred, truth, 3)
    assert math.isnan(result[1])  # one side empty: undefined
    assert result[2] == 0.0  # both empty


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        dice_per_class(np.zeros((2, 3, 3), int), np.zeros((2, 3, 4), int), 2)


def test_summarize_means_over_cases_and_skips_nan():
    truth = np.zeros((3, 6, 6), dtype=np.int64)
    truth[1, 1:4, 1:4] = 1
    perfect = case_metrics(truth, truth, 2)
    empty = case_metrics(np.zeros_like(truth), truth, 2)
    summary = summarize([perfect, empty])
    assert summary["cases"] == 2
    assert summary["per_class"]["1"]["dice"] == pytest.approx(0.5)
    assert summary["per_class"]["1"]["hd95"] == 0.0  # the NaN of the empty prediction is skipped ...
    assert summary["per_class"]["1"]["hd95_undefined"] == 1  # ... and counted
    assert summary["hd95_undefined"] == 1
    assert summary["mean_dice"] == pytest.approx(0.5)


def test_dice_matches_monai_on_random_volumes():
    """The counted Dice equals MONAI's ``compute_dice`` (ignore_empty=False), one class absent."""
    import torch
    from monai.metrics import compute_dice

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, size=(5, 7, 9))  # class 3 absent from both
    pred = np.where(rng.random(truth.shape) < 0.3, rng.integers(0, 3, size=truth.shape), truth)

    def one_hot(labels):
        return torch.nn.functional.one_hot(torch.as_tensor(labels), 4).permute(3, 0, 1, 2)[None].float()

    expected = compute_dice(one_hot(pred), one_hot(truth), include_background=False, ignore_empty=False)[0]
    dice = dice_per_class(pred, truth, 4)
    assert [dice[c] for c in (1, 2, 3)] == pytest.approx(expected.tolist())
    assert 0.0 < dice[1] < 1.0 and dice[3] == 1.0


def test_dice_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="outside"):
        dice_per_class(np.full((2, 2, 2), 3), np.zeros((2, 2, 2), int), 3)
