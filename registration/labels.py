"""Label volumes as class probabilities."""

from __future__ import annotations

import numpy as np


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 (C, ...) one-hot of integer ``labels`` (any shape); values outside 0..C-1
    (e.g. ``UNLABELLED``) give all-zero columns."""
    out = np.empty((num_classes,) + labels.shape, dtype=np.float32)
    for cls in range(num_classes):
        np.equal(labels, cls, out=out[cls])
    return out
