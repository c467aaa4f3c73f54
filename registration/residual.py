"""Residual maps (where two segmentations disagree) and where to ask the user next.

R = |fused − model|, per voxel the total variation distance between the two class
distributions: 0.5 * sum_c |p_c − q_c|, in [0, 1] (1 = they put their mass on different
classes). The next interaction targets the largest connected region of R above a
threshold, weighted by how much residual it holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Suggestion:
    """Where to look next, in array indices (z, y, x).

    axis/slice: the slice to annotate (along ``axis``, the one in which the region is widest);
    bbox_zyx: (z0, y0, x0, z1, y1, x1), ends exclusive; centroid_zyx: residual-weighted
    centre; score: residual mass of the region (sum of R over its voxels).
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


def residual_map(fused_probabilities: np.ndarray, model_probabilities: np.ndarray) -> np.ndarray:
    """float32 (z, y, x) in [0, 1]: 0.5 * sum over classes of |fused − model| ((C, z, y, x) each)."""
    fused = np.asarray(fused_probabilities, dtype=np.float32)
    model = np.asarray(model_probabilities, dtype=np.float32)
    if fused.shape != model.shape:
        raise ValueError(f"shape mismatch: {fused.shape} vs {model.shape}")
    return np.clip(0.5 * np.abs(fused - model).sum(axis=0), 0.0, 1.0).astype(np.float32)


def suggest_next_interaction(residual_zyx: np.ndarray, threshold: float = 0.5) -> Suggestion | None:
    """The connected region (26-connected) of ``residual_zyx`` > ``threshold`` holding the most
    residual, and the slice through it to annotate; None when no voxel is above threshold.

    The slice is taken along the axis in which the region's bounding box is thinnest (a
    2D view then shows most of it) and through the slice holding most of its residual.
    """
    residual = np.asarray(residual_zyx, dtype=np.float32)
    if residual.ndim != 3:
        raise ValueError(f"expected a (z, y, x) residual, got shape {residual.shape}")
    above = residual > threshold
    if not above.any():
        return None
    components, count = ndimage.label(above, structure=np.ones((3, 3, 3), dtype=bool))
    masses = ndimage.sum_labels(residual, components, index=np.arange(1, count + 1))
    best = int(np.argmax(masses)) + 1
    region = components == best
    weights = np.where(region, residual, 0.0)
    box = ndimage.find_objects(region.astype(np.int32))[0]
    bbox = tuple(int(s.start) for s in box) + tuple(int(s.stop) for s in box)
    coords = np.nonzero(region)
    values = residual[coords]
    centroid = tuple(float((c * values).sum() / values.sum()) for c in coords)
    extents = [s.stop - s.start for s in box]
    axis = int(np.argmin(extents))  # ties: the lowest axis
    per_slice = weights.sum(axis=tuple(i for i in range(3) if i != axis))
    return Suggestion(
        axis=axis,
        slice=int(np.argmax(per_slice)),
        bbox_zyx=bbox,  # type: ignore[arg-type]
        centroid_zyx=centroid,  # type: ignore[arg-type]
        score=float(masses[best - 1]),
    )
