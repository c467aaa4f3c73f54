"""``scribbleflow bench propagate``: proxy quality and latency from simulated sparse input.

For every volume of a data directory (ACDC HDF5 or images/ + labels/ NIfTI layout), the
simulated annotator picks an axis and K slices, gives either the ground-truth mask of
those slices (``mask``) or simulated scribbles on them (``scribble``, made dense per slice
by ``densify_slice``), and the proxy from ``propagate_to_volume`` is scored against the
ground truth.

Annotator model (deterministic):
  - axis: the one along which the foreground spans the fewest slices (the view showing
    the structure largest: short-axis slices for the heart, the long-axis plane for the
    hippocampus); ties go to the lower axis;
  - slices: the centres of K equal bins over the slices holding foreground, i.e. slice
    lo - 0.5 + (hi - lo + 1) * (j + 0.5) / K for j = 0..K-1, rounded half up.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from learner.data import case_paths, load_case
from learner.metrics import dice_per_class
from learner.scribbles import simulate_scribbles
from registration.dense2d import densify_slice
from registration.propagate import Proxy, SliceAnnotation, propagate_to_volume
from registration.synthetic import synthetic_volume

INPUT_KINDS = ("mask", "scribble")
#: Confidence threshold of the calibration split (the issue's "w >= 0.5 vs the rest").
CALIBRATION_THRESHOLD = 0.5
#: Shape of the synthetic volume of ``--synthetic-large`` (a BraTS-sized volume).
LARGE_SHAPE = (155, 240, 240)


def choose_axis(label_zyx: np.ndarray) -> int:
    """The axis along which the foreground spans the fewest slices (ties: the lower axis)."""
    foreground = np.asarray(label_zyx) > 0
    counts = [int(np.moveaxis(foreground, axis, 0).any(axis=(1, 2)).sum()) for axis in range(3)]
    return int(np.argmin(counts))


def choose_slices(label_zyx: np.ndarray, count: int, axis: int) -> list[int]:
    """``count`` slices evenly spread over the slices holding foreground along ``axis``."""
    if count < 1:
        raise ValueError("need at least one slice")
    present = np.flatnonzero(np.moveaxis(np.asarray(label_zyx) > 0, axis, 0).any(axis=(1, 2)))
    if present.size == 0:
        raise ValueError("the label volume holds no foreground")
    low, high = int(present[0]), int(present[-1])
    width = high - low + 1
    chosen = {int(math.floor(low - 0.5 + width * (j + 0.5) / count + 0.5)) for j in range(count)}
    return sorted(min(max(i, low), high) for i in chosen)


@dataclass
class SimulatedInput:
    annotations: list[SliceAnnotation]
    densify_seconds: float
    scribbled_voxels: int


def simulate_input(
    image_zyx: np.ndarray, label_zyx: np.ndarray, num_classes: int, slices: Sequence[int], axis: int, kind: str, seed: int = 0
) -> SimulatedInput:
    """Annotations on ``slices`` along ``axis``: ground-truth masks, or simulated scribbles
    made dense by ``densify_slice`` (its time is returned apart)."""
    if kind == "mask":
        annotations = [SliceAnnotation(axis, i, np.take(label_zyx, i, axis=axis).astype(np.uint8)) for i in slices]
        return SimulatedInput(annotations, 0.0, 0)
    if kind != "scribble":
        raise ValueError(f"input must be one of {INPUT_KINDS}, got {kind!r}")
    scribbles = simulate_scribbles(label_zyx, num_classes=num_classes, slices=list(slices), axis=axis, seed=seed)
    annotations = []
    start = time.perf_counter()
    for i in slices:
        seeds = np.take(scribbles.scribble, i, axis=axis)
        if (seeds != 255).any():
            dense = densify_slice(np.take(image_zyx, i, axis=axis), seeds, num_classes)
            annotations.append(SliceAnnotation(axis, i, dense.astype(np.uint8)))
    return SimulatedInput(annotations, time.perf_counter() - start, int(scribbles.effort.voxels))


def _dice_counts(pred: np.ndarray, truth: np.ndarray, num_classes: int, mask: np.ndarray) -> np.ndarray:
    """(C - 1, 2): per class, [2 |P∩T|, |P| + |T|] over the voxels in ``mask``."""
    p, t = pred[mask], truth[mask]
    out = np.zeros((num_classes - 1, 2), dtype=np.float64)
    for cls in range(1, num_classes):
        pc, tc = p == cls, t == cls
        out[cls - 1] = (2.0 * np.count_nonzero(pc & tc), np.count_nonzero(pc) + np.count_nonzero(tc))
    return out


def _pooled_dice(counts: np.ndarray) -> float | None:
    valid = counts[:, 1] > 0
    return float(np.mean(counts[valid, 0] / counts[valid, 1])) if valid.any() else None


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class VolumeCase:
    name: str
    image: np.ndarray
    label: np.ndarray
    spacing_zyx: tuple[float, float, float]


def iter_data_cases(directory: str | Path) -> Iterable[VolumeCase]:
    for image_path, label_path in case_paths(directory):
        case = load_case(image_path, label_path)
        if case.label is None:
            continue
        yield VolumeCase(case.name, case.image.array, case.label, case.image.spacing_zyx)


def iter_synthetic_cases(shape: Sequence[int], count: int, num_classes: int) -> Iterable[VolumeCase]:
    for seed in range(count):
        volume = synthetic_volume(tuple(int(s) for s in shape), num_classes, seed=seed)
        yield VolumeCase(f"synthetic-{'x'.join(map(str, shape))}-{seed}", volume.image, volume.labels.astype(np.int64), (1.0, 1.0, 1.0))


def dataset_num_classes(directory: str | Path) -> int:
    """1 + the largest label value in the directory's label volumes."""
    largest = 0
    for image_path, label_path in case_paths(directory):
        case = load_case(image_path, label_path)
        if case.label is not None:
            largest = max(largest, int(case.label.max()))
    return largest + 1


def run_benchmark(
    cases: Iterable[VolumeCase],
    *,
    num_classes: int,
    slices: int,
    kind: str,
    total: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Score proxies of every case; returns the JSON-ready result (see module doc)."""
    load_before = os.getloadavg()[0]
    per_volume = []
    per_class: dict[int, list[float]] = {c: [] for c in range(1, num_classes)}
    latencies: list[float] = []
    densify_latencies: list[float] = []
    total_latencies: list[float] = []
    calibration = {"high": np.zeros((num_classes - 1, 2)), "low": np.zeros((num_classes - 1, 2))}
    voxels = {"high": 0, "low": 0}
    warmed_up = False
    for case in tqdm(cases, total=total, desc=f"propagate {kind} K={slices}", disable=not progress, unit="vol"):
        axis = choose_axis(case.label)
        chosen = choose_slices(case.label, slices, axis)
        given = simulate_input(case.image, case.label, num_classes, chosen, axis, kind, seed)
        if not warmed_up:  # first call pays one-off costs (imports, caches): not timed
            propagate_to_volume(case.image, given.annotations, num_classes, case.spacing_zyx)
            warmed_up = True
        timings = []
        proxy: Proxy | None = None
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            proxy = propagate_to_volume(case.image, given.annotations, num_classes, case.spacing_zyx)
            timings.append(time.perf_counter() - start)
        assert proxy is not None
        latencies.extend(timings)
        densify_latencies.append(given.densify_seconds)
        total_latencies.append(given.densify_seconds + float(np.median(timings)))
        dice = dice_per_class(proxy.labels, case.label, num_classes)
        for cls, value in dice.items():
            per_class[cls].append(value)
        high = proxy.confidence >= CALIBRATION_THRESHOLD
        for part, mask in (("high", high), ("low", ~high)):
            calibration[part] += _dice_counts(proxy.labels, case.label, num_classes, mask)
            voxels[part] += int(mask.sum())
        per_volume.append(
            {
                "name": case.name,
                "shape_zyx": list(case.label.shape),
                "axis": axis,
                "slices": chosen,
                "dice": {str(c): v for c, v in dice.items()},
                "latency_s": float(np.median(timings)),
                "densify_s": given.densify_seconds,
                "scribbled_voxels": given.scribbled_voxels,
            }
        )
    class_means = {str(c): float(np.mean(v)) for c, v in per_class.items() if v}
    total_voxels = max(1, voxels["high"] + voxels["low"])
    return {
        "slices": slices,
        "input": kind,
        "mean_dice": float(np.mean(list(class_means.values()))) if class_means else None,
        "per_class": class_means,
        "latency_p50_s": _percentile(latencies, 50),
        "latency_p95_s": _percentile(latencies, 95),
        "volumes": len(per_volume),
        "num_classes": num_classes,
        "latency_what": "propagate_to_volume wall time per call (first call of a run excluded as warm-up)",
        "latency_samples": len(latencies),
        "densify_latency_p50_s": _percentile(densify_latencies, 50),
        "densify_latency_p95_s": _percentile(densify_latencies, 95),
        "total_latency_p50_s": _percentile(total_latencies, 50),
        "total_latency_p95_s": _percentile(total_latencies, 95),
        "calibration": {
            "threshold": CALIBRATION_THRESHOLD,
            "dice_confident": _pooled_dice(calibration["high"]),
            "dice_rest": _pooled_dice(calibration["low"]),
            "voxel_fraction_confident": voxels["high"] / total_voxels,
            "note": "Dice pooled over all volumes, mean over classes, on voxels with confidence >= threshold vs the rest",
        },
        "axis_rule": "fewest slices holding foreground",
        "slice_rule": "centres of K equal bins over the slices holding foreground",
        "machine": {"cpu_count": os.cpu_count(), "load_1min_before": load_before, "load_1min_after": os.getloadavg()[0]},
        "per_volume": per_volume,
    }


def write_json(result: dict, path: str | Path) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, target)
    return target
