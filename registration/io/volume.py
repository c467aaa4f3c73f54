"""The one place that states the array axis convention and converts at the I/O edge.

Convention, everywhere in the core (learner, registration, server services):
    NumPy / PyTorch arrays of a volume are indexed (z, y, x) — slice, row, column —
    exactly as ``SimpleITK.GetArrayFromImage`` returns them.
    SimpleITK image indices, spacing and origin are (x, y, z). They appear only here
    (``Volume.spacing_xyz``, ``Volume.origin_xyz``) and in points arriving over the API.

``Volume`` carries an array together with the geometry needed to write results back
in the original physical space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from registration.io.atomic import atomic_target

#: Value of a voxel that carries no user label in a scribble/annotation volume.
UNLABELLED = 255

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class Volume:
    """A 3D array in (z, y, x) order plus its physical geometry in SimpleITK's (x, y, z)."""

    array: np.ndarray
    spacing_xyz: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = field(default=_IDENTITY)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        x, y, z = self.spacing_xyz
        return (z, y, x)

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> Volume:
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError("expected a scalar image, got a multi-component (vector/RGB) image")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing_xyz=tuple(float(s) for s in image.GetSpacing()),
            origin_xyz=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image of ``array`` (default: this volume's) with this geometry."""
        data = self.array if array is None else array
        if data.shape != self.array.shape:
            raise ValueError(f"array shape {data.shape} does not match volume {self.array.shape}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin_xyz)
        image.SetDirection(self.direction)
        return image

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry around another array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} does not match volume {self.array.shape}")
        return Volume(array, self.spacing_xyz, self.origin_xyz, self.direction)

    def index_to_zyx(self, ijk: tuple[float, float, float]) -> tuple[int, int, int]:
        """SimpleITK voxel index (i, j, k) = (x, y, z) to an array index (z, y, x)."""
        i, j, k = ijk
        return (int(round(k)), int(round(j)), int(round(i)))

    def physical_to_zyx(self, point_lps: tuple[float, float, float]) -> tuple[int, int, int]:
        """Physical LPS millimetres to the nearest array index (z, y, x)."""
        image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin_xyz)
        image.SetDirection(self.direction)
        continuous = image.TransformPhysicalPointToContinuousIndex(tuple(float(p) for p in point_lps))
        return self.index_to_zyx(continuous)


def read_volume(path: str | os.PathLike) -> Volume:
    """Read any format SimpleITK knows (NIfTI, NRRD, MHA, ...) into a ``Volume``."""
    return Volume.from_sitk(sitk.ReadImage(str(path)))


def write_volume_atomic(
    volume: Volume, path: str | os.PathLike, array: np.ndarray | None = None, *, compression_level: int = -1
) -> Path:
    """Write ``array`` (default: the volume's) with the volume's geometry; temp file + rename.

    ``compression_level``: gzip level for compressed formats (1 = fastest, 9 = smallest,
    -1 = the writer's default)."""
    target = Path(path)
    with atomic_target(target, suffix="".join(target.suffixes) or ".nii.gz") as tmp:
        sitk.WriteImage(volume.to_sitk(array), tmp, True, compression_level)
    return target
