"""A correction drawn on a plane: the user's strokes on top of the answer they were shown.

A person fixing a segmentation draws only where it is wrong; what they leave alone they
accept. So the seeds of a drawn plane for ``registration.dense2d.densify_slice`` are the
user's own, plus the previous answer's label on every pixel of the plane except around the
user's strokes, where pixels the previous answer gave another class than the stroke's are
released (left for the flood to decide by the image's edges).

How far around: a stroke is drawn through the middle of a region that should be its class
c, so the region reaches from each stroke pixel about as far as the nearest pixel the
previous answer already gives c (the other side of a missed band), and a whole structure
the answer missed (no c pixel on the plane) about a third of the stroke's extent. Each stroke
pixel releases a disc of that radius (at least ``MIN_REACH_PIXELS`` next to its class,
``MIN_RELEASE_PIXELS`` for a class the plane does not show). A fixed radius
would either leave part of a missed region seeded with the wrong class or, around a ring
drawn inside a thin band, release and lose the thin structure next to it (measured on ACDC:
half the stroke's extent everywhere erased the myocardium around a corrected blood pool).
Arrays are 2D (y, x).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from registration.io.volume import UNLABELLED
from registration.labels import bounding_extent

#: Smallest release radius around a stroke of a class the plane does not show yet (pixels):
#: clicks and short strokes still free the pixels next to them.
MIN_RELEASE_PIXELS = 3.0
#: Smallest release radius around a stroke pixel next to its class in the previous answer
#: (pixels). Corrective strokes mostly run along thin missed bands at a structure's edge; a
#: wider disc released the correct pixels on the band's far side too, and the flood from the
#: stroke took a few of them (ACDC val, fair model: 4639 of the previously right pixels of
#: drawn planes turned wrong over 10 volumes x 6 rounds with 3 pixels, 3066 with 1.5).
MIN_REACH_PIXELS = 1.5
#: Release radius around a stroke of a class the plane does not show yet, as a share of the
#: stroke's extent. A stroke along an elongated missed structure (a hippocampus, an RV
#: crescent) is about as long as the structure but the structure is much narrower: with 0.5
#: the flood over-grew it where its edges are weak. bench_rounds-style replays, 10 val volumes
#: (ACDC 6 rounds, hippocampus 8), final Dice with 0.5 against 0.3: ACDC fair model 0.893 /
#: 0.895, no model 0.862 / 0.867; hippocampus 0.798 / 0.803 and 0.796 / 0.807 (0.2: 0.894,
#: 0.866, 0.801, 0.813).
RELEASE_EXTENT_FRACTION = 0.3


def release_radius(stroke: np.ndarray) -> float:
    """RELEASE_EXTENT_FRACTION of the longer side of the bounding box of the ``stroke`` pixels, at
    least MIN_RELEASE_PIXELS."""
    return max(MIN_RELEASE_PIXELS, RELEASE_EXTENT_FRACTION * bounding_extent(stroke))


#: ``distance_to_nearest`` looks for the nearest pixel within this many pixels of the given
#: ones first (a stroke's class is usually a few pixels away), on the whole plane only when
#: a pixel outside that box could be nearer (the previous answer's seeds of a round, 6 ACDC val
#: volumes x 8 rounds: 27 -> 9 ms, the same seeds).
NEAREST_SEARCH_MARGIN = 16


def _box_around(ys: np.ndarray, xs: np.ndarray, margin: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), ends exclusive: the box of the pixels (ys, xs) grown by ``margin``,
    clipped to a plane of ``shape``."""
    return (max(0, int(ys.min()) - margin), min(shape[0], int(ys.max()) + margin + 1),
            max(0, int(xs.min()) - margin), min(shape[1], int(xs.max()) + margin + 1))


def distance_to_nearest(ys: np.ndarray, xs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64 (n,): the Euclidean distance (pixels) from each pixel (ys[i], xs[i]) to the
    nearest True pixel of the 2D ``mask``, which must hold one. Exactly the whole plane's
    distance transform there, taken on the pixels' box grown by ``NEAREST_SEARCH_MARGIN``
    when what it finds is no further than the box's edge."""
    if ys.size == 0:
        return np.zeros(0)
    h, w = mask.shape
    y0, y1, x0, x1 = _box_around(ys, xs, NEAREST_SEARCH_MARGIN, mask.shape)
    box = mask[y0:y1, x0:x1]
    if box.any():
        found = ndimage.distance_transform_edt(~box)[ys - y0, xs - x0]
        # A pixel outside the box lies at least one row or column beyond its edge.
        beyond = np.full(ys.shape, np.inf)
        for outside, gap in ((y0 > 0, ys - y0 + 1), (y1 < h, y1 - ys), (x0 > 0, xs - x0 + 1), (x1 < w, x1 - xs)):
            if outside:
                beyond = np.minimum(beyond, gap)
        if (found <= beyond).all():
            return found
    return ndimage.distance_transform_edt(~mask)[ys, xs]


def released_by_stroke(stroke: np.ndarray, previous_is_class: np.ndarray) -> np.ndarray:
    """bool (y, x): the union of discs around the ``stroke`` pixels, each reaching the nearest
    pixel of ``previous_is_class`` and at least MIN_REACH_PIXELS, or ``release_radius`` when
    the previous answer has no pixel of the class."""
    shape = stroke.shape
    ys, xs = np.nonzero(stroke)
    if previous_is_class.any():
        reach = distance_to_nearest(ys, xs, previous_is_class)
        minimum = MIN_REACH_PIXELS
    else:
        reach = np.full(ys.shape, release_radius(stroke))
        minimum = MIN_RELEASE_PIXELS
    released = np.zeros(shape, dtype=bool)
    radii = np.maximum(minimum, reach.astype(np.float64))
    # The stroke pixels of one radius at a time: a pixel lies in one of their discs exactly
    # when the nearest of them is within the radius (an exact feature transform on a crop).
    for radius in np.unique(radii):
        gy, gx = ys[radii == radius], xs[radii == radius]
        y0, y1, x0, x1 = _box_around(gy, gx, int(np.ceil(radius)), shape)
        away = np.ones((y1 - y0, x1 - x0), dtype=bool)
        away[gy - y0, gx - x0] = False
        nearest_y, nearest_x = ndimage.distance_transform_edt(away, return_distances=False, return_indices=True)
        dy = nearest_y - np.arange(y1 - y0)[:, None]
        dx = nearest_x - np.arange(x1 - x0)[None, :]
        released[y0:y1, x0:x1] |= dy * dy + dx * dx <= radius * radius
    return released


def seeds_with_previous_answer(seeds_yx: np.ndarray, previous_yx: np.ndarray) -> np.ndarray:
    """uint8 (y, x): the user's ``seeds_yx`` (UNLABELLED where none) where given; elsewhere
    the ``previous_yx`` answer's label, except UNLABELLED where a stroke of another class
    releases it (module docstring). Without any seed: the seeds unchanged."""
    seeds = np.asarray(seeds_yx)
    previous = np.asarray(previous_yx)
    if seeds.shape != previous.shape or seeds.ndim != 2:
        raise ValueError(f"seeds {seeds.shape} and previous answer {previous.shape} must be one 2D shape")
    user = seeds != UNLABELLED
    if not user.any():
        return seeds.astype(np.uint8, copy=True)
    released = np.zeros(seeds.shape, dtype=bool)
    for cls in np.unique(seeds[user]):
        is_class = previous == cls
        released |= released_by_stroke(seeds == cls, is_class) & ~is_class
    out = np.where(released, UNLABELLED, previous).astype(np.uint8)
    out[user] = seeds[user]
    return out
