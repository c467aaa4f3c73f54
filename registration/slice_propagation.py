"""Propagation of annotated slices through the neighbouring slices along one axis.

Works in the frame of one axis: ``image`` (n, h, w) is the volume with that axis moved
first, and annotations are dense 2D label maps (h, w) on some of its n slices.

1. A region of interest (ROI): the in-plane bounding box of all annotated foreground, grown
   by a margin. Only it is registered and carried.
2. Neighbouring slices of the ROI are registered with 2D demons on a coarse grid (at most
   ``working_size`` pixels a side; the demons' coarse levels only where slices lie far
   enough apart to need them); long ranges register only key slices ``max_steps`` apart.
3. Each annotation's one-hot map (on a finer "carry" grid, at most ``carry_size`` a side) is
   warped key to key, in both directions, until it meets the next annotation. Between two
   annotations the two carried maps are mixed, each weighted by the distance to its
   source and by how well its carried image still matches the slice.
4. Beyond the outermost annotation the foreground fades with distance: a structure reaches
   about as deep as it is wide (``depth_factor`` x its equivalent radius, in slices judged
   by how fast the image changes across slices), not much further than the annotator's
   own spacing (``gap_factor`` x the mean gap, when that gap is at least ``gap_limit_from``
   slices: corrections drawn on neighbouring slices say nothing about where a structure
   ends), classes seen shrinking towards the end
   keep shrinking, and (with two or more annotated slices holding foreground) a class
   whose carried region stops matching the slice fades sooner (``presence_exponent``).
5. Key slices are interpolated to every slice, smoothed a little in 3D and up-sampled to
   full resolution inside the window where any foreground remains (elsewhere the result
   is background); there, each slice's probabilities are reweighted by a per-class
   intensity model learnt from the annotated pixels, which pulls borders onto the image's
   edges and lets a class whose appearance is gone give way.
6. Foreground classes that touch without an edge between them (alike in intensity) keep
   the border the annotator drew, in the plane (``registration.class_borders``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from registration.appearance import class_intensity_model, reweight_by_intensity
from registration.class_borders import hold_invisible_borders, invisible_border_groups
from registration.labels import bounding_box, one_hot
from registration.resample import resize_field, resize_linear, shrink_mean, warp_bilinear
from registration.slice_registration import (
    DemonsSettings,
    register_slice_pairs,
    register_slice_pairs_memoised,
)


@dataclass(frozen=True)
class PropagationSettings:
    demons: DemonsSettings = field(default_factory=DemonsSettings)
    #: Largest side (pixels) of the down-sampled ROI that is registered.
    working_size: int = 64
    #: Largest side (pixels) of the grid on which label probabilities are carried.
    carry_size: int = 128
    #: ROI = bounding box of annotated foreground grown on each side by this fraction of its
    #: size (at least ``roi_margin_min`` pixels).
    roi_margin_fraction: float = 0.5
    roi_margin_min: int = 8
    #: At most this many registration steps along the axis; longer ranges use key slices.
    max_steps: int = 48
    #: Beyond the outermost annotation foreground keeps exp(-(d / scale)^2) of its weight, d
    #: in slices, scale = min(depth_factor * radius / slice step, gap_factor * mean gap)
    #: (see the module doc); carrying stops where that falls under ``min_keep``.
    depth_factor: float = 1.5
    gap_factor: float = 0.6
    #: The gap limit applies only when the annotated slices holding foreground lie at least
    #: this many slices apart on average (adjacent corrective slices would otherwise cut
    #: every structure off one slice beyond them).
    gap_limit_from: float = 2.0
    #: The area trend beyond the outermost annotation (``_area_trend``) compares it with the
    #: nearest annotated slice at least this many slices inwards (the innermost when none is):
    #: between neighbouring slices a small correction of either area reads as a steep trend.
    trend_min_gap: int = 1
    min_keep: float = 0.05
    #: Exponent of the intensity likelihood that reweights carried probabilities at full
    #: resolution (0: off).
    intensity_weight: float = 0.75
    #: Mixing between two annotations: weight = distance weight / (local mean absolute
    #: difference between carried and actual image, over ``agreement_sigma`` pixels, +
    #: ``agreement_floor``).
    agreement_sigma: float = 2.0
    agreement_floor: float = 0.02
    #: Gaussian smoothing of the result across neighbouring voxels (in-plane pixels; across
    #: slices divided by the slice step), so that slices carried independently agree.
    smoothing_sigma: float = 0.75
    #: Probability under which a carried class counts as gone when cropping the result.
    negligible: float = 1e-3
    #: Beyond the outermost annotation (when at least two annotated slices hold foreground),
    #: each class also keeps (e1 / e)^presence_exponent (capped at 1, never regained) of its
    #: weight, e = mean |carried annotated image - slice| inside the class's carried region,
    #: e1 = that at the first extrapolated key: a class whose region stops looking like the
    #: annotated one fades faster (0: off).
    presence_exponent: float = 0.5
    #: Foreground classes that touch on an annotated slice and whose intensity histograms
    #: are at least this similar (Bhattacharyya coefficient) keep the annotated border
    #: between them in the plane instead of the registered one (``registration.class_borders``;
    #: above 1: off).
    invisible_border_similarity: float = 0.9
    #: The coarse levels of ``demons`` register only key slices at least this many in-plane
    #: pixels apart (slice step x key stride): between thin slices structures move less than
    #: a pixel, and a coarse level only drifts (hippocampus train, 1-mm slices, mask K = 1:
    #: 0.747 with it, 0.759 without; ACDC is unaffected).
    coarse_min_step: float = 1.5
    #: Reuse the fields of slice pairs registered recently in this process
    #: (``register_slice_pairs_memoised``): the rounds of a session register the same pairs
    #: again. Off by default so that benchmarks timing repeated propagations time the work.
    memoise_fields: bool = False
    #: The ROI's corners snap outwards to a grid of this share of the plane's shorter side
    #: (0: off), so that the ROI of a session's rounds changes less often and their memoised
    #: fields are reused.
    roi_grid_fraction: float = 0.0


@dataclass
class AxisProxy:
    """The result along one axis: background everywhere except inside ``box``.

    box: (slices, rows, cols) of the (n, h, w) frame; probabilities: float32 (C, *box shape);
    confidence: float32 (n,) per slice, 1 / (1 + distance to the nearest annotated slice).
    """

    box: tuple[slice, slice, slice]
    probabilities: np.ndarray
    confidence: np.ndarray


def slice_confidence(length: int, annotated: list[int]) -> np.ndarray:
    """float32 (length,) w = 1 / (1 + distance in slices to the nearest annotated slice)."""
    positions = np.arange(length)[:, None]
    distance = np.abs(positions - np.asarray(sorted(annotated))[None, :]).min(axis=1)
    return (1.0 / (1.0 + distance)).astype(np.float32)


def roi_box(
    box: tuple[int, int, int, int], shape: tuple[int, int], settings: PropagationSettings
) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1), ends exclusive: the ROI of annotated foreground ``box`` on a plane of
    ``shape``, grown by the settings' margin and snapped outwards to their grid."""
    y0, x0, y1, x1 = box
    my = max(settings.roi_margin_min, math.ceil(settings.roi_margin_fraction * (y1 - y0)))
    mx = max(settings.roi_margin_min, math.ceil(settings.roi_margin_fraction * (x1 - x0)))
    y0, x0, y1, x1 = max(0, y0 - my), max(0, x0 - mx), min(shape[0], y1 + my), min(shape[1], x1 + mx)
    grid = max(1, round(settings.roi_grid_fraction * min(shape)))
    return (
        y0 // grid * grid, x0 // grid * grid,
        min(shape[0], -(-y1 // grid) * grid), min(shape[1], -(-x1 // grid) * grid),
    )


def slice_step(image: np.ndarray, spacing: tuple[float, float, float], samples: int = 32) -> float:
    """Distance between neighbouring slices of ``image`` (n, h, w), in in-plane pixels: the
    larger of the physical ratio and how much faster the image changes across slices than
    along rows and columns (mean absolute differences), so that data whose spacing was lost
    (written as 1, 1, 1) is still judged by what it shows."""
    physical = spacing[0] / math.sqrt(spacing[1] * spacing[2])
    n = image.shape[0]
    if n < 2 or min(image.shape[1:]) < 2:
        return physical
    starts = np.unique(np.linspace(0, n - 2, min(samples, n - 1)).round().astype(int))
    across = float(np.abs(image[starts + 1] - image[starts]).mean())
    within = 0.5 * float(
        np.abs(np.diff(image[starts], axis=1)).mean() + np.abs(np.diff(image[starts], axis=2)).mean()
    )
    return max(physical, across / within if within > 0 else 1.0)


def demons_for_distance(settings: PropagationSettings, distance: float) -> DemonsSettings:
    """The demons settings for slices ``distance`` in-plane pixels apart: without the coarse
    levels below ``settings.coarse_min_step``."""
    demons = settings.demons
    if distance >= settings.coarse_min_step:
        return demons
    return replace(demons, iterations=(0,) * (len(demons.iterations) - 1) + demons.iterations[-1:])


def _fade_scale(
    foreground: np.ndarray, with_foreground: list[int], step: float, settings: PropagationSettings
) -> float:
    """Distance (slices) over which carried foreground fades beyond the outermost annotation."""
    radius = math.sqrt(foreground.sum() / math.pi)
    scale = max(settings.depth_factor * radius / max(step, 1e-6), 0.5)
    if len(with_foreground) > 1:
        gap = (with_foreground[-1] - with_foreground[0]) / (len(with_foreground) - 1)
        if gap >= settings.gap_limit_from:
            scale = min(scale, max(settings.gap_factor * gap, 0.5))
    return scale


def _area_trend(
    order: list[int], labels_by_index: dict[int, np.ndarray], num_classes: int, min_gap: int = 1
) -> np.ndarray:
    """(C - 1,) per-slice area factor of each class towards the outermost annotated slice
    ``order[-1]`` (``order[-2]`` is the next one inwards) from the nearest annotated slice at
    least ``min_gap`` slices inwards (the innermost when none is), capped at 1: a class seen
    shrinking outwards keeps shrinking beyond the last annotation."""
    trend = np.ones(num_classes - 1, dtype=np.float64)
    if len(order) < 2:
        return trend
    inner_index = next((i for i in reversed(order[:-1]) if abs(order[-1] - i) >= min_gap), order[0])
    outer, inner = labels_by_index[order[-1]], labels_by_index[inner_index]
    gap = abs(order[-1] - inner_index)
    for cls in range(1, num_classes):
        inner_area = int(np.count_nonzero(inner == cls))
        if inner_area:
            ratio = np.count_nonzero(outer == cls) / inner_area
            trend[cls - 1] = min(1.0, ratio ** (1.0 / gap))
    return trend


def _fade_foreground(probabilities: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Move (1 - keep[c - 1]) of each foreground class c's probability (C, h, w) to background."""
    out = probabilities.copy()
    out[1:] *= np.asarray(keep, dtype=np.float32)[:, None, None]
    out[0] = 1.0 - out[1:].sum(axis=0)
    return out


def _key_slices(annotated: list[int], low: int, high: int, max_steps: int) -> list[int]:
    stride = max(1, math.ceil((high - low) / max(1, max_steps)))
    keys = set(annotated) | {low, high} | set(range(low, high + 1, stride))
    return sorted(k for k in keys if low <= k <= high)


def _background_only(n: int, annotated: list[int]) -> AxisProxy:
    empty = (slice(0, 0), slice(0, 0), slice(0, 0))
    return AxisProxy(empty, np.zeros((1, 0, 0, 0), dtype=np.float32), slice_confidence(n, annotated))


def propagate_axis(
    image: np.ndarray,
    labels_by_index: dict[int, np.ndarray],
    num_classes: int,
    spacing: tuple[float, float, float],
    settings: PropagationSettings,
) -> AxisProxy:
    """``image``: normalised float32 (n, h, w), the annotated axis first; ``labels_by_index``:
    slice index -> dense int labels (h, w) in 0..C-1; ``spacing`` in the same axis order."""
    n, h, w = image.shape
    annotated = sorted(labels_by_index)
    confidence = slice_confidence(n, annotated)
    foreground = [labels_by_index[i] > 0 for i in annotated]
    box = bounding_box(np.logical_or.reduce(foreground))
    if box is None:  # only background was annotated along this axis
        return _background_only(n, annotated)
    y0, x0, y1, x1 = roi_box(box, (h, w), settings)
    roi_side = max(y1 - y0, x1 - x0)
    reg_factor = max(1, math.ceil(roi_side / settings.working_size))
    carry_factor = max(1, math.ceil(roi_side / settings.carry_size))

    # How far beyond the outermost annotations a structure may still be carried.
    with_foreground = [i for i, fg in zip(annotated, foreground, strict=True) if fg.any()]
    step = slice_step(image[:, y0:y1, x0:x1], spacing)
    ends = {"low": with_foreground[::-1], "high": with_foreground}  # outermost last
    scales = {
        side: _fade_scale(foreground[annotated.index(order[-1])], with_foreground, step, settings)
        for side, order in ends.items()
    }
    trends = {
        side: _area_trend(order, labels_by_index, num_classes, settings.trend_min_gap)
        for side, order in ends.items()
    }
    reach = {side: scale * math.sqrt(-math.log(settings.min_keep)) for side, scale in scales.items()}
    low, high = annotated[0], annotated[-1]
    if with_foreground[0] == low:
        low = max(0, low - math.ceil(reach["low"]))
    if with_foreground[-1] == high:
        high = min(n - 1, high + math.ceil(reach["high"]))
    keys = _key_slices(annotated, low, high, settings.max_steps)
    pos = {k: j for j, k in enumerate(keys)}

    # Pad the ROI to a multiple of both factors so that both grids share one field of view.
    multiple = math.lcm(reg_factor, carry_factor)
    pad_y, pad_x = -(y1 - y0) % multiple, -(x1 - x0) % multiple

    def roi(array: np.ndarray) -> np.ndarray:
        cut = array[..., y0:y1, x0:x1]
        if not (pad_y or pad_x):
            return cut
        return np.pad(cut, [(0, 0)] * (cut.ndim - 2) + [(0, pad_y), (0, pad_x)], mode="edge")

    roi_stack = roi(image[keys])
    images = shrink_mean(roi_stack, carry_factor)  # (K, h', w') on the carry grid
    seeds = {i: shrink_mean(one_hot(roi(labels_by_index[i]), num_classes), carry_factor) for i in annotated}
    model = None
    hold_borders = settings.invisible_border_similarity <= 1 and num_classes > 2
    if settings.intensity_weight > 0 or hold_borders:  # from the annotated ROI pixels, full resolution
        model = class_intensity_model(
            image[annotated, y0:y1, x0:x1],
            np.stack([one_hot(labels_by_index[i][y0:y1, x0:x1], num_classes) for i in annotated], axis=1),
        )

    # Register each neighbouring key pair in the direction(s) labels will travel.
    forward_pairs = [j for j in range(len(keys) - 1) if keys[j] >= annotated[0]]
    backward_pairs = [j for j in range(len(keys) - 1) if keys[j + 1] <= annotated[-1]]
    coarse = shrink_mean(roi_stack, reg_factor)
    key_distance = step * (int(np.diff(keys).max()) if len(keys) > 1 else 1)
    register = register_slice_pairs_memoised if settings.memoise_fields else register_slice_pairs
    fields = register(
        coarse[[j + 1 for j in forward_pairs] + backward_pairs],
        coarse[forward_pairs + [j + 1 for j in backward_pairs]],
        demons_for_distance(settings, key_distance),
    )
    fields = resize_field(fields, *images.shape[1:])
    forward = dict(zip(forward_pairs, fields[: len(forward_pairs)], strict=True))
    backward = dict(zip(backward_pairs, fields[len(forward_pairs) :], strict=True))

    def carry(start: int, stop: int) -> dict[int, np.ndarray]:
        """(C + 1, h', w') maps carried from key ``start`` to each key up to ``stop``
        (exclusive): the class probabilities and, last, the annotated image itself."""
        out = {}
        current = np.concatenate([seeds[keys[start]], images[start][None]])
        direction = 1 if stop > start else -1
        for j in range(start + direction, stop, direction):
            current = warp_bilinear(current, forward[j - 1] if direction == 1 else backward[j])
            out[j] = current
        return out

    def agreement(carried: np.ndarray, j: int) -> np.ndarray:
        error = ndimage.gaussian_filter(np.abs(carried[-1] - images[j]), settings.agreement_sigma)
        return 1.0 / (error + settings.agreement_floor)

    working = np.empty((num_classes, len(keys)) + images.shape[1:], dtype=np.float32)
    for i in annotated:
        working[:, pos[i]] = seeds[i]
    for left, right in zip(annotated[:-1], annotated[1:], strict=True):
        from_left = carry(pos[left], pos[right])
        from_right = carry(pos[right], pos[left])
        for j in range(pos[left] + 1, pos[right]):
            w_left = (right - keys[j]) * agreement(from_left[j], j)
            w_right = (keys[j] - left) * agreement(from_right[j], j)
            mixed = w_left * from_left[j][:-1] + w_right * from_right[j][:-1]
            working[:, j] = mixed / (w_left + w_right)
    fades: dict[int, np.ndarray] = {}
    test_presence = settings.presence_exponent > 0 and len(with_foreground) > 1
    for start, stop, side in ((annotated[0], -1, "low"), (annotated[-1], len(keys), "high")):
        first_error, presence = None, np.ones(num_classes - 1)
        for j, maps in carry(pos[start], stop).items():
            working[:, j] = maps[:-1]
            distance = abs(keys[j] - start)
            fades[j] = math.exp(-((distance / scales[side]) ** 2)) * trends[side] ** distance
            if test_presence:  # does each carried class region still look like the annotation?
                weights = maps[1:-1]
                error = (weights * np.abs(maps[-1] - images[j])).sum(axis=(1, 2))
                error /= weights.sum(axis=(1, 2)) + 1e-6
                first_error = error if first_error is None else first_error
                ratio = np.minimum(1.0, first_error / np.maximum(error, 1e-6))
                presence = np.minimum(presence, ratio**settings.presence_exponent)
                fades[j] = fades[j] * presence
    for j, keep in fades.items():
        working[:, j] = _fade_foreground(working[:, j], keep)

    # Every slice of the range: linear mix of its two neighbouring keys.
    key_array = np.asarray(keys)
    span = np.arange(low, high + 1)
    after = np.clip(np.searchsorted(key_array, span, side="left"), 0, len(keys) - 1)
    before = np.where(key_array[after] == span, after, after - 1)
    t = ((span - key_array[before]) / np.maximum(key_array[after] - key_array[before], 1)).astype(np.float32)

    # Up-sample only the window where foreground remains (interpolation keeps sums at one).
    present = bounding_box((1.0 - working[0] > settings.negligible).any(axis=0))
    if present is None:
        return _background_only(n, annotated)
    r0, c0, r1, c1 = present
    rows = slice(max(0, (r0 - 1) * carry_factor), min(y1 - y0, (r1 + 1) * carry_factor))
    cols = slice(max(0, (c0 - 1) * carry_factor), min(x1 - x0, (c1 + 1) * carry_factor))
    dense = (1 - t)[None, :, None, None] * working[:, before] + t[None, :, None, None] * working[:, after]
    if settings.smoothing_sigma > 0:
        in_plane = settings.smoothing_sigma / carry_factor
        sigma = (0.0, settings.smoothing_sigma / step, in_plane, in_plane)
        dense = ndimage.gaussian_filter(dense, sigma, mode="nearest", truncate=3.0)
    full_size = (y1 - y0 + pad_y, x1 - x0 + pad_x)
    probabilities = resize_linear(dense, *full_size, rows=rows, cols=cols)
    if settings.intensity_weight > 0:  # judge carried labels by the full-resolution image
        region = image[low : high + 1, y0:y1, x0:x1][:, rows, cols]
        for offset in range(probabilities.shape[1]):
            if low + offset not in labels_by_index:
                probabilities[:, offset] = reweight_by_intensity(
                    probabilities[:, offset], region[offset], model, settings.intensity_weight
                )
    in_window = {i - low: labels_by_index[i][y0:y1, x0:x1][rows, cols] for i in annotated}
    if hold_borders:
        groups = invisible_border_groups(model, list(in_window.values()), settings.invisible_border_similarity)
        hold_invisible_borders(probabilities, in_window, groups)
    for offset, labels in in_window.items():  # the annotation itself, at full resolution
        probabilities[:, offset] = one_hot(labels, num_classes)
    box = (
        slice(low, high + 1),
        slice(y0 + rows.start, y0 + rows.stop),
        slice(x0 + cols.start, x0 + cols.stop),
    )
    return AxisProxy(box, probabilities, confidence)
