"""The fade beyond the outermost drawn plane in interactive rounds (``ROUND_PROPAGATION``):
a plane drawn between or next to drawn ones must not cut the structure off beyond them."""

from __future__ import annotations

import dataclasses

import numpy as np

from registration.propagate import SliceAnnotation, propagate_to_volume
from registration.round import ROUND_PROPAGATION
from registration.slice_propagation import PropagationSettings, _area_trend


def tube():
    """A bright cylinder on slices 2..27 of 30 (noisy image) and its labels."""
    z, y, x = np.mgrid[:30, :40, :36]
    inside = ((y - 20) ** 2 + (x - 18) ** 2 <= 8**2) & (z >= 2) & (z < 28)
    rng = np.random.default_rng(1)
    image = np.where(inside, 0.8, 0.2) + 0.02 * rng.standard_normal(inside.shape)
    return image.astype(np.float32), inside.astype(np.uint8)


def annotate(labels: np.ndarray, slices) -> list[SliceAnnotation]:
    return [SliceAnnotation(0, i, labels[i].astype(np.uint8)) for i in slices]


def extent(labels: np.ndarray) -> tuple[int, int]:
    reached = np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1))
    return int(reached[0]), int(reached[-1])


def test_a_plane_drawn_between_drawn_ones_keeps_the_reach_beyond_them():
    image, labels = tube()
    settings = dataclasses.replace(ROUND_PROPAGATION, memoise_fields=False)
    two = propagate_to_volume(image, annotate(labels, [12, 17]), 2, settings=settings)
    three = propagate_to_volume(image, annotate(labels, [12, 14, 17]), 2, settings=settings)
    low2, high2 = extent(two.labels)
    low3, high3 = extent(three.labels)
    assert low3 <= low2 + 1 and high3 >= high2 - 1
    assert low3 <= 8 and high3 >= 21
    # The annotator's-gap limit (the propagation default) is what cut it off.
    limited = propagate_to_volume(image, annotate(labels, [12, 14, 17]), 2, settings=PropagationSettings())
    assert np.count_nonzero(limited.labels) < np.count_nonzero(three.labels)


def test_area_trend_is_judged_over_planes_a_few_slices_apart():
    y, x = np.mgrid[:40, :36]
    disc = {r: (((y - 20) ** 2 + (x - 18) ** 2) <= r * r).astype(np.uint8) for r in (7, 8)}
    labels_by_index = {10: disc[8], 14: disc[8], 15: disc[7]}
    order = [10, 14, 15]  # outermost last
    ratio = np.count_nonzero(disc[7]) / np.count_nonzero(disc[8])
    np.testing.assert_allclose(_area_trend(order, labels_by_index, 2), [ratio])  # neighbours: steep
    np.testing.assert_allclose(_area_trend(order, labels_by_index, 2, min_gap=3), [ratio ** (1 / 5)])
    # No plane far enough inwards: the innermost one.
    np.testing.assert_allclose(_area_trend(order, labels_by_index, 2, min_gap=9), [ratio ** (1 / 5)])
    # Growing outwards never extends the structure.
    grown = {10: disc[7], 14: disc[7], 15: disc[8]}
    np.testing.assert_allclose(_area_trend(order, grown, 2, min_gap=3), [1.0])
