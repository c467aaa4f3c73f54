"""Offline trainer and the ``scribbleflow train`` / ``bench offline`` commands, end to end on
tiny synthetic data."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from learner.checkpoints import load_checkpoint
from learner.data import load_cases
from learner.networks import build_network
from learner.objective import network_config_for
from learner.train import TrainSettings, default_size, evaluate, num_classes_of, poly_lr, train
from tests.helpers import REPO, disk_and_ring, write_h5_dataset


def _nifti_dataset(root: Path, count: int, shape=(7, 30, 20)) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(count):
        image, label = disk_and_ring(shape, seed=10 + i)
        sitk.WriteImage(sitk.GetImageFromArray((image * 255).clip(0, 255).astype(np.uint8)), str(root / "images" / f"v{i}.nii.gz"))
        sitk.WriteImage(sitk.GetImageFromArray(label.astype(np.float32)), str(root / "labels" / f"v{i}.nii.gz"))
    return root


def test_poly_lr_and_defaults(tmp_path):
    assert poly_lr(0.01, 0.0) == 0.01 and poly_lr(0.01, 1.0) == 0.0
    assert 0 < poly_lr(0.01, 0.5) < 0.01
    cases = load_cases(write_h5_dataset(tmp_path, 2, shape_zyx=(3, 40, 70)))
    assert default_size(cases) == 80 and default_size(cases, cap=64) == 64
    assert num_classes_of(cases) == 3


def test_train_learns_and_keeps_the_best_checkpoint(tmp_path):
    train_cases = load_cases(write_h5_dataset(tmp_path / "train", 3, seed=0))
    val_cases = load_cases(write_h5_dataset(tmp_path / "val", 1, seed=50))
    settings = TrainSettings(method="pce", minutes=None, max_iterations=40, size=32, batch_size=4, lr=3e-3,
                             val_every=10, checkpoint=str(tmp_path / "best.pt"), progress_bar=False)
    result, model = train(settings, train_cases, val_cases)
    assert result.iterations == 40 and [h["iteration"] for h in result.val_history] == [10, 20, 30, 40]
    assert result.best_val_mean_dice == max(h["mean_dice"] for h in result.val_history)
    assert result.best_val_mean_dice > 0.5  # the disk/ring task is easy: it must be learnt
    loaded, config, metadata = load_checkpoint(tmp_path / "best.pt", device="cpu")
    assert metadata["iteration"] == result.best_iteration and metadata["size"] == 32
    assert config.num_classes == 3
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(loaded(x).logits, model.eval()(x).logits, atol=1e-5)


def test_train_is_seeded(tmp_path):
    train_cases = load_cases(write_h5_dataset(tmp_path / "train", 2))
    val_cases = load_cases(write_h5_dataset(tmp_path / "val", 1, seed=9))
    settings = TrainSettings(method="pce", minutes=None, max_iterations=3, size=16, batch_size=2, progress_bar=False)
    first, _ = train(settings, train_cases, val_cases)
    second, _ = train(settings, train_cases, val_cases)
    assert first.final_losses == second.final_losses


def test_train_simulates_scribbles_for_data_without_them(tmp_path):
    root = _nifti_dataset(tmp_path / "train", 2)
    val = _nifti_dataset(tmp_path / "val", 1)
    settings = TrainSettings(method="pce_crf", minutes=None, max_iterations=2, size=32, batch_size=2, progress_bar=False)
    result, _ = train(settings, load_cases(root), load_cases(val))
    effort = result.effort
    assert effort["slices_touched"] == 2 * 6  # every foreground slice of both volumes
    assert effort["voxels"] > 0 and effort["strokes"] >= 3 * 12
    assert 0 < effort["boundary_pixels_touched"] == effort["boundary_pixels_all"]
    assert result.num_classes == 3


@pytest.mark.slow
def test_bench_offline_command_writes_json(tmp_path):
    train_dir = write_h5_dataset(tmp_path / "train", 3, shape_zyx=(4, 36, 30))
    val_dir = write_h5_dataset(tmp_path / "val", 1, shape_zyx=(4, 36, 30), seed=20)
    test_dir = write_h5_dataset(tmp_path / "test", 1, shape_zyx=(5, 30, 40), seed=30)
    out = tmp_path / "result" / "pce.json"
    command = [sys.executable, "-m", "server.cli", "bench", "offline", "--train", str(train_dir), "--val", str(val_dir),
               "--test", str(test_dir), "--method", "pce", "--minutes", "0.2", "--size", "32", "--batch", "4",
               "--seed", "1", "--postprocess", "none", "--no-progress", "--out", str(out)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(out.read_text())
    assert report["postprocess"] == "none"
    for key in ("method", "minutes", "iterations", "iterations_per_second", "batch", "size", "test", "val", "checkpoint"):
        assert key in report
    assert report["method"] == "pce" and report["minutes"] == 0.2 and report["batch"] == 4 and report["size"] == 32
    assert report["iterations"] > 0 and report["iterations_per_second"] > 0
    assert 0.2 * 60 <= report["train_seconds"] < 0.2 * 60 + 30
    for split in ("val", "test"):
        assert set(report[split]["per_class"]) == {"1", "2"}
        assert 0.0 <= report[split]["mean_dice"] <= 1.0
        assert report[split]["cases"] == 1
        assert report[split]["hd95_unit"] == "voxels"  # HDF5 files carry no spacing
        for entry in report[split]["per_class"].values():
            assert 0.0 <= entry["dice"] <= 1.0 and "hd95" in entry and entry["hd95_undefined"] in (0, 1)
    assert Path(report["checkpoint"]).is_file()
    # the saved best model, re-scored by `scribbleflow evaluate`, gives the benchmark's test scores
    scored = tmp_path / "result" / "evaluate.json"
    command = [sys.executable, "-m", "server.cli", "evaluate", "--checkpoint", report["checkpoint"],
               "--data", str(test_dir), "--out", str(scored)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    rescored = json.loads(scored.read_text())
    assert rescored["postprocess"] == "none"  # taken from the checkpoint, not the CLI default
    scores = rescored["scores"]
    assert scores["mean_dice"] == pytest.approx(report["test"]["mean_dice"])
    assert scores["per_class"] == report["test"]["per_class"]


def test_evaluate_without_hd95_reports_no_distances(tmp_path):
    cases = load_cases(write_h5_dataset(tmp_path / "val", 1, seed=9))
    model = build_network(network_config_for("pce", 3)).eval()
    summary = evaluate(model, cases, size=32, num_classes=3, with_hd95=False, postprocess="none")
    assert set(summary) == {"mean_dice", "cases", "per_class"}
    assert all(set(entry) == {"dice"} for entry in summary["per_class"].values())
    with_distances = evaluate(model, cases, size=32, num_classes=3, postprocess="none")
    assert {"mean_hd95", "hd95_undefined", "hd95_unit"} <= set(with_distances)


def test_train_command_writes_checkpoint(tmp_path):
    from server.cli import main

    train_dir = write_h5_dataset(tmp_path / "train", 2)
    val_dir = write_h5_dataset(tmp_path / "val", 1, seed=5)
    out = tmp_path / "model.pt"
    code = main(["train", "--train", str(train_dir), "--val", str(val_dir), "--method", "attention",
                 "--max-iterations", "2", "--size", "32", "--batch", "2", "--no-progress", "--out", str(out)])
    assert code == 0
    _, config, metadata = load_checkpoint(out, device="cpu")
    assert config.attention_after == (1,) and metadata["method"] == "attention"


def test_precision_policy_resolves_and_refuses():
    from learner.device import PRECISIONS, bf16_supported, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "fp32") == "fp32"
    assert resolve_precision(cpu, "auto") == ("bf16" if bf16_supported(cpu) else "fp32")
    with pytest.raises(ValueError, match="precision"):
        resolve_precision(cpu, "fp16")
    with pytest.raises(ValueError, match="precision"):
        TrainSettings(precision="half").validate()
    # the CLI offers exactly the learner's precisions
    from learner.commands import add_training_arguments

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "precision")
    assert tuple(action.choices) == PRECISIONS


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_step_precision_keeps_fp32_weights_and_finite_losses(precision):
    from learner.device import bf16_supported
    from learner.networks import build_network
    from learner.objective import build_objective, network_config_for
    from learner.train import training_step

    if precision == "bf16" and not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16")
    torch.manual_seed(0)
    model = build_network(network_config_for("distill", 3, channels=(4, 8, 16)))
    objective = build_objective("distill", 3)
    objective.bind(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scribble = torch.full((2, 32, 32), 255, dtype=torch.long)
    scribble[:, 10:12, 5:20], scribble[:, 25:27, 5:20] = 1, 0
    batch = {"image": torch.rand(2, 1, 32, 32), "scribble": scribble}
    before = [p.detach().clone() for p in model.parameters()]
    losses = training_step(model, objective, batch, optimizer, precision)
    assert all(np.isfinite(v) for v in losses.values()) and losses["total"] > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
