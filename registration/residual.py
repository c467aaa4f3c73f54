"""Where the current answer is probably wrong, and where to ask the user next.

The error estimate of a round, E (z, y, x) in [0, 1], is a noisy-or of three signs of error:

    E = 1 - (1 - H) * (1 - X) * (1 - D)

- H: normalised entropy of the fused answer, i.e. where its classes compete. The proxy's
  probabilities are one-hot on annotated planes and soften with the distance from them
  (where the annotations carried from both sides disagree, and where a structure fades out
  beyond the outermost annotation), so H is the proxy's own "unsure, far from the
  annotations" along the borders of the structures; empty regions stay at 0.
- X: the structures may continue beyond the last plane (along the annotated axis) where the
  answer still holds foreground: on the planes past it, that plane's foreground footprint
  times exp(-(s / r)^2) (s the physical distance to it, r the structures' in-plane radius),
  times (1 - proxy confidence) and the proxy's share of the answer (1 - a, a below). Once
  the proxy has faded a structure out its entropy there is 0, yet the structure may well
  go on: that is where the next error hides.
- D: where the model's and the proxy's most likely classes differ, the chance that the
  side the answer did not follow is the right one: t_loser / (t_proxy + t_model), with
  t_model = m (1 - H_model) (m the model's reliability) and t_proxy = (1 - m) * proxy
  confidence (a model that matches what the user drew on this image is believed over the
  proxy carried from a few slices). Next to the annotations a trusted model that disagrees
  makes the (proxy's) answer doubtful; far from them, where the model decided, the
  proxy's disagreement matters little.

With a model in the fusion (reliability m > 0), H is the entropy of the side the answer
follows (the product of both where they agree: both must be unsure), and X is scaled by
the proxy's share of the answer, 1 - a (a = ``registration.fusion.model_share``); with m = 0
the answer is the proxy and H is its entropy. (With the truth as the model, the entropy of
the fused mixture and D weighted by (1 - confidence) flagged the far slices where the model
had already put the answer right: 0 wrong voxels on every suggested ACDC slice.)

E no longer peaks where the user just drew (as |fused - model| did): an annotated plane's
proxy is one-hot, so only a trusted model that disagrees with it there raises E on it. The suggestion is the plane, along the axis the user annotates,
with the most E on it and, at ``NEIGHBOUR_SHARES``, on the undrawn planes beside it (a
correction is carried to them) among the planes not drawn yet on that axis, and on it the
structure-sized region of E (see ``suggest_next_interaction``). Drawn neighbours do not
count: a trusted model that disagrees with a drawn plane raises E there, and counting it
drew the suggestions into the cluster of drawn planes (hippocampus val, 20 volumes x 10
rounds, noisy model: final Dice 0.824 counting them, 0.846 not). Arrays are (z, y, x),
probabilities (C, z, y, x).

Measured with ``python -m clients.bench_rounds --data ../shared/data/acdc/val --limit 6
--rounds 4 --model M`` (the corrective annotator on the suggested slices, no server): wrong
voxels on the slice suggested for the next round / on a random undrawn one / on the worst
undrawn one, uniform model 921 / 739 / 1333, truth as the model 717 / 145 / 724, noisy
truth 1282 / 777 / 1406. (While exploring, a term (1 - confidence) * closeness to the
foreground in place of X pointed at far slices where the proxy was right, doing worse than a
random slice, and blurring the answer by the distance from the annotations before taking
its entropy changed nothing that counts.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from registration.fusion import model_share, normalized_entropy
from registration.labels import class_argmax

#: Reliability the model needs at open (no annotations yet) before its uncertainty, not the
#: centre of the volume, says where to start.
OPEN_MIN_RELIABILITY = 0.5

#: A correction on one plane is carried to the planes beside it (``registration.propagate``),
#: so a plane's score as the next suggestion is its own error plus these shares of the error
#: on the undrawn planes 1, 2, ... away from it along the axis: the planes with the most error
#: around them, not only on them.
NEIGHBOUR_SHARES = (0.5,)


@dataclass(frozen=True)
class Suggestion:
    """Where to look next, in array indices (z, y, x).

    axis/slice: the plane to annotate; bbox_zyx: (z0, y0, x0, z1, y1, x1), ends exclusive,
    the region on that plane (one voxel thick along ``axis``); centroid_zyx: its E-weighted
    centre; score: the error estimate's mass in the region (sum of E, ~ expected wrong voxels).
    """

    axis: int
    slice: int
    bbox_zyx: tuple[int, int, int, int, int, int]
    centroid_zyx: tuple[float, float, float]
    score: float

    def to_dict(self) -> dict:
        return {
            "axis": self.axis,
            "slice": self.slice,
            "bbox_zyx": list(self.bbox_zyx),
            "centroid_zyx": list(self.centroid_zyx),
            "score": self.score,
        }


def _spacing(spacing_zyx: Sequence[float] | None) -> tuple[float, float, float]:
    return tuple(float(s) for s in (spacing_zyx if spacing_zyx is not None else (1.0, 1.0, 1.0)))  # type: ignore[return-value]


def annotation_axis(planes: Iterable[tuple[int, int]], default: int = 0) -> int:
    """The axis most drawn planes lie on (ties: the lower axis); ``default`` when none."""
    counts = np.bincount([int(a) for a, _ in planes], minlength=3)
    return int(np.argmax(counts)) if counts.sum() else default


def structure_radius(foreground: np.ndarray, axis: int, spacing_zyx: Sequence[float] | None = None) -> float:
    """Physical in-plane radius of the structures: that of a disc with the largest foreground
    area of a slice along ``axis``; an eighth of the slice's extent when there is none."""
    spacing = _spacing(spacing_zyx)
    in_plane = [i for i in range(3) if i != axis]
    pixel_area = spacing[in_plane[0]] * spacing[in_plane[1]]
    areas = np.moveaxis(foreground, axis, 0).sum(axis=(1, 2))
    if areas.max() == 0:
        return 0.125 * min(foreground.shape[i] * spacing[i] for i in in_plane)
    return float(np.sqrt(areas.max() * pixel_area / np.pi))


def continuation(foreground: np.ndarray, axis: int, axis_spacing: float, radius: float) -> np.ndarray:
    """float32 (z, y, x) in [0, 1]: on the planes along ``axis`` past the first and the last
    plane holding ``foreground``, that end plane's footprint times exp(-(s / radius)^2), s the
    physical distance to it; 0 elsewhere."""
    moved = np.moveaxis(np.asarray(foreground, dtype=bool), axis, 0)
    out = np.zeros(moved.shape, dtype=np.float32)
    present = np.flatnonzero(moved.any(axis=(1, 2)))
    if present.size:
        low, high = int(present[0]), int(present[-1])
        steps = np.arange(1, moved.shape[0], dtype=np.float32)
        decay = np.exp(-np.square(steps * axis_spacing / max(radius, 1e-6)))
        for step, factor in zip(range(1, moved.shape[0]), decay, strict=True):
            if high + step < moved.shape[0]:
                out[high + step] = factor * moved[high]
            if low - step >= 0:
                out[low - step] = factor * moved[low]
    return np.moveaxis(out, 0, axis)


def error_estimate(
    fused_probabilities: np.ndarray,
    confidence: np.ndarray,
    proxy_probabilities: np.ndarray,
    model_probabilities: np.ndarray,
    model_weight: float,
    axis: int = 0,
    spacing_zyx: Sequence[float] | None = None,
    radius: float | None = None,
) -> np.ndarray:
    """E, float32 (z, y, x) in [0, 1]: the module docstring's estimate of where the fused
    answer is wrong. ``confidence``: the proxy's (z, y, x) confidence; ``model_weight``: the
    model's reliability (``registration.fusion.model_reliability``); ``axis``: the axis the
    user annotates; ``radius``: the structures' physical radius (default ``structure_radius``)."""
    fused = np.asarray(fused_probabilities, dtype=np.float32)
    if fused.ndim != 4 or np.shape(confidence) != fused.shape[1:]:
        raise ValueError(f"fused probabilities {fused.shape} do not match confidence {np.shape(confidence)}")
    far = 1.0 - np.clip(np.asarray(confidence, dtype=np.float32), 0.0, 1.0)
    foreground = fused[0] < 0.5
    if radius is None:
        radius = structure_radius(foreground, axis, spacing_zyx)
    if model_weight <= 0.0:  # the answer is the proxy's
        keep = 1.0 - normalized_entropy(fused)
        keep *= 1.0 - far * continuation(foreground, axis, _spacing(spacing_zyx)[axis], radius)
        return np.clip(1.0 - keep, 0.0, 1.0).astype(np.float32)
    model = np.asarray(model_probabilities, dtype=np.float32)
    proxy = np.asarray(proxy_probabilities, dtype=np.float32)
    entropy_proxy, entropy_model = normalized_entropy(proxy), normalized_entropy(model)
    proxy_part = 1.0 - model_share(confidence, model, model_weight, model_entropy=entropy_model)
    answer, model_labels, proxy_labels = (class_argmax(p) for p in (fused, model, proxy))
    follows_model = answer == model_labels
    follows_proxy = answer == proxy_labels
    entropy = np.where(follows_model, entropy_model, entropy_proxy)
    entropy[follows_model & follows_proxy] = (entropy_proxy * entropy_model)[follows_model & follows_proxy]
    keep = 1.0 - entropy
    keep *= 1.0 - proxy_part * far * continuation(foreground, axis, _spacing(spacing_zyx)[axis], radius)
    proxy_trust = (1.0 - far) * (1.0 - model_weight)
    model_trust = model_weight * (1.0 - entropy_model)
    losing_trust = np.where(follows_model, proxy_trust, model_trust)
    wrong_if_split = losing_trust / np.maximum(proxy_trust + model_trust, 1e-6)
    disagree = model_labels != proxy_labels
    keep *= 1.0 - np.where(disagree, wrong_if_split, 0.0)
    return np.clip(1.0 - keep, 0.0, 1.0).astype(np.float32)


def round_residual(
    fused_probabilities: np.ndarray,
    confidence: np.ndarray,
    proxy_probabilities: np.ndarray,
    model_probabilities: np.ndarray,
    model_weight: float,
    planes: Iterable[tuple[int, int]],
    spacing_zyx: Sequence[float] | None = None,
) -> tuple[np.ndarray, Suggestion | None]:
    """(E, the next suggestion) of a round: ``error_estimate`` and, along the axis the user
    annotates, ``suggest_next_interaction`` with a window of the structures' radius."""
    planes = {(int(a), int(i)) for a, i in planes}
    axis = annotation_axis(planes)
    fused = np.asarray(fused_probabilities, dtype=np.float32)
    radius = structure_radius(fused[0] < 0.5, axis, spacing_zyx)
    error = error_estimate(
        fused, confidence, proxy_probabilities, model_probabilities, model_weight, axis, spacing_zyx, radius
    )
    spacing = _spacing(spacing_zyx)
    in_plane_spacing = float(np.mean([spacing[i] for i in range(3) if i != axis]))
    return error, suggest_next_interaction(error, planes, axis=axis, radius_voxels=radius / in_plane_spacing)


def suggest_next_interaction(
    error_zyx: np.ndarray,
    drawn_planes: Iterable[tuple[int, int]] = (),
    *,
    axis: int | None = None,
    radius_voxels: float | None = None,
) -> Suggestion | None:
    """The undrawn plane holding the most error ``error_zyx`` and the region on it to look at.

    ``drawn_planes``: (axis, index) of planes already drawn: never suggested again.
    ``axis``: the axis to suggest along (default: the one most drawn planes lie on, z when
    none); if every plane of it is drawn or error-free, the other axes are tried. A plane's
    score is its error plus ``NEIGHBOUR_SHARES`` of its undrawn neighbours'. On the
    chosen plane the error is smoothed over a structure-sized window (``radius_voxels``,
    default an eighth of the plane's shorter side) and the region is the connected part of
    the smoothed error above half its peak that holds the peak. None when no undrawn plane
    holds any error.
    """
    error = np.asarray(error_zyx, dtype=np.float32)
    if error.ndim != 3:
        raise ValueError(f"expected a (z, y, x) error map, got shape {error.shape}")
    drawn = {(int(a), int(i)) for a, i in drawn_planes}
    first = annotation_axis(drawn) if axis is None else int(axis)
    if first not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    for candidate in [first] + [a for a in range(3) if a != first]:
        per_slice = np.moveaxis(error, candidate, 0).sum(axis=(1, 2)).astype(np.float64)
        undrawn = np.array([(candidate, i) not in drawn for i in range(per_slice.size)])
        score = neighbourhood_error(np.where(undrawn, per_slice, 0.0))
        score[~undrawn | (per_slice <= 0.0)] = -1.0  # only planes holding error themselves
        best = int(np.argmax(score))
        if score[best] > 0.0:
            return _region_on_plane(error, candidate, best, radius_voxels)
    return None


def neighbourhood_error(per_slice: np.ndarray) -> np.ndarray:
    """Each plane's error plus ``NEIGHBOUR_SHARES`` of its neighbours' (float64, same length)."""
    kernel = np.concatenate([NEIGHBOUR_SHARES[::-1], [1.0], NEIGHBOUR_SHARES])
    return ndimage.correlate1d(np.asarray(per_slice, dtype=np.float64), kernel, mode="constant")


def _region_on_plane(error: np.ndarray, axis: int, index: int, radius_voxels: float | None) -> Suggestion:
    plane = np.take(error, index, axis=axis)
    radius = radius_voxels if radius_voxels is not None else min(plane.shape) / 8.0
    window = max(1, int(round(radius)))
    smoothed = ndimage.uniform_filter(plane, size=2 * window + 1, mode="constant")
    peak = np.unravel_index(int(np.argmax(smoothed)), plane.shape)
    components, _count = ndimage.label(smoothed >= 0.5 * smoothed[peak])
    region = components == components[peak]
    rows, cols = np.nonzero(region)
    weights = plane[rows, cols].astype(np.float64)
    total = float(weights.sum())
    if total <= 0.0:  # the window spread error onto voxels holding none: centre them equally
        weights = np.ones_like(weights)
    in_plane = [i for i in range(3) if i != axis]
    low = [0, 0, 0]
    high = [0, 0, 0]
    centroid = [0.0, 0.0, 0.0]
    low[axis], high[axis], centroid[axis] = index, index + 1, float(index)
    for dim, coords in zip(in_plane, (rows, cols), strict=True):
        low[dim], high[dim] = int(coords.min()), int(coords.max()) + 1
        centroid[dim] = float((coords * weights).sum() / weights.sum())
    return Suggestion(
        axis=int(axis),
        slice=int(index),
        bbox_zyx=tuple(low + high),  # type: ignore[arg-type]
        centroid_zyx=tuple(centroid),  # type: ignore[arg-type]
        score=total,
    )


def opening_suggestion(
    model_probabilities: np.ndarray,
    reliability: float,
    axis: int = 0,
    spacing_zyx: Sequence[float] | None = None,
) -> Suggestion:
    """Where to start on an image with no annotation yet.

    A model with ``reliability`` >= OPEN_MIN_RELIABILITY: its most uncertain region (E = its
    normalised entropy, in a window of the radius of the structures it sees). Otherwise (an
    untrained or unvalidated model) nothing is known: the centre slice along ``axis``, its
    middle half as the region.
    """
    model = np.asarray(model_probabilities, dtype=np.float32)
    if model.ndim != 4:
        raise ValueError(f"expected (C, z, y, x) probabilities, got shape {model.shape}")
    shape = model.shape[1:]
    if reliability >= OPEN_MIN_RELIABILITY:
        foreground = model[0] < 0.5
        radius = structure_radius(foreground, axis, spacing_zyx)
        error = normalized_entropy(model)
        spacing = _spacing(spacing_zyx)
        in_plane_spacing = float(np.mean([spacing[i] for i in range(3) if i != axis]))
        suggestion = suggest_next_interaction(error, axis=axis, radius_voxels=radius / in_plane_spacing)
        if suggestion is not None:
            return suggestion
    index = shape[axis] // 2
    low = [s // 4 for s in shape]
    high = [s - s // 4 for s in shape]
    low[axis], high[axis] = index, index + 1
    centroid = [0.5 * (lo + hi - 1) for lo, hi in zip(low, high, strict=True)]
    centroid[axis] = float(index)
    return Suggestion(axis, index, tuple(low + high), tuple(centroid), 0.0)  # type: ignore[arg-type]
