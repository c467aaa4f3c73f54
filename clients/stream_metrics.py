"""Pure measures of the interactive stream benchmark (``scribbleflow bench stream``).

Arrays in, numbers out: no HTTP, files or models here (the driving loop is
``clients/bench_stream.py``). Arrays are (z, y, x); ``axis`` picks the slicing axis.

Definitions (one place for each):

- effort reduction (SPEC): ground-truth boundary pixels on the slices the user touched,
  against boundary pixels on every slice along the annotation axis (full annotation):
  ``100 * (1 - touched / full)``.
- stroke-voxel ratio: voxels the user drew against the full annotation's boundary pixels.
- suggestion hit: the suggested slice holds at least ``hit_threshold`` wrong voxels of the
  answer the user was looking at; its baseline is the share of the slices not drawn yet
  (on the same axis) that do — the chance that a random undrawn slice is a hit.
- forgetting: per early image, Dice right after the model learned it minus Dice of the
  final model on it, averaged.
- a round that lowered the answer: its Dice more than ``DROP_TOLERANCE`` below the Dice of
  the answer it corrected (for the first round, the opening the user was shown).
- gate error: a promoted version whose holdout Dice is below the version it replaced
  (the serving one when it was gated) by more than the tolerance.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

import numpy as np
from skimage.segmentation import find_boundaries

#: A slice is a suggestion "hit" when at least this fraction of its pixels is wrong (and at
#: least one pixel): small enough for thin structures, large enough to ignore a stray voxel.
HIT_ERROR_FRACTION = 0.001

#: The keys of the summary, in the order the issue lists them.
SUMMARY_KEYS = (
    "volumes",
    "reached_target",
    "mean_final_dice",
    "mean_effort_reduction_pct",
    "effort_first_third",
    "effort_last_third",
    "fused_minus_proxy_dice",
    "suggestion_hit_rate",
    "random_slice_hit_rate",
    "round_latency_p50_s",
    "round_latency_p95_s",
    "annotation_to_model_p95_s",
    "online_holdout_dice",
    "offline_holdout_dice",
    "forgetting",
)


def boundary_pixels_per_slice(truth_zyx: np.ndarray, axis: int) -> np.ndarray:
    """Ground-truth boundary pixels of every slice along ``axis`` (int64, one per slice).

    A boundary pixel is a foreground pixel with a 4-neighbour of another label in its slice
    (as ``learner.scribbles.boundary_effort`` counts them)."""
    moved = np.moveaxis(np.asarray(truth_zyx), axis, 0)
    return np.array(
        [int((find_boundaries(s, connectivity=1, mode="inner") & (s > 0)).sum()) for s in moved], dtype=np.int64
    )


def touched_boundary_pixels(truth_zyx: np.ndarray, touched: Iterable[tuple[int, int]]) -> int:
    """Boundary pixels on the touched (axis, slice) planes, each plane counted once."""
    per_axis: dict[int, np.ndarray] = {}
    total = 0
    for axis, index in sorted(set(touched)):
        if axis not in per_axis:
            per_axis[axis] = boundary_pixels_per_slice(truth_zyx, axis)
        total += int(per_axis[axis][index])
    return total


def effort_reduction_pct(touched_boundary: int, full_boundary: int) -> float | None:
    """100 * (1 - touched / full); None when the truth has no boundary at all."""
    if full_boundary <= 0:
        return None
    return 100.0 * (1.0 - touched_boundary / full_boundary)


def stroke_voxel_ratio(stroke_voxels: int, full_boundary: int) -> float | None:
    """Drawn voxels per boundary pixel of a full annotation; None without a boundary."""
    if full_boundary <= 0:
        return None
    return stroke_voxels / full_boundary


def errors_per_slice(segmentation_zyx: np.ndarray, truth_zyx: np.ndarray, axis: int) -> np.ndarray:
    """Wrong voxels of ``segmentation`` against ``truth`` on every slice along ``axis``."""
    segmentation, truth = np.asarray(segmentation_zyx), np.asarray(truth_zyx)
    if segmentation.shape != truth.shape:
        raise ValueError(f"segmentation {segmentation.shape} and truth {truth.shape} differ in shape")
    wrong = segmentation.astype(np.int64) != truth.astype(np.int64)
    other = tuple(a for a in range(3) if a != axis)
    return wrong.sum(axis=other).astype(np.int64)


def hit_threshold(slice_pixels: int) -> int:
    """Wrong voxels a slice of ``slice_pixels`` pixels needs to count as a hit."""
    return max(1, math.ceil(HIT_ERROR_FRACTION * slice_pixels))


def suggestion_outcome(
    errors: np.ndarray, suggested: int, drawn: Iterable[int], slice_pixels: int
) -> dict:
    """How the suggested slice compares with a random undrawn slice (same axis).

    ``errors``: wrong voxels per slice along the suggestion's axis; ``drawn``: slices drawn
    on that axis before the suggestion. Returns the suggested slice's error voxels and hit,
    the mean error voxels of the undrawn slices and the share of them that are hits (None
    when every slice was drawn)."""
    errors = np.asarray(errors, dtype=np.int64)
    threshold = hit_threshold(slice_pixels)
    undrawn = np.setdiff1d(np.arange(len(errors)), np.fromiter(drawn, dtype=np.int64, count=-1))
    return {
        "suggested_error_voxels": int(errors[suggested]),
        "suggested_hit": bool(errors[suggested] >= threshold),
        "suggested_was_drawn": bool(suggested not in set(undrawn.tolist())),
        "random_error_voxels": float(errors[undrawn].mean()) if undrawn.size else None,
        "random_hit_rate": float((errors[undrawn] >= threshold).mean()) if undrawn.size else None,
        "hit_threshold": threshold,
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), None for no values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else None


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None, None if there are none."""
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def thirds(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Means of the first and the last third (rounded up) of a stream-ordered sequence."""
    if not values:
        return None, None
    size = max(1, math.ceil(len(values) / 3))
    return mean(values[:size]), mean(values[-size:])


#: A round "lowers" the answer when its Dice falls by more than this below the answer it corrected.
DROP_TOLERANCE = 0.005


def lowered(dice_before: float, dice_after: float) -> bool:
    """The round took the answer from ``dice_before`` to more than DROP_TOLERANCE below it."""
    return dice_after < dice_before - DROP_TOLERANCE


def rounds_lowering(opening_dice: float, round_dice: Sequence[float]) -> tuple[bool, int]:
    """(the first round lowered the opening's Dice, how many later rounds lowered the Dice of
    the round before) for one image's rounds in order."""
    if not round_dice:
        return False, 0
    later = sum(lowered(before, after) for before, after in zip(round_dice, round_dice[1:], strict=False))
    return lowered(opening_dice, round_dice[0]), int(later)


def first_fifth(count: int) -> int:
    """How many images make the first fifth of a stream of ``count`` (at least one)."""
    return max(1, round(count / 5)) if count else 0


def forgetting(after_learned: Mapping[str, float], at_end: Mapping[str, float]) -> float | None:
    """Mean over the images in both of (Dice right after learning - Dice at the end)."""
    common = sorted(set(after_learned) & set(at_end))
    return mean(after_learned[k] - at_end[k] for k in common) if common else None


def serving_at(versions: Sequence[Mapping], moment: datetime) -> int | None:
    """The version serving at ``moment``: the newest promoted one created before it.

    ``versions``: dicts with ``version``, ``created_at`` (datetime) and ``promoted`` (bool).
    Versions are gated one after another in creation order, so a promoted version serves
    from its gate until the next promotion."""
    served = [v for v in versions if v["promoted"] and v["created_at"] is not None and v["created_at"] <= moment]
    return max(served, key=lambda v: v["version"])["version"] if served else None


def gate_verdicts(versions: Sequence[Mapping], holdout: Mapping[int, float], tolerance: float) -> list[dict]:
    """Each gated version against the version serving when it was gated, on the holdout.

    ``versions``: dicts with ``version``, ``promoted`` and ``gated`` (False for version 0 and
    imports, which never went through the gate), in creation order. A promoted version more
    than ``tolerance`` below its predecessor on the holdout is a gate error; a rejected one
    more than ``tolerance`` above it is a missed improvement."""
    verdicts = []
    serving = None
    for record in sorted(versions, key=lambda v: v["version"]):
        version = record["version"]
        if record.get("gated", True) and serving is not None and version in holdout and serving in holdout:
            difference = holdout[version] - holdout[serving]
            verdicts.append({
                "version": version,
                "compared_with": serving,
                "promoted": bool(record["promoted"]),
                "holdout_dice": holdout[version],
                "compared_holdout_dice": holdout[serving],
                "gate_error": bool(record["promoted"] and difference < -tolerance),
                "missed_improvement": bool(not record["promoted"] and difference > tolerance),
            })
        if record["promoted"]:
            serving = version
    return verdicts


def histogram_by_label(metrics_text: str, name: str, label: str) -> dict[str, dict[str, float]]:
    """From a Prometheus text exposition, each ``label`` value's count, sum and mean of the
    histogram ``name`` (e.g. the server's ``scribbleflow_round_phase_seconds`` by ``phase``)."""
    found: dict[str, dict[str, float]] = {}
    pattern = re.compile(rf'^{re.escape(name)}_(sum|count)\{{(?:[^}}]*,)?{re.escape(label)}="([^"]*)"[^}}]*\}} (\S+)$')
    for line in metrics_text.splitlines():
        match = pattern.match(line)
        if match:
            kind, value, number = match.groups()
            found.setdefault(value, {})[kind] = float(number)
    return {value: {"count": parts.get("count", 0.0), "sum_s": parts.get("sum", 0.0),
                    "mean_s": parts["sum"] / parts["count"] if parts.get("count") else None}
            for value, parts in sorted(found.items())}


def histogram_change(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """What ``histogram_by_label`` counted between two reads of the same server: per label
    value, the observations and seconds added, and their mean."""
    change = {}
    for value, parts in after.items():
        earlier = before.get(value, {})
        count = parts["count"] - earlier.get("count", 0.0)
        total = parts["sum_s"] - earlier.get("sum_s", 0.0)
        if count > 0:
            change[value] = {"count": count, "sum_s": total, "mean_s": total / count}
    return change
