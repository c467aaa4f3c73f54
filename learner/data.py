"""Dataset readers for the two supported layouts, returning arrays in (z, y, x) order.

Layouts (any directory, including data never seen before):
    (a) ACDC-style HDF5: ``DIR/*.h5`` with datasets ``image`` (float), ``label`` (int)
        and optionally ``scribble`` (int, ``num_classes`` = not annotated, e.g. 4 for ACDC).
    (b) NIfTI pairs: ``DIR/images/NAME.nii.gz`` and ``DIR/labels/NAME.nii.gz`` (labels
        optional), read with SimpleITK whatever the pixel type; labels cast to integers.

Scribbles are returned with ``registration.volume.UNLABELLED`` where nothing was drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from registration.volume import UNLABELLED, Volume, read_volume

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass
class Case:
    """One volume of a dataset. ``image.array`` is float32 (z, y, x)."""

    name: str
    image: Volume
    label: np.ndarray | None = None  # int64 (z, y, x)
    scribble: np.ndarray | None = None  # uint8 (z, y, x), UNLABELLED where not annotated


def _strip_suffix(name: str) -> str:
    for suffix in _IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _to_label_array(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        array = np.rint(array)
    return array.astype(np.int64)


def load_h5_case(path: Path) -> Case:
    with h5py.File(path, "r") as f:
        if "image" not in f:
            raise ValueError(f"{path}: HDF5 file has no 'image' dataset")
        image = np.asarray(f["image"][()], dtype=np.float32)
        label = _to_label_array(f["label"][()]) if "label" in f else None
        scribble = None
        if "scribble" in f:
            raw = _to_label_array(f["scribble"][()])
            # The file marks "not annotated" with the first value above the label range.
            unlabelled_value = int(raw.max())
            if label is not None:
                unlabelled_value = max(int(label.max()) + 1, 1)
            scribble = np.where(raw >= unlabelled_value, UNLABELLED, raw).astype(np.uint8)
    if image.ndim != 3:
        raise ValueError(f"{path}: expected a 3D image, got shape {image.shape}")
    return Case(name=path.stem, image=Volume(image), label=label, scribble=scribble)


def load_nifti_case(image_path: Path, label_path: Path | None) -> Case:
    volume = read_volume(image_path)
    volume.array = volume.array.astype(np.float32)
    label = None
    if label_path is not None and label_path.exists():
        label_volume = read_volume(label_path)
        if label_volume.array.shape != volume.array.shape:
            raise ValueError(f"{label_path}: label shape {label_volume.array.shape} != image {volume.array.shape}")
        label = _to_label_array(label_volume.array)
    return Case(name=_strip_suffix(image_path.name), image=volume, label=label)


def case_paths(directory: str | Path) -> list[tuple[Path, Path | None]]:
    """(image, label) paths of every case in ``directory``, sorted by name."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    h5_files = sorted(root.glob("*.h5"))
    if h5_files:
        return [(p, None) for p in h5_files]
    images_dir = root / "images"
    if images_dir.is_dir():
        pairs = []
        for p in sorted(images_dir.iterdir()):
            if p.name.startswith(".") or not p.name.endswith(_IMAGE_SUFFIXES):
                continue
            label = root / "labels" / p.name
            pairs.append((p, label if label.exists() else None))
        if pairs:
            return pairs
    raise ValueError(f"{root}: no cases found (expected *.h5 files or images/ + labels/ NIfTI files)")


def load_case(image_path: Path, label_path: Path | None = None) -> Case:
    if image_path.suffix == ".h5":
        return load_h5_case(image_path)
    return load_nifti_case(image_path, label_path)


def iter_cases(directory: str | Path) -> Iterator[Case]:
    for image_path, label_path in case_paths(directory):
        yield load_case(image_path, label_path)


def load_cases(directory: str | Path) -> list[Case]:
    return list(iter_cases(directory))
