"""`scribbleflow bench propagate` end to end on a small NIfTI directory written here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from learner.bench.propagate import choose_axis, choose_slices
from registration.io.volume import Volume, write_volume_atomic
from registration.synthetic import synthetic_volume
from server.cli import main


def test_annotator_picks_the_widest_view_and_spreads_slices():
    labels = np.zeros((10, 40, 30), dtype=np.int64)
    labels[2:8, 5:35, 4:26] = 1  # spans 6 z-slices, 30 rows, 22 columns
    assert choose_axis(labels) == 0
    assert choose_slices(labels, 1, 0) == [5]
    assert choose_slices(labels, 3, 0) == [3, 5, 7]
    assert choose_axis(np.moveaxis(labels, 0, 2)) == 2
    with pytest.raises(ValueError):
        choose_slices(np.zeros_like(labels), 2, 0)


@pytest.fixture(scope="module")
def nifti_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    for seed in range(2):
        volume = synthetic_volume((18, 40, 36), num_classes=3, seed=seed)
        geometry = Volume(volume.image, spacing_xyz=(1.0, 1.0, 2.0))
        write_volume_atomic(geometry, root / "images" / f"case{seed}.nii.gz")
        write_volume_atomic(geometry, root / "labels" / f"case{seed}.nii.gz", volume.labels)
    return root


@pytest.mark.parametrize("kind", ["mask", "scribble"])
def test_bench_propagate_writes_the_agreed_json(nifti_dir, tmp_path, kind):
    out = tmp_path / f"{kind}.json"
    code = main(["bench", "propagate", "--data", str(nifti_dir), "--slices", "3", "--input", kind, "--out", str(out), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("slices", "input", "mean_dice", "per_class", "latency_p50_s", "latency_p95_s", "volumes", "calibration"):
        assert key in result
    assert result["slices"] == 3 and result["input"] == kind and result["volumes"] == 2
    assert set(result["per_class"]) == {"1", "2"}  # classes found in the data, not hard-coded
    assert result["mean_dice"] == pytest.approx(np.mean(list(result["per_class"].values())))
    assert result["mean_dice"] > (0.85 if kind == "mask" else 0.6)
    assert 0 < result["latency_p50_s"] <= result["latency_p95_s"]
    assert 0 < result["calibration"]["voxel_fraction_confident"] < 1
