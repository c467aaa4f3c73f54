"""Corrections: the previous answer stays where the user did not draw, and gives way around their strokes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from registration.corrections import (
    MIN_REACH_PIXELS,
    MIN_RELEASE_PIXELS,
    NEAREST_SEARCH_MARGIN,
    distance_to_nearest,
    release_radius,
    released_by_stroke,
    seeds_with_previous_answer,
)
from registration.io.volume import UNLABELLED

SHAPE = (48, 64)
CENTRE = (24, 30)


def _radius() -> np.ndarray:
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    return np.hypot(yy - CENTRE[0], xx - CENTRE[1])


def test_a_stroke_in_a_missed_band_releases_the_band_and_keeps_the_thin_structure_beside_it():
    """Blood pool (2) drawn too small: the answer has the ring class (1) from radius 6 to 14,
    the truth has the pool out to 10. The user draws the pool's class on a ring at radius 8."""
    radius = _radius()
    previous = np.zeros(SHAPE, dtype=np.uint8)
    previous[radius <= 14] = 1
    previous[radius <= 6] = 2
    previous[2:6, 50:60] = 1  # a structure far away, left alone
    seeds = np.full(SHAPE, UNLABELLED, dtype=np.uint8)
    seeds[np.abs(radius - 8) < 0.5] = 2
    out = seeds_with_previous_answer(seeds, previous)
    released = out == UNLABELLED
    assert released[np.abs(radius - 9.5) < 0.5].all()  # the missed band next to the stroke
    assert not released[radius >= 12].any()  # the outer part of the ring stays seeded as the ring ...
    assert (out[(radius >= 12) & (radius <= 14)] == 1).all()  # ... so it cannot be flooded away
    assert (out[radius <= 6] == 2).all()  # the stroke's own class is never released
    assert (out[2:6, 50:60] == 1).all() and out[0, 0] == 0
    drawn = seeds != UNLABELLED
    np.testing.assert_array_equal(out[drawn], seeds[drawn])


def test_a_stroke_along_a_thin_missed_edge_keeps_the_right_pixels_beyond_it():
    """The answer's disc (1) is 2 pixels too small all round; the user draws 1 in the missed
    band, right next to the answer's edge. Only the band gives way: the background a few
    pixels outside it, which the answer had right, stays seeded (the flood from the stroke
    would otherwise take some of it)."""
    radius = _radius()
    previous = np.zeros(SHAPE, dtype=np.uint8)
    previous[radius <= 10] = 1
    seeds = np.full(SHAPE, UNLABELLED, dtype=np.uint8)
    seeds[np.abs(radius - 11) < 0.5] = 1
    out = seeds_with_previous_answer(seeds, previous)
    released = out == UNLABELLED
    assert released[np.abs(radius - 12) < 0.3].any()  # next to the stroke, outwards
    assert not released[radius >= 11.5 + 2.5].any()
    assert (out[radius >= 14] == 0).all()


def test_a_stroke_on_a_missed_structure_releases_a_third_of_its_extent():
    previous = np.zeros(SHAPE, dtype=np.uint8)  # the answer has no class 3 at all
    seeds = np.full(SHAPE, UNLABELLED, dtype=np.uint8)
    seeds[24, 10:50] = 3  # 40 pixels long: a structure about that long, much narrower
    assert release_radius(seeds == 3) == pytest.approx(12.0)
    out = seeds_with_previous_answer(seeds, previous)
    assert out[24 - 11, 30] == UNLABELLED and out[24 - 13, 30] == 0


def test_without_seeds_or_with_agreeing_seeds_nothing_is_released():
    previous = np.zeros((12, 16), dtype=np.uint8)
    previous[1:11, 2:14] = 1
    empty = np.full(previous.shape, UNLABELLED, dtype=np.uint8)
    np.testing.assert_array_equal(seeds_with_previous_answer(empty, previous), empty)
    agreeing = empty.copy()
    agreeing[6, 8] = 1  # of the class the answer already gives it: nothing to release
    np.testing.assert_array_equal(seeds_with_previous_answer(agreeing, previous), previous)
    click = empty.copy()
    click[0, 0] = 1
    assert release_radius(click == 1) == MIN_RELEASE_PIXELS
    with pytest.raises(ValueError):
        seeds_with_previous_answer(empty[:, :-1], previous)


def _discs_one_by_one(stroke: np.ndarray, reach: np.ndarray, minimum: float) -> np.ndarray:
    """The definition: the union of a disc of radius max(minimum, reach) around each stroke pixel."""
    yy, xx = np.mgrid[: stroke.shape[0], : stroke.shape[1]]
    out = np.zeros(stroke.shape, dtype=bool)
    for y, x in zip(*np.nonzero(stroke), strict=True):
        radius = max(minimum, float(reach[y, x]))
        out |= (yy - y) ** 2 + (xx - x) ** 2 <= radius * radius
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_released_by_stroke_is_the_union_of_each_stroke_pixels_disc(seed):
    """The stroke pixels are grouped by radius and their discs found by a feature transform:
    the same pixels as drawing each disc, on a non-square plane, strokes at its edges too."""
    rng = np.random.default_rng(seed)
    shape = (37, 53)
    previous_is_class = np.zeros(shape, dtype=bool)
    previous_is_class[rng.integers(0, shape[0], 6), rng.integers(0, shape[1], 6)] = True
    stroke = np.zeros(shape, dtype=bool)
    stroke[rng.integers(0, shape[0], 25), rng.integers(0, shape[1], 25)] = True
    stroke[0, :5] = stroke[-1, -3:] = True
    reach = ndimage.distance_transform_edt(~previous_is_class)
    np.testing.assert_array_equal(
        released_by_stroke(stroke, previous_is_class), _discs_one_by_one(stroke, reach, MIN_REACH_PIXELS)
    )
    without_class = np.zeros(shape, dtype=bool)
    radius = np.full(shape, release_radius(stroke))
    np.testing.assert_array_equal(
        released_by_stroke(stroke, without_class), _discs_one_by_one(stroke, radius, MIN_RELEASE_PIXELS)
    )
    assert not released_by_stroke(np.zeros(shape, dtype=bool), previous_is_class).any()


def test_distance_to_nearest_is_the_whole_planes_distance_transform_near_and_far():
    reach = NEAREST_SEARCH_MARGIN
    mask = np.zeros((100, 140), dtype=bool)
    # Their box: rows 40 - reach .. 50 + reach, columns 0 (clipped) .. 70 + reach.
    ys, xs = np.array([40, 50]), np.array([5, 70])
    mask[90, 130] = True  # nothing in the box: the whole plane
    reference = ndimage.distance_transform_edt(~mask)
    assert np.array_equal(distance_to_nearest(ys, xs, mask), reference[ys, xs])
    mask[50, 71] = True  # next to (50, 70): found in the box
    mask[40 + reach + 2, 5] = True  # in the box, reach + 2 below (40, 5) ...
    mask[40 - reach - 1, 5] = True  # ... but the row just above the box is nearer: the whole plane again
    reference = ndimage.distance_transform_edt(~mask)
    assert reference[40, 5] == reach + 1
    assert np.array_equal(distance_to_nearest(ys, xs, mask), reference[ys, xs])
    assert distance_to_nearest(ys[:0], xs[:0], mask).shape == (0,)
