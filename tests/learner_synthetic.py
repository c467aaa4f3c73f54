"""Small synthetic volumes for the learner tests: a bright disk (class 1) inside a ring
(class 2) on a dark noisy background, in both dataset layouts."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from learner.scribbles import simulate_scribbles
from registration.io.volume import UNLABELLED


def disk_and_ring(shape_zyx=(6, 40, 36), *, seed: int = 0, empty_slices: int = 1):
    """(image float32 (z, y, x) in ~[0, 1], label uint8 (z, y, x)): per slice a disk (1) in a
    ring (2) whose centre and radius vary with the seed; the first ``empty_slices`` slices
    hold background only."""
    rng = np.random.default_rng(seed)
    z, h, w = shape_zyx
    yy, xx = np.mgrid[:h, :w]
    label = np.zeros(shape_zyx, dtype=np.uint8)
    for k in range(empty_slices, z):
        cy = h / 2 + rng.uniform(-2, 2)
        cx = w / 2 + rng.uniform(-2, 2)
        inner = min(h, w) * rng.uniform(0.12, 0.18)
        r = np.hypot(yy - cy, xx - cx)
        label[k][r < inner * 1.8] = 2
        label[k][r < inner] = 1
    intensity = np.array([0.1, 0.8, 0.45], dtype=np.float32)
    image = intensity[label] + rng.normal(0, 0.03, shape_zyx).astype(np.float32)
    return image.astype(np.float32), label


def write_h5_case(path: Path, image: np.ndarray, label: np.ndarray, scribble: np.ndarray | None = None,
                  unlabelled_value: int | None = None) -> Path:
    """An ACDC-style file: image float32, label uint8, scribble uint16 with ``unlabelled_value``
    (default: num_classes) where nothing is drawn."""
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image.astype(np.float32))
        f.create_dataset("label", data=label.astype(np.uint8))
        if scribble is not None:
            value = int(label.max()) + 1 if unlabelled_value is None else unlabelled_value
            f.create_dataset("scribble", data=np.where(scribble == UNLABELLED, value, scribble).astype(np.uint16))
    return path


def write_h5_dataset(directory: Path, count: int, *, shape_zyx=(6, 40, 36), seed: int = 0) -> Path:
    """``count`` ACDC-style cases with simulated scribbles in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, label = disk_and_ring(shape_zyx, seed=seed + i)
        scribble = simulate_scribbles(label, num_classes=3, seed=i).scribble
        write_h5_case(directory / f"case{i:03d}.h5", image, label, scribble)
    return directory
