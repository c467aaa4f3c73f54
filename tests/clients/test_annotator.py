"""The corrective simulated annotator's pure parts: which slice, and what it draws there."""

from __future__ import annotations

import numpy as np
import pytest

from clients.annotator import (
    choose_slice,
    corrective_scribble,
    effort_of,
    next_correction,
    usable_suggestion,
)
from registration.io.volume import UNLABELLED
from registration.round import compute_round
from registration.synthetic import synthetic_volume
from server import schemas

NUM_CLASSES = 3


def _slice_truth() -> np.ndarray:
    """(40, 56): class 1 a disc, class 2 a disc beside it, background around."""
    yy, xx = np.mgrid[:40, :56]
    truth = np.zeros((40, 56), dtype=np.int64)
    truth[(yy - 20) ** 2 + (xx - 16) ** 2 <= 10**2] = 1
    truth[(yy - 20) ** 2 + (xx - 40) ** 2 <= 8**2] = 2
    return truth


def _suggestion(axis: int, index: int) -> schemas.Suggestion:
    return schemas.Suggestion(axis=axis, slice=index, bbox_zyx=[index, 0, 0, index + 1, 4, 4],
                              centroid_zyx=[index, 2, 2], centroid_ijk=[2, 2, index], centroid_lps=[0, 0, 0],
                              score=1.0)


def test_the_corrective_scribble_fixes_a_missed_part_and_a_wrong_part():
    truth = _slice_truth()
    segmentation = truth.copy()
    missed = (truth == 1) & (np.mgrid[:40, :56][1] < 14)  # the left part of class 1 is missing
    segmentation[missed] = 0
    wrong = np.zeros_like(truth, dtype=bool)
    wrong[2:9, 44:54] = True  # class 2 where the truth is background
    segmentation[wrong] = 2
    drawing = corrective_scribble(truth, segmentation, NUM_CLASSES)
    drawn = drawing != UNLABELLED
    assert set(np.unique(drawing[drawn])) == {0, 1}  # class 2 is right where it is: no stroke for it
    ones, zeros = drawing == 1, drawing == 0
    assert ones.any() and np.all(missed[ones])  # "this is class 1" inside what was missed
    assert zeros.any() and np.all(wrong[zeros])  # "this is background" on the wrong blob
    # Thin strokes: a small part of each region, not a filled region.
    assert ones.sum() < 0.35 * missed.sum() and zeros.sum() < 0.5 * wrong.sum()
    fixed = segmentation.copy()
    fixed[drawn] = drawing[drawn]
    assert (fixed != truth).sum() < (segmentation != truth).sum()


def test_what_each_class_wrongly_claims_is_drawn_as_its_true_label():
    # Class 1 and class 2 both spill into the background: two wrong regions of the background,
    # each a stroke of background (before, only the larger of the background's errors was drawn).
    truth = _slice_truth()
    segmentation = truth.copy()
    spill_1 = np.zeros_like(truth, dtype=bool)
    spill_1[2:8, 4:28] = True  # class 1 where the truth is background (the larger spill)
    spill_2 = np.zeros_like(truth, dtype=bool)
    spill_2[33:38, 36:50] = True  # class 2 where the truth is background (the smaller)
    segmentation[spill_1] = 1
    segmentation[spill_2] = 2
    drawing = corrective_scribble(truth, segmentation, NUM_CLASSES)
    drawn = drawing != UNLABELLED
    assert np.all(drawing[drawn] == 0)  # nothing was missed: only "this is background" strokes
    assert (drawing[spill_1] == 0).any() and (drawing[spill_2] == 0).any()


def test_a_claimed_region_over_two_true_labels_is_drawn_with_each_pixels_own_label():
    # Class 2 claims a band across class 1's right half and the background beside it: one
    # wrongly claimed region, larger than any missed region, whose stroke carries 1 inside
    # class 1 and 0 outside; a truth label the project does not have (7, a class outside
    # 0..C-1) is never drawn. In clicks mode the click carries the label under it.
    truth = _slice_truth()
    truth[36:40, :] = 7
    segmentation = truth.copy()
    band = np.zeros_like(truth, dtype=bool)
    band[16:25, 20:36] = True  # class 1 from x = 20 to 26, background from 27 to 35
    band[36:40, 0:56] = True  # and all of the ignored strip
    segmentation[band] = 2
    drawing = corrective_scribble(truth, segmentation, NUM_CLASSES)
    drawn = drawing != UNLABELLED
    assert np.all(drawing[drawn] == truth[drawn]) and not (drawing == 7).any()
    assert (drawing[band & (truth == 1)] == 1).any() and (drawing[band & (truth == 0)] == 0).any()
    clicks = corrective_scribble(truth, segmentation, NUM_CLASSES, mode="clicks")
    clicked = clicks != UNLABELLED
    assert clicked.any() and np.all(clicks[clicked] == truth[clicked])


def test_nothing_is_drawn_on_a_correct_slice_and_every_structure_on_an_empty_answer():
    truth = _slice_truth()
    assert (corrective_scribble(truth, truth.copy(), NUM_CLASSES) == UNLABELLED).all()
    nearly = truth.copy()
    nearly[20, 26] = 0  # a one-pixel wobble is not worth a stroke
    assert (corrective_scribble(truth, nearly, NUM_CLASSES) == UNLABELLED).all()
    drawing = corrective_scribble(truth, np.zeros_like(truth), NUM_CLASSES)
    for cls in (1, 2):
        mine = drawing == cls
        assert mine.any() and np.all(truth[mine] == cls)
    assert not (drawing == 0).any()  # the background was right


def test_clicks_mode_clicks_once_inside_each_error():
    truth = _slice_truth()
    everything_background = np.zeros_like(truth)
    drawing = corrective_scribble(truth, everything_background, NUM_CLASSES, mode="clicks")
    for cls in (1, 2):
        points = np.argwhere(drawing == cls)
        assert len(points) == 1 and truth[tuple(points[0])] == cls
    volume = np.full((3,) + truth.shape, UNLABELLED, dtype=np.uint8)
    volume[1] = drawing
    assert effort_of(volume, "clicks") == {"voxels": 2, "strokes": 0, "clicks": 2, "slices_touched": 1}
    with pytest.raises(ValueError):
        corrective_scribble(truth, truth, NUM_CLASSES, mode="brush")


def test_choose_slice_policies_never_pick_a_drawn_slice():
    volume = synthetic_volume((18, 24, 30), NUM_CLASSES, seed=0)
    truth = volume.labels.astype(np.int64)
    segmentation = truth.copy()
    segmentation[12] = 0  # the slice with the planted error
    segmentation[5, :4, :4] = 1  # a smaller one
    rng = np.random.default_rng(0)
    assert choose_slice("residual", truth, segmentation, _suggestion(0, 7), set(), rng) == (0, 7)
    assert choose_slice("residual", truth, segmentation, _suggestion(1, 3), {(0, 7)}, rng) == (1, 3)
    assert choose_slice("oracle", truth, segmentation, None, set(), rng) == (0, 12)
    assert choose_slice("oracle", truth, segmentation, None, {(0, 12)}, rng) == (0, 5)
    first, last = volume.present
    for seed in range(20):
        drawn = {(0, 7), (0, int(np.random.default_rng(seed).integers(18)))}
        rng = np.random.default_rng(seed)
        assert not usable_suggestion(_suggestion(0, 7), drawn)
        axis, index = choose_slice("residual", truth, segmentation, _suggestion(0, 7), drawn, rng)
        assert axis == 0 and (axis, index) not in drawn and first <= index <= last  # random, with foreground
        axis, index = choose_slice("random", truth, segmentation, None, drawn, rng)
        assert axis == 0 and (axis, index) not in drawn and first <= index <= last
    all_z = {(0, z) for z in range(18)}
    assert choose_slice("oracle", truth, segmentation, None, all_z, rng)[0] != 0
    everything = {(a, i) for a in range(3) for i in range(truth.shape[a])}
    with pytest.raises(ValueError):
        choose_slice("random", truth, segmentation, None, everything, rng)
    with pytest.raises(ValueError):
        choose_slice("greedy", truth, segmentation, None, set(), rng)


def _dice_mean(prediction: np.ndarray, truth: np.ndarray) -> float:
    scores = []
    for cls in range(1, NUM_CLASSES):
        p, t = prediction == cls, truth == cls
        scores.append(2.0 * np.logical_and(p, t).sum() / max(p.sum() + t.sum(), 1))
    return float(np.mean(scores))


def test_corrective_rounds_through_the_round_computation_improve_the_answer():
    """Round 1 draws the structures near one end of an empty answer; later rounds correct the
    oracle's worst slice of the answer returned, which the server keeps where not corrected:
    every slice drawn on gets better, and so does the volume."""
    shape = (14, 80, 64)
    volume = synthetic_volume(shape, NUM_CLASSES, seed=4)
    truth = volume.labels.astype(np.int64)
    uniform = np.full((NUM_CLASSES,) + shape, 1.0 / NUM_CLASSES, dtype=np.float32)
    seeds = np.full(shape, UNLABELLED, dtype=np.uint8)
    planes: set[tuple[int, int]] = set()
    answer = np.zeros(shape, dtype=np.int64)
    rng = np.random.default_rng(0)
    history = []
    for round_number in range(3):
        if round_number == 0:
            axis, index = 0, volume.present[0] + 1
        else:
            axis, index = choose_slice("oracle", truth, answer, None, planes, rng)
        drawing = corrective_scribble(truth[index], answer[index], NUM_CLASSES)
        assert (drawing != UNLABELLED).any()
        seeds[index][drawing != UNLABELLED] = drawing[drawing != UNLABELLED]
        planes.add((axis, index))
        before = int((answer[index] != truth[index]).sum())
        result = compute_round(volume.image, (1.0, 1.0, 1.0), seeds, planes, uniform, NUM_CLASSES,
                               previous_segmentation=answer.astype(np.uint8) if round_number else None)
        answer = result.segmentation.astype(np.int64)
        assert int((answer[index] != truth[index]).sum()) < before  # the slice drawn on got better
        history.append(_dice_mean(answer, truth))
    # Not every round raises the volume's Dice: a correction next to the first slice makes
    # the propagation fade the structure sooner on the far side (registration.slice_propagation's
    # fade scale follows the gap between annotated slices); the next round's slice fixes it.
    assert history[-1] > history[0] and history[-1] > 0.95, history


def test_next_correction_skips_a_plane_with_nothing_worth_a_stroke():
    truth = np.zeros((6, 20, 20), dtype=np.int64)
    truth[:, 5:15, 5:15] = 1
    answer = truth.copy()
    answer[4, 5:15, 5:10] = 0  # plane 4: a missed region of 50 pixels
    answer[1, 5, 5:8] = 0  # plane 1: 3 wrong pixels, under the size a person fixes
    rng = np.random.default_rng(0)
    axis, index, drawing, fallback = next_correction("residual", truth, answer, _suggestion(0, 4), set(), rng, 2)
    assert (axis, index, fallback) == (0, 4, False) and (drawing == 1).any()
    # the suggestion points at plane 1: nothing to draw there, so the plane with the error, at random
    axis, index, drawing, fallback = next_correction("residual", truth, answer, _suggestion(0, 1), set(), rng, 2)
    assert (axis, index, fallback) == (0, 4, True) and drawing.shape == (20, 20)
    assert next_correction("random", truth, truth, None, set(), rng, 2) is None  # nothing to fix anywhere
