"""Intensity normalisation and in-plane resizing shared by training and inference.

Arrays are (z, y, x) volumes or stacks of 2D slices (N, H, W); resizing acts on the last
two axes only (each z-slice independently).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Percentiles mapped to 0 and 1 by ``normalize_intensity``.
LOWER_PERCENTILE = 0.5
UPPER_PERCENTILE = 99.5


def normalize_intensity(
    image_zyx: np.ndarray,
    lower_percentile: float = LOWER_PERCENTILE,
    upper_percentile: float = UPPER_PERCENTILE,
) -> np.ndarray:
    """Robust scaling of a volume of any pixel type to float32 in [0, 1].

    The ``lower_percentile`` .. ``upper_percentile`` range of the whole volume maps to
    0 .. 1 and values outside are clipped, so a few hot voxels cannot squash the
    contrast. A constant volume maps to zeros. Shape is kept: (z, y, x) in, (z, y, x) out.
    """
    image = np.asarray(image_zyx, dtype=np.float32)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros_like(image, dtype=np.float32)
    low, high = np.percentile(finite, [lower_percentile, upper_percentile])
    if high - low <= 1e-8:
        return np.zeros_like(image, dtype=np.float32)
    scaled = (np.nan_to_num(image, nan=low) - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of float (N, C, H, W) to (N, C, height, width)."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)


def resize_labels(labels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize of integer (N, H, W) to (N, height, width), dtype kept."""
    if labels.shape[-2:] == (height, width):
        return labels
    resized = F.interpolate(labels[:, None].float(), size=(height, width), mode="nearest-exact")
    return resized[:, 0].to(labels.dtype)
