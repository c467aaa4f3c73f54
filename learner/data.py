"""Dataset readers for the two supported layouts, returning arrays in (z, y, x) order.

Layouts (any directory, including data never seen before):
    (a) ACDC-style HDF5: ``DIR/*.h5`` with datasets ``image`` (float), ``label`` (int)
        and optionally ``scribble`` (int, ``num_classes`` = not annotated, e.g. 4 for ACDC).
    (b) NIfTI pairs: ``DIR/images/NAME.nii.gz`` and ``DIR/labels/NAME.nii.gz`` (labels
        optional), read with SimpleITK whatever the pixel type; labels cast to integers.

Scribbles are returned with ``registration.io.volume.UNLABELLED`` where nothing was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from learner.preprocess import normalize_intensity, resize_images, resize_labels
from registration.io.volume import UNLABELLED, Volume, read_volume

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


@dataclass
class Case:
    """One volume of a dataset. ``image.array`` is float32 (z, y, x)."""

    name: str
    image: Volume
    label: np.ndarray | None = None  # int64 (z, y, x)
    scribble: np.ndarray | None = None  # uint8 (z, y, x), UNLABELLED where not annotated
    spacing_known: bool = False  # True only where the file gave a geometry (NIfTI/NRRD/MHA), not HDF5


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
    return Case(name=_strip_suffix(image_path.name), image=volume, label=label, spacing_known=True)


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


# --------------------------------------------------------------------------------------
# 2D slice sampling for training
# --------------------------------------------------------------------------------------

#: Targets a SliceDataset can carry: sparse scribbles (UNLABELLED where none) or dense labels.
SLICE_TARGETS = ("scribble", "label")


def _resized_case_slices(case: Case, size: int, targets: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The z-slices of one case resized to ``size`` x ``size``: image (z, 1, S, S) float32 in
    [0, 1] (robustly normalised over the whole volume), each target (z, S, S) uint8."""
    image = torch.from_numpy(normalize_intensity(case.image.array))[:, None]
    slices = {"image": resize_images(image, size, size).contiguous()}
    for name in targets:
        array = getattr(case, name)
        if array is None:
            raise ValueError(f"case {case.name} has no {name}")
        if array.max() > UNLABELLED:
            raise ValueError(f"case {case.name}: {name} values above {UNLABELLED}")
        slices[name] = resize_labels(torch.from_numpy(array.astype(np.uint8)), size, size).contiguous()
    return slices


class SliceDataset:
    """Every z-slice of a list of cases, resized once to ``size`` x ``size`` and kept in memory.

    ``targets`` names the per-pixel targets to carry ("scribble" and/or "label"). With
    ``require_labelled`` (default) only slices where the first target has at least one
    labelled pixel are kept, so a scribble-supervised batch never wastes a slot.

    Item ``i`` is a dict: ``image`` float32 (1, S, S) in [0, 1], and one int64 (S, S) tensor
    per target (scribbles hold ``UNLABELLED`` where nothing was drawn). ``case_index`` and
    ``slice_index`` tell where slice ``i`` came from.
    """

    def __init__(
        self,
        cases: list[Case],
        *,
        size: int,
        targets: tuple[str, ...] = ("scribble",),
        require_labelled: bool = True,
    ):
        unknown = set(targets) - set(SLICE_TARGETS)
        if unknown:
            raise ValueError(f"unknown slice targets {sorted(unknown)}; expected {SLICE_TARGETS}")
        if not cases:
            raise ValueError("SliceDataset needs at least one case")
        self.size = int(size)
        self.targets = tuple(targets)
        parts: dict[str, list] = {"image": [], **{t: [] for t in self.targets}}
        case_index, slice_index = [], []
        for ci, case in enumerate(cases):
            slices = _resized_case_slices(case, self.size, self.targets)
            keep = torch.ones(slices["image"].shape[0], dtype=torch.bool)
            if require_labelled and self.targets:
                first = slices[self.targets[0]]
                keep = (first != UNLABELLED).flatten(1).any(1)
            for name, tensor in slices.items():
                parts[name].append(tensor[keep])
            kept = torch.nonzero(keep)[:, 0]
            case_index.extend([ci] * len(kept))
            slice_index.extend(int(k) for k in kept)
        self.tensors = {name: torch.cat(chunks) for name, chunks in parts.items()}
        if self.tensors["image"].shape[0] == 0:
            raise ValueError("no slice carries a labelled pixel")
        self.case_index = np.asarray(case_index, dtype=np.int64)
        self.slice_index = np.asarray(slice_index, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.tensors["image"].shape[0])

    def __getitem__(self, index: int) -> dict:
        item = {"image": self.tensors["image"][index]}
        for name in self.targets:
            item[name] = self.tensors[name][index].long()
        return item

    def batch(self, indices) -> dict:
        """Stacked items: image (B, 1, S, S) float32, targets (B, S, S) int64."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        out = {"image": self.tensors["image"][idx]}
        for name in self.targets:
            out[name] = self.tensors[name][idx].long()
        return out

    def random_batch(self, batch_size: int, generator: torch.Generator) -> dict:
        """``batch_size`` slices drawn uniformly with replacement (seeded by ``generator``)."""
        return self.batch(torch.randint(len(self), (batch_size,), generator=generator))


def augment_batch(
    batch: dict,
    generator: torch.Generator,
    *,
    max_rotation_degrees: float = 15.0,
    label_keys: tuple[str, ...] = SLICE_TARGETS,
) -> dict:
    """Random rot90 + horizontal flip + small rotation, one affine per sample, applied alike to
    every entry of ``batch`` (all (B, ..., H, W) with H == W so rot90 keeps the shape).

    ``image`` and other float maps (``target`` (B, C, H, W), ``weight`` (B, H, W)) are
    resampled bilinearly with zeros outside; integer maps in ``label_keys`` by nearest
    neighbour, outside filled with 0 for ``label`` and ``UNLABELLED`` for anything else.
    """
    image = batch["image"]
    b, _, h, w = image.shape
    if h != w:
        raise ValueError(f"augment_batch needs square slices, got {h}x{w}")
    quarter = torch.randint(4, (b,), generator=generator)
    jitter = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(max_rotation_degrees)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    # Exact quarter turns (no cos(pi/2) round-off) composed with the small rotation and the flip.
    quarter_cos = torch.tensor([1.0, 0.0, -1.0, 0.0])[quarter]
    quarter_sin = torch.tensor([0.0, 1.0, 0.0, -1.0])[quarter]
    cos = quarter_cos * torch.cos(jitter) - quarter_sin * torch.sin(jitter)
    sin = quarter_sin * torch.cos(jitter) + quarter_cos * torch.sin(jitter)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta = theta.to(image.device, image.dtype)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)

    out = dict(batch)
    for key, value in batch.items():
        if not torch.is_tensor(value) or value.shape[0] != b or value.shape[-2:] != (h, w):
            continue
        if key in label_keys:
            fill = 0 if key == "label" else UNLABELLED
            shifted = (value.float() + 1.0)[:, None]  # 0 marks "outside" after sampling
            sampled = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0]
            sampled = sampled.round().long() - 1
            out[key] = torch.where(sampled < 0, torch.full_like(sampled, fill), sampled).to(value.dtype)
        elif value.is_floating_point():
            x = value if value.dim() == 4 else value[:, None]
            sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            out[key] = sampled if value.dim() == 4 else sampled[:, 0]
    return out
