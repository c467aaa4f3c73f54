"""Scribble simulation for data that has dense labels but no scribbles, and effort counting.

A simulated annotator draws, on each chosen slice, one-pixel-wide strokes per class: for a
foreground structure, along the skeleton of its core (the structure eroded by a seeded
fraction of its own thickness, so strokes stay well inside it); for the background, along a
ring at a seeded distance around the foreground, or along the skeleton of the background's
core on slices with no foreground. The same seed always gives the same scribbles.

Arrays are (z, y, x); ``axis`` selects the slicing axis (0 = z-slices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from skimage.draw import line
from skimage.morphology import skeletonize
from skimage.segmentation import find_boundaries

from registration.io.volume import UNLABELLED

#: Fraction of a structure's half-thickness removed before taking its skeleton (seeded range).
CORE_FRACTION_RANGE = (0.2, 0.5)
#: Distance of the background ring from the foreground, as a fraction of the foreground's
#: equivalent diameter on that slice (seeded range), and its bounds in pixels.
RING_FRACTION_RANGE = (0.08, 0.2)
RING_DISTANCE_BOUNDS = (2.0, 20.0)
#: Largest seeded turn of a stroke drawn across a blob, away from its principal axis.
AXIS_JITTER_DEGREES = 20.0

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class ScribbleEffort:
    """What drawing the scribbles cost: labelled voxels, strokes (8-connected pieces per class
    and slice) and slices touched (count, and their indices along the slicing axis)."""

    voxels: int
    strokes: int
    slices_touched: int
    slice_indices: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        data = asdict(self)
        data["slice_indices"] = list(self.slice_indices)
        return data

    def __add__(self, other: ScribbleEffort) -> ScribbleEffort:
        """Totals over several volumes (indices are per volume, so they are dropped)."""
        return ScribbleEffort(
            self.voxels + other.voxels,
            self.strokes + other.strokes,
            self.slices_touched + other.slices_touched,
        )


@dataclass
class SimulatedScribbles:
    scribble: np.ndarray  # uint8 (z, y, x), class index where drawn, UNLABELLED elsewhere
    effort: ScribbleEffort


def _count_strokes(stroke_mask: np.ndarray) -> int:
    return int(ndimage.label(stroke_mask, structure=_EIGHT_CONNECTED)[1])


def _axis_stroke(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A straight stroke through the centroid of ``region`` along its principal axis, turned
    by a seeded angle of up to ``AXIS_JITTER_DEGREES``, kept where it lies inside ``region``."""
    coords = np.argwhere(region).astype(np.float64)
    centre = coords.mean(axis=0)
    if len(coords) < 3:
        direction = np.array([0.0, 1.0])
    else:
        _, vectors = np.linalg.eigh(np.cov((coords - centre).T))
        direction = vectors[:, -1]
    turn = np.radians(rng.uniform(-AXIS_JITTER_DEGREES, AXIS_JITTER_DEGREES))
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    direction = rotation @ direction
    reach = np.abs((coords - centre) @ direction).max() + 1.0
    start = np.round(centre - reach * direction).astype(int)
    end = np.round(centre + reach * direction).astype(int)
    rr, cc = line(start[0], start[1], end[0], end[1])
    inside = (rr >= 0) & (rr < region.shape[0]) & (cc >= 0) & (cc < region.shape[1])
    stroke = np.zeros_like(region, dtype=bool)
    stroke[rr[inside], cc[inside]] = True
    return stroke & region


def _core_skeleton(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Skeleton of each 8-connected component of ``mask`` after removing a seeded fraction of
    its thickness; a component too thin to erode keeps its own skeleton."""
    strokes = np.zeros_like(mask, dtype=bool)
    components, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    for index in range(1, count + 1):
        component = components == index
        depth = ndimage.distance_transform_edt(component)
        fraction = rng.uniform(*CORE_FRACTION_RANGE)
        core = depth > fraction * depth.max()
        skeleton = skeletonize(core) if core.any() else np.zeros_like(core)
        if not skeleton.any():
            skeleton = skeletonize(component)
        if not skeleton.any():  # a single pixel or a 2-pixel blob
            skeleton = component & (depth == depth.max())
        region = core if core.any() else component
        line = _axis_stroke(region, rng)
        if skeleton.sum() < line.sum():  # a blob's skeleton is a dot: draw across it instead
            skeleton = skeleton | line
        strokes |= skeleton & component
    return strokes


def _background_strokes(foreground: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A one-pixel ring around the foreground at a seeded distance, inside the slice; the
    background core skeleton when the slice has no foreground."""
    background = ~foreground
    if not foreground.any():
        return _core_skeleton(background, rng)
    diameter = 2.0 * np.sqrt(foreground.sum() / np.pi)
    distance = float(np.clip(rng.uniform(*RING_FRACTION_RANGE) * diameter, *RING_DISTANCE_BOUNDS))
    to_foreground = ndimage.distance_transform_edt(background)
    band = background & (to_foreground <= distance)
    # The band's outer rim; where the slice border cuts the band, the rim stops there.
    ring = band & ~ndimage.binary_erosion(band, border_value=1)
    ring &= to_foreground > distance - 1.5
    if not ring.any():  # the band fills the slice: fall back to the whole background
        return _core_skeleton(background, rng)
    return ring


def simulate_slice_scribbles(label_yx: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Scribbles (uint8 (y, x), UNLABELLED where none) for one 2D slice of labels."""
    scribble = np.full(label_yx.shape, UNLABELLED, dtype=np.uint8)
    foreground = (label_yx > 0) & (label_yx < num_classes)
    scribble[_background_strokes(foreground, rng) & (label_yx == 0)] = 0
    for cls in range(1, num_classes):
        mask = label_yx == cls
        if mask.any():
            scribble[_core_skeleton(mask, rng)] = cls
    return scribble


def simulate_scribbles(
    label_zyx: np.ndarray,
    *,
    num_classes: int,
    slices: Sequence[int] | None = None,
    axis: int = 0,
    seed: int = 0,
) -> SimulatedScribbles:
    """Seeded scribbles on ``slices`` (default: every slice along ``axis`` with foreground).

    ``label_zyx``: int (z, y, x) dense labels in 0 .. num_classes - 1. Returns the scribble
    volume (uint8, same shape, UNLABELLED where nothing is drawn) and its effort. Slice ``i``
    uses a generator seeded by (seed, i), so a slice's scribbles do not depend on which other
    slices were chosen.
    """
    labels = np.asarray(label_zyx)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D label volume, got shape {labels.shape}")
    if num_classes < 2 or num_classes > UNLABELLED:
        raise ValueError(f"num_classes must be in 2..{UNLABELLED}, got {num_classes}")
    moved = np.moveaxis(labels, axis, 0)
    if slices is None:
        slices = [i for i in range(moved.shape[0]) if ((moved[i] > 0) & (moved[i] < num_classes)).any()]
    chosen = sorted({int(i) for i in slices})
    for i in chosen:
        if not 0 <= i < moved.shape[0]:
            raise IndexError(f"slice {i} outside 0..{moved.shape[0] - 1} along axis {axis}")
    scribble = np.full(moved.shape, UNLABELLED, dtype=np.uint8)
    strokes = 0
    for i in chosen:
        rng = np.random.default_rng([seed, i])
        scribble[i] = simulate_slice_scribbles(moved[i], num_classes, rng)
        strokes += sum(_count_strokes(scribble[i] == cls) for cls in range(num_classes))
    touched = tuple(i for i in chosen if (scribble[i] != UNLABELLED).any())
    effort = ScribbleEffort(
        voxels=int((scribble != UNLABELLED).sum()),
        strokes=int(strokes),
        slices_touched=len(touched),
        slice_indices=touched,
    )
    return SimulatedScribbles(np.ascontiguousarray(np.moveaxis(scribble, 0, axis)), effort)


def boundary_effort(label_zyx: np.ndarray, slices_touched: Sequence[int], axis: int = 0) -> tuple[int, int]:
    """(ground-truth boundary pixels on the touched slices, on all slices).

    A boundary pixel is a foreground pixel with a 4-neighbour of another label in the same
    2D slice along ``axis``; the second number is the cost of annotating every slice fully.
    """
    moved = np.moveaxis(np.asarray(label_zyx), axis, 0)
    per_slice = np.array(
        [int((find_boundaries(s, connectivity=1, mode="inner") & (s > 0)).sum()) for s in moved],
        dtype=np.int64,
    )
    touched = sorted({int(i) for i in slices_touched})
    return int(per_slice[touched].sum()) if touched else 0, int(per_slice.sum())
