"""3D overlap and surface metrics per class (HD95 computed with MONAI).

Inputs are integer label volumes (z, y, x) of equal shape with values 0 .. num_classes - 1;
class 0 (background) is never scored. Conventions where a class is absent:
    Dice: both empty -> 1.0; one empty -> 0.0.
    HD95: both empty -> 0.0; one empty -> NaN (undefined; averages skip it, JSON writes null).
HD95 is the 95th percentile of the symmetric surface distances, in millimetres when
``spacing_zyx`` is given and in voxels otherwise.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch


def _labels(labels_zyx: np.ndarray, num_classes: int) -> np.ndarray:
    """The volume as int64, checked to hold only 0 .. num_classes - 1."""
    labels = np.asarray(labels_zyx).astype(np.int64, copy=False)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return labels


def _check(pred_zyx: np.ndarray, truth_zyx: np.ndarray, num_classes: int) -> None:
    if np.shape(pred_zyx) != np.shape(truth_zyx):
        raise ValueError(f"shape mismatch: prediction {np.shape(pred_zyx)} vs truth {np.shape(truth_zyx)}")
    if num_classes < 2:
        raise ValueError("num_classes must be at least 2 (background + one structure)")


def dice_per_class(pred_zyx: np.ndarray, truth_zyx: np.ndarray, num_classes: int) -> dict[int, float]:
    """Dice 2|P∩T| / (|P| + |T|) of each class 1 .. num_classes - 1 over the whole volume.

    Counted in one pass over the voxels (the joint histogram of predicted and true labels):
    the same values as MONAI's ``compute_dice`` with ``ignore_empty=False``, without its
    one-hot tensors, so that a server thread scoring rounds starts no torch threads."""
    _check(pred_zyx, truth_zyx, num_classes)
    pred, truth = _labels(pred_zyx, num_classes), _labels(truth_zyx, num_classes)
    joint = np.bincount((pred * num_classes + truth).ravel(), minlength=num_classes**2)
    joint = joint.reshape(num_classes, num_classes)  # [predicted, true]
    overlap, predicted, actual = np.diag(joint), joint.sum(axis=1), joint.sum(axis=0)
    scores = {}
    for cls in range(1, num_classes):
        total = int(predicted[cls] + actual[cls])
        scores[cls] = 1.0 if total == 0 else 2.0 * float(overlap[cls]) / total
    return scores


def hd95_per_class(
    pred_zyx: np.ndarray,
    truth_zyx: np.ndarray,
    num_classes: int,
    spacing_zyx: Sequence[float] | None = None,
) -> dict[int, float]:
    """95th-percentile Hausdorff distance of each class 1 .. num_classes - 1 (see module doc)."""
    from monai.metrics import compute_hausdorff_distance

    _check(pred_zyx, truth_zyx, num_classes)
    pred, truth = np.asarray(pred_zyx), np.asarray(truth_zyx)
    spacing = None if spacing_zyx is None else [float(s) for s in spacing_zyx]
    result: dict[int, float] = {}
    for cls in range(1, num_classes):
        p, t = pred == cls, truth == cls
        if not p.any() and not t.any():
            result[cls] = 0.0
        elif not p.any() or not t.any():
            result[cls] = math.nan
        else:
            pair = (torch.from_numpy(np.stack([~p, p]))[None].float(), torch.from_numpy(np.stack([~t, t]))[None].float())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # MONAI warns on its own internals
                value = compute_hausdorff_distance(*pair, include_background=False, percentile=95, spacing=spacing)
            result[cls] = float(value[0, 0])
    return result


def case_metrics(
    pred_zyx: np.ndarray,
    truth_zyx: np.ndarray,
    num_classes: int,
    spacing_zyx: Sequence[float] | None = None,
) -> dict[int, dict[str, float]]:
    """{class: {"dice": .., "hd95": ..}} for one volume."""
    dice = dice_per_class(pred_zyx, truth_zyx, num_classes)
    hd95 = hd95_per_class(pred_zyx, truth_zyx, num_classes, spacing_zyx)
    return {cls: {"dice": dice[cls], "hd95": hd95[cls]} for cls in dice}


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(per_case: Sequence[Mapping[int, Mapping[str, float]]]) -> dict:
    """Mean over cases: {"mean_dice", "mean_hd95", "cases", "hd95_undefined",
    "per_class": {"1": {dice, hd95, hd95_undefined}}}.

    Class keys become strings (JSON object keys). HD95 is undefined (NaN) where one of the two
    masks is empty (a structure missed, or predicted where there is none): such cases are left
    out of the HD95 means and counted in ``hd95_undefined`` (per class, and in total), so that
    a model that misses structures cannot hide it behind a small mean distance. Cases scored
    with Dice only (no "hd95" key) give a summary without the HD95 keys.
    """
    if not per_case:
        raise ValueError("no cases to summarise")
    classes = sorted(per_case[0])
    with_hd95 = all("hd95" in case[cls] for case in per_case for cls in classes)
    per_class = {}
    for cls in classes:
        per_class[str(cls)] = {"dice": _nanmean([case[cls]["dice"] for case in per_case])}
        if with_hd95:
            distances = [case[cls]["hd95"] for case in per_case]
            per_class[str(cls)].update(hd95=_nanmean(distances), hd95_undefined=sum(map(math.isnan, distances)))
    summary = {"mean_dice": _nanmean([v["dice"] for v in per_class.values()]), "cases": len(per_case)}
    if with_hd95:
        summary["mean_hd95"] = _nanmean([v["hd95"] for v in per_class.values()])
        summary["hd95_undefined"] = sum(v["hd95_undefined"] for v in per_class.values())
    summary["per_class"] = per_class
    return summary
