"""Dataset readers (both layouts), slice sampling, augmentation and intensity normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from learner.data import SliceDataset, augment_batch, case_paths, load_cases
from learner.preprocess import normalize_intensity, resize_labels
from registration.io.volume import UNLABELLED
from tests.helpers import ACDC_VAL, disk_and_ring, write_h5_case


def _write_nifti(path: Path, array_zyx: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0)) -> None:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing_xyz)
    sitk.WriteImage(image, str(path))


def test_h5_reader_maps_the_unlabelled_value(tmp_path):
    image, label = disk_and_ring((4, 20, 24), seed=1)
    scribble = np.full(label.shape, UNLABELLED, dtype=np.uint8)
    scribble[2, 10, 5:9] = 1
    scribble[2, 0, :3] = 0
    write_h5_case(tmp_path / "a.h5", image, label, scribble, unlabelled_value=3)
    (case,) = load_cases(tmp_path)
    assert case.name == "a"
    assert case.image.array.shape == (4, 20, 24) and case.image.array.dtype == np.float32
    assert case.label.dtype == np.int64 and np.array_equal(case.label, label)
    assert case.scribble.dtype == np.uint8
    assert set(np.unique(case.scribble)) == {0, 1, UNLABELLED}
    assert (case.scribble != UNLABELLED).sum() == 7


def test_nifti_reader_uint8_image_and_float32_mask(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    image, label = disk_and_ring((5, 12, 9), seed=2)
    _write_nifti(tmp_path / "images" / "b.nii.gz", (image * 200).astype(np.uint8), spacing_xyz=(0.5, 0.7, 2.0))
    _write_nifti(tmp_path / "labels" / "b.nii.gz", label.astype(np.float32) + 1e-4)  # float mask, not exact
    _write_nifti(tmp_path / "images" / "c.nii.gz", (image * 200).astype(np.uint8))  # no label file
    cases = load_cases(tmp_path)
    assert [c.name for c in cases] == ["b", "c"]
    b, c = cases
    assert b.image.array.shape == (5, 12, 9) and b.image.array.dtype == np.float32
    assert b.image.spacing_zyx == pytest.approx((2.0, 0.7, 0.5))
    assert b.label.dtype == np.int64 and np.array_equal(b.label, label)
    assert c.label is None and c.scribble is None


def test_case_paths_rejects_directories_without_cases(tmp_path):
    with pytest.raises(ValueError):
        case_paths(tmp_path)
    with pytest.raises(FileNotFoundError):
        case_paths(tmp_path / "missing")


@pytest.mark.skipif(not ACDC_VAL.is_dir(), reason="ACDC data not available")
def test_real_acdc_file_loads():
    from learner.data import load_case

    image_path, label_path = case_paths(ACDC_VAL)[0]
    case = load_case(image_path, label_path)
    assert case.image.array.ndim == 3
    assert case.label.shape == case.image.array.shape == case.scribble.shape
    assert set(np.unique(case.label)) <= {0, 1, 2, 3}
    assert set(np.unique(case.scribble)) <= {0, 1, 2, 3, UNLABELLED}
    assert (case.scribble != UNLABELLED).any()


def _cases(tmp_path, shapes):
    for i, shape in enumerate(shapes):
        image, label = disk_and_ring(shape, seed=i, empty_slices=1)
        scribble = np.where(label == 1, 1, UNLABELLED).astype(np.uint8)  # empty slice 0 has none
        write_h5_case(tmp_path / f"c{i}.h5", image, label, scribble)
    return load_cases(tmp_path)


def test_slice_dataset_shapes_and_labelled_slices(tmp_path):
    cases = _cases(tmp_path, [(4, 30, 22), (3, 17, 40)])
    scribbled = SliceDataset(cases, size=32, targets=("scribble", "label"))
    assert len(scribbled) == (4 - 1) + (3 - 1)  # the background-only slice of each case is dropped
    item = scribbled[0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["scribble"].shape == (32, 32) and item["scribble"].dtype == torch.int64
    assert 0.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert list(scribbled.case_index) == [0, 0, 0, 1, 1] and list(scribbled.slice_index) == [1, 2, 3, 1, 2]
    dense = SliceDataset(cases, size=16, targets=("label",), require_labelled=False)
    assert len(dense) == 7
    batch = dense.random_batch(5, torch.Generator().manual_seed(0))
    assert batch["image"].shape == (5, 1, 16, 16) and batch["label"].shape == (5, 16, 16)
    assert set(torch.unique(batch["label"]).tolist()) <= {0, 1, 2}


def test_augment_moves_image_and_labels_together():
    labels = torch.randint(0, 3, (6, 16, 16))
    batch = {"image": labels[:, None].float(), "label": labels.clone(), "scribble": labels.clone()}
    out = augment_batch(batch, torch.Generator().manual_seed(3), max_rotation_degrees=0.0)
    # Without the small rotation the transform is a rot90/flip: an exact pixel permutation.
    assert torch.allclose(out["image"][:, 0], out["label"].float(), atol=1e-4)
    assert torch.equal(out["label"], out["scribble"])
    assert not torch.equal(out["label"], labels)  # some sample was turned or flipped
    for k in range(6):
        assert torch.equal(torch.bincount(out["label"][k].flatten(), minlength=3), torch.bincount(labels[k].flatten(), minlength=3))


def test_augment_rotation_fills_outside_with_unlabelled():
    scribble = torch.zeros(4, 32, 32, dtype=torch.long)
    batch = {"image": torch.ones(4, 1, 32, 32), "scribble": scribble, "label": scribble.clone()}
    out = augment_batch(batch, torch.Generator().manual_seed(0), max_rotation_degrees=30.0)
    assert set(torch.unique(out["scribble"]).tolist()) <= {0, UNLABELLED}
    outside = out["image"][:, 0] < 0.5
    assert outside.any()  # corners came from outside the slice
    assert (out["scribble"][outside & (out["image"][:, 0] == 0)] == UNLABELLED).all()
    assert (out["label"] == 0).all()


def test_normalize_intensity_is_robust_and_bounded():
    rng = np.random.default_rng(0)
    volume = rng.normal(100, 10, (4, 20, 20)).astype(np.float32)
    volume[0, 0, 0] = 1e6  # one hot voxel must not squash the contrast
    normalised = normalize_intensity(volume)
    assert normalised.dtype == np.float32 and normalised.shape == volume.shape
    assert normalised.min() == 0.0 and normalised.max() == 1.0
    assert 0.3 < float(np.median(normalised)) < 0.7
    assert not normalize_intensity(np.full((2, 3, 3), 7, dtype=np.uint8)).any()


def test_resize_labels_keeps_values():
    labels = torch.tensor([[[0, 1], [2, UNLABELLED]]], dtype=torch.uint8)
    resized = resize_labels(labels, 4, 4)
    assert resized.dtype == torch.uint8
    assert resized[0, :2, :2].unique().tolist() == [0] and resized[0, 2:, 2:].unique().tolist() == [UNLABELLED]
