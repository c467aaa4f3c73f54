"""Sparse 2D annotations on a few slices -> a dense 3D proxy mask with a confidence map.

Arrays are (z, y, x) (see ``registration.io.volume``). An annotation lies on slice ``index``
along ``axis`` (0: a z-slice (y, x); 1: a y-slice (z, x); 2: an x-slice (z, y)); its labels
have the shape of ``np.take(volume, index, axis)`` and hold 0..C-1, or ``UNLABELLED`` where
the annotator said nothing.

Along each annotated axis, annotations are carried slice to slice by deformable
registration and mixed where they meet (``registration.slice_propagation``). Axes are then
combined voxel by voxel, weighted by their confidence w = 1 / (1 + slices to the nearest
annotated slice of that axis); the confidence of a voxel is the largest w over axes, and 1
on voxels the user labelled, which keep the user's label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from registration.appearance import normalize_intensity_sampled
from registration.io.volume import UNLABELLED
from registration.labels import class_argmax, one_hot
from registration.slice_propagation import AxisProxy, PropagationSettings, propagate_axis

__all__ = [
    "PropagationSettings",
    "Proxy",
    "SliceAnnotation",
    "labels_from_probabilities",
    "propagate_to_volume",
]


@dataclass(frozen=True)
class SliceAnnotation:
    """Labels (2D, the slice's shape; ints 0..C-1 or UNLABELLED) on slice ``index`` of ``axis``."""

    axis: int
    index: int
    labels: np.ndarray


@dataclass
class Proxy:
    """A proxy segmentation of a (z, y, x) volume.

    labels: uint8 (z, y, x) in 0..C-1; probabilities: float32 (C, z, y, x), summing to one
    over C; confidence: float32 (z, y, x) in [0, 1], 1 on voxels the user labelled.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    confidence: np.ndarray


def labels_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """uint8 labels (...) of (C, ...) probabilities summing to one: foreground where the
    foreground classes together outweigh the background, then the most probable foreground
    class. (A plain argmax loses thin structures squeezed between two others, such as a
    myocardium between blood pool and background.)"""
    num_classes = probabilities.shape[0]
    if num_classes == 1:
        return np.zeros(probabilities.shape[1:], dtype=np.uint8)
    labels = class_argmax(probabilities[1:]) + np.uint8(1)
    labels[probabilities[0] >= 0.5] = 0
    return labels


def _check(shape: tuple[int, ...], annotations: Sequence[SliceAnnotation], num_classes: int) -> None:
    if len(shape) != 3:
        raise ValueError(f"expected a 3D (z, y, x) image, got shape {shape}")
    if not 2 <= num_classes < UNLABELLED:
        raise ValueError(f"num_classes must be in 2..{UNLABELLED - 1}, got {num_classes}")
    for a in annotations:
        if a.axis not in (0, 1, 2):
            raise ValueError(f"annotation axis must be 0, 1 or 2, got {a.axis}")
        if not 0 <= a.index < shape[a.axis]:
            raise IndexError(f"slice {a.index} outside 0..{shape[a.axis] - 1} along axis {a.axis}")
        expected = tuple(s for i, s in enumerate(shape) if i != a.axis)
        if tuple(np.shape(a.labels)) != expected:
            raise ValueError(f"annotation on axis {a.axis} has shape {np.shape(a.labels)}, expected {expected}")
        labels = np.asarray(a.labels)
        bad = (labels != UNLABELLED) & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            raise ValueError(f"annotation labels outside 0..{num_classes - 1} (or {UNLABELLED} for none)")


def _fill_unknown(labels: np.ndarray) -> np.ndarray | None:
    """Dense labels for propagation: UNLABELLED pixels take the nearest labelled pixel's
    label; None when nothing on the slice is labelled."""
    labels = np.asarray(labels)
    unknown = labels == UNLABELLED
    if not unknown.any():
        return labels.astype(np.uint8, copy=False)
    if unknown.all():
        return None
    nearest = ndimage.distance_transform_edt(unknown, return_distances=False, return_indices=True)
    return labels[tuple(nearest)].astype(np.uint8)


def _axis_order(axis: int) -> tuple[int, int, int]:
    return (axis,) + tuple(i for i in range(3) if i != axis)


def propagate_to_volume(
    image_zyx: np.ndarray,
    annotations: Sequence[SliceAnnotation],
    num_classes: int,
    spacing_zyx: Sequence[float] | None = None,
    settings: PropagationSettings | None = None,
) -> Proxy:
    """Proxy labels, probabilities and confidence of the whole volume from ``annotations``.

    ``image_zyx``: any real (z, y, x) array. ``spacing_zyx``: voxel size (default 1, 1, 1),
    one of the hints for how far a structure reaches beyond the outermost annotated slice.
    A later annotation of the same slice replaces an earlier one. Without annotations the
    proxy is all background with confidence 0.
    """
    settings = settings or PropagationSettings()
    image = np.asarray(image_zyx)
    shape = tuple(int(s) for s in image.shape)
    _check(shape, annotations, num_classes)
    spacing = tuple(float(s) for s in (spacing_zyx if spacing_zyx is not None else (1.0, 1.0, 1.0)))

    by_axis: dict[int, dict[int, np.ndarray]] = {}
    for a in annotations:
        dense = _fill_unknown(a.labels)
        if dense is not None:
            by_axis.setdefault(int(a.axis), {})[int(a.index)] = dense

    probabilities = np.zeros((num_classes,) + shape, dtype=np.float32)
    probabilities[0] = 1.0
    labels = np.zeros(shape, dtype=np.uint8)
    confidence = np.zeros(shape, dtype=np.float32)
    if by_axis:
        normalized = normalize_intensity_sampled(image)
        results = {
            axis: propagate_axis(
                np.moveaxis(normalized, axis, 0),
                labels_by_index,
                num_classes,
                tuple(spacing[i] for i in _axis_order(axis)),
                settings,
            )
            for axis, labels_by_index in sorted(by_axis.items())
        }
        _combine(results, probabilities, labels, confidence)

    # User input wins where it was given.
    for a in annotations:
        given = np.asarray(a.labels)
        known = given != UNLABELLED
        if not known.any():
            continue
        values = given[known].astype(np.uint8)
        np.moveaxis(labels, a.axis, 0)[a.index][known] = values
        np.moveaxis(confidence, a.axis, 0)[a.index][known] = 1.0
        plane = np.moveaxis(probabilities, a.axis + 1, 1)[:, a.index]
        plane[:, known] = one_hot(values, num_classes)
    return Proxy(labels, probabilities, confidence)


def _confidence_volume(result: AxisProxy, axis: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(result.confidence.reshape([-1 if i == axis else 1 for i in range(3)]), shape)


def _combine(
    results: dict[int, AxisProxy], probabilities: np.ndarray, labels: np.ndarray, confidence: np.ndarray
) -> None:
    """Write the confidence-weighted mix of the axes' results into the (background-filled)
    output arrays, in place."""
    shape = labels.shape
    if len(results) == 1:  # the common case: only the box differs from background
        (axis, result), = results.items()
        np.moveaxis(probabilities, axis + 1, 1)[(slice(None),) + result.box] = result.probabilities
        np.moveaxis(labels, axis, 0)[result.box] = labels_from_probabilities(result.probabilities)
        confidence[...] = _confidence_volume(result, axis, shape)
        return
    weight_sum = np.zeros(shape, dtype=np.float32)
    probabilities[0] = 0.0
    for axis, result in results.items():
        weight = _confidence_volume(result, axis, shape)
        weight_sum += weight
        np.maximum(confidence, weight, out=confidence)
        probabilities[0] += weight  # background outside this axis' box ...
        if result.probabilities.size == 0:
            continue
        view = np.moveaxis(probabilities, axis + 1, 1)
        box_weight = np.moveaxis(weight, axis, 0)[result.box]
        background = result.probabilities[0] - 1.0  # ... and its own values inside
        view[(0,) + result.box] += box_weight * background
        view[(slice(1, None),) + result.box] += box_weight * result.probabilities[1:]
    probabilities /= np.maximum(weight_sum, 1e-12)
    labels[...] = labels_from_probabilities(probabilities)
