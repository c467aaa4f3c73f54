"""Clean-up of predicted label volumes.

A slice-wise 2D network can fire on look-alike tissue far from the organ (stomach or aorta
taken for a ventricle); in data where each class is one connected structure (the heart's
chambers, a hippocampus) everything outside the class's largest 3D component is noise.
Data whose classes come in several pieces (lesions) must not use this.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Names of the post-processing choices, as recorded in benchmark JSON; the first is the
#: default of training, benchmarks and ``scribbleflow evaluate``.
POSTPROCESSING = ("largest_component", "none")
DEFAULT_POSTPROCESSING = POSTPROCESSING[0]


def keep_largest_component(labels_zyx: np.ndarray, num_classes: int) -> np.ndarray:
    """Copy of int labels (z, y, x) in which the voxels of each class 1..C-1 that lie outside
    that class's largest face-connected 3D component become background (0)."""
    labels = np.asarray(labels_zyx)
    out = labels.copy()
    for cls in range(1, num_classes):
        mask = labels == cls
        components, count = ndimage.label(mask)
        if count <= 1:
            continue
        sizes = ndimage.sum_labels(mask, components, index=np.arange(1, count + 1))
        out[mask & (components != 1 + int(np.argmax(sizes)))] = 0
    return out


def postprocess_labels(labels_zyx: np.ndarray, num_classes: int, method: str) -> np.ndarray:
    if method not in POSTPROCESSING:
        raise ValueError(f"post-processing must be one of {POSTPROCESSING}, got {method!r}")
    return keep_largest_component(labels_zyx, num_classes) if method == "largest_component" else labels_zyx
