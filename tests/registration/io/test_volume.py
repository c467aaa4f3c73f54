"""The (z, y, x) axis convention at the I/O edge, on a non-cubic volume with real files."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from registration.io.volume import Volume, read_volume, write_volume_atomic


def test_write_read_keeps_zyx_order_and_geometry(tmp_path):
    array = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)  # (z, y, x)
    volume = Volume(array, spacing_xyz=(0.5, 0.8, 3.0), origin_xyz=(10.0, -20.0, 5.0))
    assert volume.spacing_zyx == (3.0, 0.8, 0.5)
    path = write_volume_atomic(volume, tmp_path / "v.nii.gz")
    # SimpleITK sees (x, y, z) = (5, 4, 3) and voxel (i, j, k) = array[k, j, i].
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (5, 4, 3)
    assert image.GetPixel(4, 1, 2) == array[2, 1, 4]
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.spacing_xyz, (0.5, 0.8, 3.0), rtol=1e-6)  # NIfTI stores float32
    np.testing.assert_allclose(back.origin_xyz, (10.0, -20.0, 5.0), rtol=1e-6)
    assert not list(tmp_path.glob(".tmp-*"))


def test_index_and_physical_points_map_to_zyx():
    volume = Volume(np.zeros((3, 4, 5)), spacing_xyz=(0.5, 0.8, 3.0), origin_xyz=(10.0, -20.0, 5.0))
    assert volume.index_to_zyx((4, 1, 2)) == (2, 1, 4)
    # Voxel (i, j, k) = (4, 1, 2) lies at origin + spacing * index in LPS millimetres.
    point = (10.0 + 4 * 0.5, -20.0 + 1 * 0.8, 5.0 + 2 * 3.0)
    assert volume.physical_to_zyx(point) == (2, 1, 4)
    assert volume.physical_to_zyx((point[0] + 0.2, point[1] - 0.3, point[2] + 1.0)) == (2, 1, 4)
