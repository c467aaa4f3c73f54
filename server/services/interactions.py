"""User input of a round turned into seed labels on the image's voxel grid (pure NumPy).

Points arrive as SimpleITK voxel indices (i, j, k) or physical LPS millimetres and are
converted here, once, to array indices (z, y, x) with ``registration.io.volume.Volume``.
A stroke is a polyline painted with a disc brush of ``radius`` voxels in its plane: the
array axis along which all its points share one index (z preferred), or z-slices when
the points leave every plane. A click paints a small disc; a negative click on label L
marks the voxel with the most probable *other* label. Seed volumes are uint8 (z, y, x),
``UNLABELLED`` where the user said nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from registration.io.volume import UNLABELLED, Volume
from server import schemas
from server.errors import BadInput

Plane = tuple[int, int]  # (array axis, index along it)


@dataclass
class PaintedInput:
    """One round's own input: seeds (z, y, x) uint8 with UNLABELLED, and what it touched."""

    seeds: np.ndarray
    planes: set[Plane] = field(default_factory=set)
    strokes: int = 0
    clicks: int = 0

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.seeds != UNLABELLED))


def to_zyx(point: schemas.Point3, space: str, geometry: Volume, what: str) -> tuple[int, int, int]:
    """An API point to an array index (z, y, x), checked against the volume's bounds."""
    if not all(math.isfinite(float(c)) for c in point):
        raise BadInput(f"{what}: point {list(point)} is not finite")
    try:
        if space == "physical":
            zyx = geometry.physical_to_zyx(point)
        else:
            zyx = geometry.index_to_zyx(point)
    except (OverflowError, ValueError):  # a finite point can still map to an infinite index
        raise BadInput(f"{what}: point {list(point)} is outside the volume") from None
    shape = geometry.shape_zyx
    if not all(0 <= c < s for c, s in zip(zyx, shape, strict=True)):
        size_ijk = [shape[2], shape[1], shape[0]]
        unit = "mm (LPS)" if space == "physical" else "(i, j, k)"
        raise BadInput(
            f"{what}: point {list(point)} {unit} is outside the volume "
            f"(voxel (i, j, k) = {[zyx[2], zyx[1], zyx[0]]}, size {size_ijk})"
        )
    return zyx


def check_label(label: int, num_classes: int, what: str) -> None:
    if not 0 <= label < num_classes:
        raise BadInput(f"{what}: label {label} is out of range; this project's labels are 0..{num_classes - 1}")


def stroke_axis(points_zyx: np.ndarray) -> int | None:
    """The axis along which every point has the same index (z first), or None."""
    for axis in (0, 1, 2):
        if np.all(points_zyx[:, axis] == points_zyx[0, axis]):
            return axis
    return None


def polyline_voxels(points_zyx: np.ndarray) -> np.ndarray:
    """Every voxel (z, y, x) on the straight segments joining consecutive points, (N, 3) int."""
    if len(points_zyx) == 1:
        return points_zyx.astype(np.int64)
    pieces = []
    for start, end in zip(points_zyx[:-1], points_zyx[1:], strict=True):
        steps = int(np.max(np.abs(end - start))) + 1
        t = np.linspace(0.0, 1.0, steps)[:, None]
        pieces.append(np.rint(start + t * (end - start)).astype(np.int64))
    return np.unique(np.concatenate(pieces), axis=0)


def disc_offsets(radius: float) -> np.ndarray:
    """In-plane offsets (a, b) of a disc of ``radius`` voxels, (M, 2) int; radius 0 = one voxel."""
    r = int(math.floor(radius))
    a, b = np.mgrid[-r : r + 1, -r : r + 1]
    inside = a * a + b * b <= radius * radius + 1e-9
    return np.stack([a[inside], b[inside]], axis=1)


def paint(seeds: np.ndarray, centres_zyx: np.ndarray, axis: int, radius: float, label: int) -> set[Plane]:
    """Paint a disc of ``radius`` around each centre in the plane normal to ``axis``.

    Modifies ``seeds`` in place; returns the planes (axis, index) touched.
    """
    in_plane = [a for a in (0, 1, 2) if a != axis]
    offsets = disc_offsets(radius)
    voxels = np.repeat(centres_zyx, len(offsets), axis=0)
    tiled = np.tile(offsets, (len(centres_zyx), 1))
    voxels[:, in_plane[0]] += tiled[:, 0]
    voxels[:, in_plane[1]] += tiled[:, 1]
    inside = np.all((voxels >= 0) & (voxels < np.array(seeds.shape)), axis=1)
    voxels = voxels[inside]
    seeds[voxels[:, 0], voxels[:, 1], voxels[:, 2]] = label
    return {(axis, int(i)) for i in np.unique(voxels[:, axis])}


@dataclass
class CheckedRound:
    """A round's strokes and clicks with their points on the volume grid, (z, y, x)."""

    strokes: list[tuple[np.ndarray, schemas.Stroke]]
    clicks: list[tuple[np.ndarray, schemas.Click]]


def check_round(request: schemas.RoundCreate, geometry: Volume, num_classes: int) -> CheckedRound:
    """Every point and label of a round validated and mapped to (z, y, x) voxels; raises
    BadInput naming the first bad stroke or click, before any work is done for the round."""
    if not request.scribbles and not request.clicks:
        raise BadInput("empty round: send at least one stroke or click")
    strokes = []
    for n, stroke in enumerate(request.scribbles):
        what = f"stroke {n}"
        if not stroke.points:
            raise BadInput(f"{what}: empty stroke: a stroke needs at least one point")
        check_label(stroke.label, num_classes, what)
        points = np.array([to_zyx(p, stroke.space, geometry, what) for p in stroke.points], dtype=np.int64)
        strokes.append((points, stroke))
    clicks = []
    for n, click in enumerate(request.clicks):
        what = f"click {n}"
        check_label(click.label, num_classes, what)
        clicks.append((np.array([to_zyx(click.point, click.space, geometry, what)], dtype=np.int64), click))
    return CheckedRound(strokes, clicks)


def paint_round(
    checked: CheckedRound,
    geometry: Volume,
    num_classes: int,
    click_radius: float,
    probabilities: np.ndarray | None,
) -> PaintedInput:
    """Seeds of one round's strokes and clicks (from :func:`check_round`) on ``geometry``'s
    grid, later input winning. ``probabilities`` (C, z, y, x), the current prediction,
    decides negative clicks."""
    painted = PaintedInput(seeds=np.full(geometry.shape_zyx, UNLABELLED, dtype=np.uint8))
    for points, stroke in checked.strokes:
        axis = stroke_axis(points)
        voxels = polyline_voxels(points)
        painted.planes |= paint(painted.seeds, voxels, 0 if axis is None else axis, stroke.radius, stroke.label)
        painted.strokes += 1
    for point, click in checked.clicks:
        label = click.label if click.positive else other_label(probabilities, point[0], click.label, num_classes)
        painted.planes |= paint(painted.seeds, point, 0, click_radius, label)
        painted.clicks += 1
    return painted


def other_label(probabilities: np.ndarray | None, zyx: np.ndarray, excluded: int, num_classes: int) -> int:
    """The most probable label at ``zyx`` other than ``excluded`` (background without a prediction)."""
    if probabilities is None:
        return 0 if excluded != 0 else 1
    z, y, x = (int(c) for c in zyx)
    scores = np.array(probabilities[:, z, y, x], dtype=np.float64)
    scores[excluded] = -np.inf
    return int(np.argmax(scores))


def labelmap_input(array: np.ndarray, geometry: Volume, num_classes: int) -> PaintedInput:
    """An uploaded scribble labelmap (z, y, x): values 0..C-1 are labels, UNLABELLED is none."""
    if tuple(array.shape) != tuple(geometry.shape_zyx):
        shape = geometry.shape_zyx
        raise BadInput(
            f"the labelmap has size (i, j, k) {list(array.shape[::-1])}, "
            f"the image has {[shape[2], shape[1], shape[0]]}"
        )
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.rint(array)):
            raise BadInput("the labelmap must hold whole numbers (labels), found fractional values")
    values = np.unique(array)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == UNLABELLED)]
    if bad:
        raise BadInput(
            f"labelmap value(s) {bad[:10]} out of range: use 0..{num_classes - 1} for labels "
            f"and {UNLABELLED} for unlabelled voxels"
        )
    seeds = array.astype(np.uint8)
    if not np.any(seeds != UNLABELLED):
        raise BadInput(f"the labelmap is empty: every voxel is {UNLABELLED} (unlabelled)")
    planes = {(0, int(z)) for z in np.flatnonzero(np.any(seeds != UNLABELLED, axis=(1, 2)))}
    return PaintedInput(seeds=seeds, planes=planes, strokes=count_strokes(seeds))


def count_strokes(seeds: np.ndarray) -> int:
    """8-connected components per label per z-slice: what a user would have drawn as strokes."""
    eight_connected = np.ones((3, 3), dtype=bool)  # a one-pixel diagonal line is one stroke
    total = 0
    for z in np.flatnonzero(np.any(seeds != UNLABELLED, axis=(1, 2))):
        plane = seeds[z]
        for label in np.unique(plane[plane != UNLABELLED]):
            _, count = ndimage.label(plane == label, structure=eight_connected)
            total += int(count)
    return total


def merge(previous: np.ndarray | None, new: np.ndarray) -> np.ndarray:
    """Cumulative seeds: the new round's labels over the earlier ones."""
    if previous is None:
        return new.copy()
    return np.where(new != UNLABELLED, new, previous).astype(np.uint8)
