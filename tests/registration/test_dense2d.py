"""Dense 2D labels from strokes on a simple two-region image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.filters import sobel
from skimage.segmentation import watershed

from registration import dense2d
from registration.appearance import normalize_intensity_sampled
from registration.corrections import seeds_with_previous_answer
from registration.dense2d import (
    densify_slice,
    far_from_seeds,
    fill_enclosed_to_hull,
    refine_by_appearance,
)
from registration.io.volume import UNLABELLED


def _image_and_truth(shape=(40, 50)):
    truth = np.zeros(shape, dtype=np.int64)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth[((yy - 20) / 11.0) ** 2 + ((xx - 24) / 15.0) ** 2 <= 1.0] = 1
    image = np.where(truth > 0, 0.8, 0.2) + np.random.default_rng(0).normal(0, 0.03, truth.shape)
    return image.astype(np.float32), truth


def _dice(a, b):
    return 2.0 * np.count_nonzero((a == 1) & (b == 1)) / (np.count_nonzero(a == 1) + np.count_nonzero(b == 1))


def test_two_regions_from_two_strokes():
    image, truth = _image_and_truth()
    seeds = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    seeds[20, 16:32] = 1  # a stroke inside the region
    seeds[3, 5:45] = 0  # a background stroke
    labels = densify_slice(image, seeds, 2)
    assert labels.shape == truth.shape and labels.dtype == np.int64
    assert _dice(labels, truth) > 0.95
    assert (labels[seeds != UNLABELLED] == seeds[seeds != UNLABELLED]).all()


def test_a_click_without_background_fills_a_structure_within_its_reach():
    # A click tells no size: it reaches 0.2 of the slice's shorter side (20 pixels here),
    # beyond the structure's edge (semi-axes 11 and 15); the border and beyond are background.
    image, truth = _image_and_truth((100, 120))
    one = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    one[20, 24] = 1
    assert _dice(densify_slice(image, one, 2), truth) > 0.95
    two = one.copy()
    two[20, 32] = 1  # a second click in the same structure fills at least as much
    assert _dice(densify_slice(image, two, 2), truth) > 0.95


def test_strokes_without_background_do_not_flood_the_body_around_the_structure():
    # A small structure with a faint edge inside a large body with a strong one: flooded from
    # the slice border alone, the stroke's class took the whole body.
    yy, xx = np.mgrid[:200, :240]
    body = ((yy - 100) / 85.0) ** 2 + ((xx - 120) / 105.0) ** 2 <= 1.0
    truth = (((yy - 90) / 10.0) ** 2 + ((xx - 110) / 25.0) ** 2 <= 1.0).astype(np.int64)
    image = 0.1 + 0.5 * body + 0.08 * truth + np.random.default_rng(1).normal(0, 0.01, truth.shape)
    seeds = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    seeds[90, 92:129] = 1  # along the structure's long axis, no background stroke
    labels = densify_slice(image.astype(np.float32), seeds, 2)
    assert np.count_nonzero(labels == 1) < 2 * np.count_nonzero(truth)
    assert _dice(labels, truth) > 0.8


def test_far_from_seeds_scales_with_each_class_stroke_and_gives_clicks_a_share_of_the_slice():
    seeds = np.full((100, 120), UNLABELLED, dtype=np.uint8)
    seeds[50, 20:61] = 1  # extent 41: reach 20.5 pixels
    seeds[20, 100] = 2  # a click: reach 0.2 x 100 = 20 pixels
    far = far_from_seeds(seeds)
    assert not far[50, 80] and far[50, 82]  # 20 and 22 pixels beyond the stroke's end
    assert not far[70, 40] and far[72, 40]
    assert not far[20, 80] and far[20, 79] and far[45, 100]
    assert not far_from_seeds(np.full((10, 10), UNLABELLED, dtype=np.uint8)).any()


def test_far_from_seeds_measures_in_mm_on_a_plane_across_thick_slices():
    seeds = np.full((20, 200), UNLABELLED, dtype=np.uint8)  # rows 5 mm apart: 100 x 200 mm
    seeds[10, 100] = 1  # a click: reach 0.2 x 100 mm = 20 mm, 4 rows or 20 columns
    far = far_from_seeds(seeds, spacing_yx=(5.0, 1.0))
    assert not far[14, 100] and far[15, 100]
    assert not far[10, 120] and far[10, 121]


def test_model_probabilities_guide_a_flat_image():
    truth = np.zeros((30, 30), dtype=np.int64)
    truth[:, 15:] = 1
    image = np.full(truth.shape, 0.5, dtype=np.float32)  # no edge in the image at all
    seeds = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    seeds[15, 2] = 0
    seeds[15, 27] = 1
    model = np.stack([1.0 - truth, truth]).astype(np.float32)
    labels = densify_slice(image, seeds, 2, probabilities_cyx=model)
    assert (labels == truth).mean() > 0.95
    with pytest.raises(ValueError):
        densify_slice(image, np.full(truth.shape, UNLABELLED, dtype=np.uint8), 2)


def test_appearance_refinement_moves_a_misplaced_border_onto_the_intensity_change():
    truth = np.zeros((256, 200), dtype=np.int64)
    truth[:, 100:] = 1
    image = np.where(truth > 0, 0.8, 0.2).astype(np.float32)
    seeds = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    seeds[:, 10] = 0
    seeds[:, 190] = 1
    misplaced = np.zeros_like(truth)
    misplaced[:, 98:] = 1  # the border two pixels off, inside class 0's intensity
    refined = refine_by_appearance(misplaced, image, seeds, 2)
    assert (refined == truth).all()
    assert (refine_by_appearance(truth, image, seeds, 2) == truth).all()


def test_clicks_are_too_few_pixels_for_the_appearance_refinement():
    truth = np.zeros((64, 64), dtype=np.int64)
    truth[:, 32:] = 1
    image = np.where(truth > 0, 0.8, 0.2).astype(np.float32)
    seeds = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    seeds[32, 5], seeds[32, 60] = 0, 1  # one click per class
    misplaced = np.zeros_like(truth)
    misplaced[:, 30:] = 1
    assert (refine_by_appearance(misplaced, image, seeds, 2) == misplaced).all()
    no_seeds = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    assert (refine_by_appearance(misplaced, image, no_seeds, 2) == misplaced).all()


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def _wall_and_cavity(shape=(80, 90)):
    """Labels: background 0, a wall 2 (a ring of radii 16-22) around a cavity 3 (radius 16),
    and beside them a crescent 1 that touches the wall but is not enclosed by it; and the
    cavity's rim where three spokes (trabeculae, 3 pixels wide, radius 10 to the wall) reach in."""
    truth = np.zeros(shape, dtype=np.int64)
    truth[_disc(shape, (40, 50), 22)] = 2
    truth[_disc(shape, (40, 50), 16)] = 3
    truth[_disc(shape, (40, 22), 16) & ~_disc(shape, (40, 50), 24)] = 1
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    spokes = (np.abs(yy - 40) <= 1) & (xx >= 60) | (np.abs(xx - 50) <= 1) & ((yy <= 30) | (yy >= 50))
    return truth, spokes & (truth == 3)


def test_an_enclosed_cavity_takes_back_the_spokes_its_wall_flooded():
    truth, spokes = _wall_and_cavity()
    bitten = np.where(spokes, 2, truth)
    bitten[40, 30:33] = 0  # a background bite in the cavity's rim: never taken
    keep = np.zeros(truth.shape, dtype=bool)
    keep[52, 50] = True  # a drawn (or accepted) wall pixel on the lower spoke: it stays wall, whole
    before = bitten.copy()
    filled = fill_enclosed_to_hull(bitten, keep, 4)
    assert (bitten == before).all()  # the input is not modified
    lower_spoke = spokes & (np.mgrid[:80, :90][0] >= 50)
    assert (filled[lower_spoke] == 2).all()
    # All but the spokes' last pixel at the wall, which the hull's chords pass inside of.
    assert (filled[spokes & ~lower_spoke & _disc(truth.shape, (40, 50), 15)] == 3).all()
    assert (filled[40, 30:33] == 0).all()
    # The hull runs through pixel corners: it may add a rim pixel here and there, from the wall.
    grown = (filled == 3) & (truth != 3)
    assert (bitten[grown] == 2).all() and grown.sum() <= 0.05 * (truth == 3).sum()
    with pytest.raises(ValueError, match="one shape"):
        fill_enclosed_to_hull(bitten, keep[:, :-1], 4)


def test_a_piece_of_the_cavity_outside_its_wall_does_not_cut_the_wall():
    truth, _ = _wall_and_cavity()
    island = truth.copy()
    island[38:41, 74:77] = 3  # a stray 3 x 3 of the cavity's class just outside the wall
    filled = fill_enclosed_to_hull(island, np.zeros(truth.shape, dtype=bool), 4)
    # The hull is that of the part inside the wall: the wall stays closed around the cavity.
    assert (filled[(island == 2) & ~_disc(truth.shape, (40, 50), 17)] == 2).all()
    assert (filled[38:41, 74:77] == 3).all()


def test_the_hull_fill_leaves_classes_that_are_not_enclosed_or_not_nearly_convex():
    truth, _ = _wall_and_cavity()
    nothing_kept = np.zeros(truth.shape, dtype=bool)
    filled = fill_enclosed_to_hull(truth, nothing_kept, 4)
    assert ((filled == 1) == (truth == 1)).all()  # the crescent is not enclosed: it keeps its bay
    c_shape = truth.copy()
    c_shape[(truth == 3) & _disc(truth.shape, (40, 56), 10)] = 2  # a wall tongue deep into the cavity
    hull_growth = (c_shape == 2) & _disc(truth.shape, (40, 50), 16)
    assert hull_growth.sum() > 0.5 * (c_shape == 3).sum()  # the cavity's hull would add more than half
    assert (fill_enclosed_to_hull(c_shape, nothing_kept, 4) == c_shape).all()


def test_densify_gives_the_cavity_the_dark_spokes_that_look_like_its_wall():
    truth, spokes = _wall_and_cavity()
    image = np.select([truth == 0, truth == 1, truth == 2, spokes], [0.5, 0.75, 0.2, 0.2], 0.9)
    image = (image + np.random.default_rng(1).normal(0, 0.02, truth.shape)).astype(np.float32)
    seeds = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    seeds[_disc(truth.shape, (40, 50), 19.5) & ~_disc(truth.shape, (40, 50), 18.5)] = 2  # along the wall
    seeds[40, 44:47] = 3  # a short stroke in the cavity's centre
    seeds[40, 12:18] = 1
    seeds[3, 5:85] = 0
    labels = densify_slice(image, seeds, 4)
    # Without the hull fill the wall's seeds flood every spoke (0 % of them cavity).
    assert (labels[spokes & _disc(truth.shape, (40, 50), 15)] == 3).mean() > 0.9


def _whole_plane_densify(image, seeds, num_classes, probabilities=None):
    """``densify_slice`` as it was before the box: relief, flood and refinement on the
    whole plane (the reference the boxed run must equal)."""
    seeded = seeds != UNLABELLED
    markers = np.where(seeded, seeds.astype(np.int64) + 1, 0)
    if not (seeds[seeded] == 0).any():
        border = np.zeros(image.shape, dtype=bool)
        border[[0, -1], :] = True
        border[:, [0, -1]] = True
        markers[(border | far_from_seeds(seeds)) & ~seeded] = 1
    normalized = normalize_intensity_sampled(image[None])[0]
    relief = sobel(ndimage.gaussian_filter(normalized, dense2d._smoothing_sigma(image.shape)))
    if probabilities is not None:
        relief = relief + dense2d.MODEL_EDGE_WEIGHT * np.max([sobel(q) for q in probabilities], axis=0)
    labels = watershed(relief, markers, compactness=dense2d.COMPACTNESS) - 1
    labels = refine_by_appearance(labels, normalized, seeds, num_classes)
    labels[seeded] = seeds[seeded]
    return fill_enclosed_to_hull(labels, seeded, num_classes)


def test_a_correction_floods_only_the_box_it_opens_with_the_whole_planes_labels():
    truth, spokes = _wall_and_cavity((96, 120))
    rng = np.random.default_rng(3)
    image = np.select([truth == 0, truth == 1, truth == 2, spokes], [0.5, 0.75, 0.2, 0.2], 0.9)
    image = (image + rng.normal(0, 0.05, truth.shape)).astype(np.float32)
    previous = truth.copy()
    previous[(truth == 3) & _disc(truth.shape, (40, 50), 16) & ~_disc(truth.shape, (40, 50), 12)] = 2
    previous[truth == 1] = 0  # the crescent missed
    strokes = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    strokes[40, 14:30] = 1
    strokes[36:45, 36] = 3
    seeds = seeds_with_previous_answer(strokes, previous.astype(np.uint8))
    open_pixels = seeds == UNLABELLED
    assert 0 < open_pixels.mean() < 0.2  # a correction: most of the plane stays seeded
    model = np.stack([(truth == c) * 0.7 + 0.075 for c in range(4)]).astype(np.float32)
    for probabilities in (None, model):
        labels = densify_slice(image, seeds, 4, probabilities_cyx=probabilities)
        assert (labels == _whole_plane_densify(image, seeds, 4, probabilities)).all()
        assert (labels[~open_pixels] == seeds[~open_pixels]).all()
    assert (labels[open_pixels] == 1).any() and (labels[open_pixels] == 3).any()  # the strokes flood


def test_strokes_without_background_are_refined_on_the_open_pixels_the_background_takes():
    # No background seed: the border and the pixels far from the strokes become background
    # markers, which are not seeded, so the refinement may still move them (its box is that of
    # every unseeded pixel, wider than the flood's).
    truth, spokes = _wall_and_cavity((96, 120))
    image = np.select([truth == 0, truth == 1, truth == 2, spokes], [0.5, 0.75, 0.2, 0.2], 0.9)
    image = (image + np.random.default_rng(6).normal(0, 0.05, truth.shape)).astype(np.float32)
    seeds = np.full(truth.shape, UNLABELLED, dtype=np.uint8)
    seeds[_disc(truth.shape, (40, 50), 19.5) & ~_disc(truth.shape, (40, 50), 18.5)] = 2
    seeds[38:43, 44:56] = 3
    seeds[40, 12:30] = 1
    labels = densify_slice(image, seeds, 4)
    assert (labels == _whole_plane_densify(image, seeds, 4)).all()
    assert _dice(labels == 3, truth == 3) > 0.8


def test_the_planes_border_taken_as_background_is_refined_as_on_the_whole_plane():
    # Seeds everywhere but no background: the border pixels are background markers, not
    # seeds, so the refinement moves those that look like the structures (box of the unseeded
    # pixels, not of the undecided ones).
    rng = np.random.default_rng(8)
    shape = (160, 200)
    truth = np.where(np.arange(200)[None, :] < 100, 1, 2) * np.ones(shape, dtype=np.int64)
    image = (np.where(truth == 1, 0.3, 0.8) + rng.normal(0, 0.05, shape)).astype(np.float32)
    seeds = np.where(rng.random(shape) < 0.5, truth, UNLABELLED).astype(np.uint8)
    seeds[[0, -1], :] = UNLABELLED
    seeds[:, [0, -1]] = UNLABELLED
    labels = densify_slice(image, seeds, 3)
    assert (labels == _whole_plane_densify(image, seeds, 3)).all()
    assert (labels[0] != 0).any()


def test_the_relief_on_a_box_is_the_whole_planes_relief_there():
    rng = np.random.default_rng(5)
    normalized = rng.random((150, 170)).astype(np.float32)
    model = rng.dirichlet(np.ones(3), size=(150, 170)).transpose(2, 0, 1).astype(np.float32)
    whole = (slice(0, 150), slice(0, 170))
    for box in ((slice(40, 61), slice(70, 98)), (slice(0, 12), slice(150, 170))):
        for probabilities in (None, model):
            reference = dense2d.flooding_relief(normalized, probabilities, whole)[box]
            assert (dense2d.flooding_relief(normalized, probabilities, box) == reference).all()


def test_the_refinement_on_a_box_changes_its_pixels_as_on_the_whole_plane_and_no_other():
    rng = np.random.default_rng(4)
    shape = (160, 192)  # a blur of 1 pixel, reaching 4
    labels = np.kron(rng.integers(0, 4, size=(40, 48)), np.ones((4, 4), dtype=np.int64))  # borders everywhere
    image = (0.2 * labels + rng.normal(0, 0.15, shape)).clip(0, 1).astype(np.float32)
    seeds = np.where(rng.random(shape) < 0.3, labels, UNLABELLED).astype(np.uint8)
    whole = refine_by_appearance(labels, image, seeds, 4)
    assert (whole != labels).any()
    for box in ((slice(50, 97), slice(33, 75)), (slice(0, 30), slice(170, 192))):  # inside; at a corner
        boxed = refine_by_appearance(labels, image, seeds, 4, box=box)
        assert (boxed[box] == whole[box]).all()
        outside = np.ones(shape, dtype=bool)
        outside[box] = False
        assert (boxed[outside] == labels[outside]).all()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.45, 2.3])
def test_the_gaussian_reach_is_the_last_pixel_an_impulse_spreads_to(sigma):
    impulse = np.zeros(41, dtype=np.float32)
    impulse[20] = 1.0
    spread = np.flatnonzero(ndimage.gaussian_filter(impulse, sigma) > 0) - 20
    assert spread.max() == dense2d._gaussian_reach(sigma) == -spread.min()
