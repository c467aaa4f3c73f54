"""Synthetic volumes with a known answer, for tests and latency benchmarks.

``synthetic_volume`` draws, in a (z, y, x) volume, a textured elliptical "body" and inside
it a structure of nested elliptical bands (class 1 outermost ... class C-1 the core) that
drifts, turns and swells from slice to slice and is present only on a middle range of
slices, so it appears and vanishes like an organ between base and apex.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class SyntheticVolume:
    image: np.ndarray  # float32 (z, y, x), roughly in [0, 1]
    labels: np.ndarray  # uint8 (z, y, x), 0 .. num_classes - 1
    present: tuple[int, int]  # first and last slice (axis 0) holding the structure


def synthetic_volume(
    shape_zyx: tuple[int, int, int],
    num_classes: int = 4,
    *,
    seed: int = 0,
    extent: float = 0.6,
    noise: float = 0.03,
) -> SyntheticVolume:
    """A moving, deforming nested structure on the middle ``extent`` fraction of the slices.

    In-plane the structure's radii are about a fifth of the slice; along z its centre drifts
    by up to ~8% of the slice, it turns by up to 30 degrees and its radii follow a
    half-ellipse profile (small at both ends, largest mid-way).
    """
    if num_classes < 2:
        raise ValueError("num_classes must be at least 2")
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    z = np.arange(nz, dtype=np.float32)
    first = int(round(nz * (1 - extent) / 2))
    last = max(first, min(nz - 1, int(round(nz * (1 + extent) / 2)) - 1))
    middle = 0.5 * (first + last)
    half = max(0.5 * (last - first) + 0.5, 0.5)
    t = (z - middle) / half  # -1 .. 1 over the present range
    profile = np.sqrt(np.clip(1.0 - t**2, 0.0, 1.0)) * 0.7 + 0.3 * (np.abs(t) <= 1.0)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    cy = ny * (0.5 + 0.08 * np.sin(1.3 * t + phase[0]))
    cx = nx * (0.5 + 0.08 * np.cos(1.1 * t + phase[1]))
    ry = ny * 0.2 * profile * (1.0 + 0.15 * np.sin(2.0 * t + phase[2]))
    rx = nx * 0.17 * profile
    angle = np.radians(30.0) * t

    yy = np.arange(ny, dtype=np.float32)[None, :, None]
    xx = np.arange(nx, dtype=np.float32)[None, None, :]
    dy = yy - cy[:, None, None]
    dx = xx - cx[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dy + sin * dx) / np.maximum(ry, 1e-3)[:, None, None]
    v = (-sin * dy + cos * dx) / np.maximum(rx, 1e-3)[:, None, None]
    radius = np.sqrt(u * u + v * v)  # 1 on the structure's outline
    radius[(np.abs(t) > 1.0)] = np.inf

    labels = np.zeros(shape_zyx, dtype=np.uint8)
    bands = np.linspace(1.0, 0.0, num_classes)  # outline radii of classes 1 .. C-1
    for cls in range(1, num_classes):
        labels[radius <= bands[cls - 1]] = cls

    body = ((yy - ny / 2) / (0.45 * ny)) ** 2 + ((xx - nx / 2) / (0.45 * nx)) ** 2 <= 1.0
    image = np.where(body, 0.35, 0.05).astype(np.float32) * np.ones((nz, 1, 1), dtype=np.float32)
    levels = np.linspace(0.9, 0.55, num_classes - 1) if num_classes > 2 else np.array([0.85])
    for cls in range(1, num_classes):
        image[labels == cls] = levels[cls - 1] if cls % 2 else 1.0 - levels[cls - 1] + 0.1
    texture = ndimage.gaussian_filter(rng.standard_normal((nz, ny, nx)).astype(np.float32), 1.0)
    image += noise * texture / max(float(texture.std()), 1e-6)
    return SyntheticVolume(image.astype(np.float32), labels, (first, last))
