"""Label volumes as class probabilities, and the box and size of a drawn mask."""

from __future__ import annotations

import numpy as np


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 (C, ...) one-hot of integer ``labels`` (any shape); values outside 0..C-1
    (e.g. ``UNLABELLED``) give all-zero columns."""
    out = np.empty((num_classes,) + labels.shape, dtype=np.float32)
    for cls in range(num_classes):
        np.equal(labels, cls, out=out[cls])
    return out


def class_argmax(probabilities: np.ndarray) -> np.ndarray:
    """uint8 (...): the first most probable class of NaN-free (C, ...) ``probabilities``, as
    ``probabilities.argmax(axis=0)``, in C passes over contiguous planes (NumPy's argmax along
    a leading axis walks the volume with a stride of one class plane: ~4x slower on a
    (4, 10, 256, 216) ACDC volume). ValueError for more than 256 classes."""
    probabilities = np.asarray(probabilities)
    if probabilities.shape[0] > 256:
        raise ValueError(f"at most 256 classes fit uint8 labels, got {probabilities.shape[0]}")
    best = np.array(probabilities[0])
    labels = np.zeros(best.shape, dtype=np.uint8)
    better = np.empty(best.shape, dtype=bool)
    for cls in range(1, probabilities.shape[0]):
        np.greater(probabilities[cls], best, out=better)
        labels[better] = cls
        np.maximum(best, probabilities[cls], out=best)
    return labels


def bounding_extent(mask: np.ndarray, spacing: tuple[float, ...] | None = None) -> float:
    """The longer side of the bounding box of the True pixels of ``mask`` (pixels, or mm
    with ``spacing``, one per axis of ``mask``); 0 when nothing is True."""
    where = np.nonzero(mask)
    if where[0].size == 0:
        return 0.0
    steps = (1.0,) * len(where) if spacing is None else spacing
    return float(max((int(w.max()) - int(w.min()) + 1) * float(d) for w, d in zip(where, steps, strict=True)))


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1), ends exclusive, of the True pixels of a 2D ``mask``; None when
    nothing is True."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
