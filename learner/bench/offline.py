"""The offline benchmark: train one method under a budget on --train, select the best model
on --val, score it on --val and --test, write one JSON document.

JSON fields: method, minutes, max_iterations, iterations, iterations_per_second, batch, size,
lr, optimizer, channels, precision, postprocess, seed, num_classes, train_seconds, validation_seconds, wall_seconds,
best_iteration, val_history, effort (simulated scribbles, else null), checkpoint, data
directories, device, threads, load_average (start, end: 1-minute load of the machine),
val and test: {mean_dice, mean_hd95, cases, hd95_unit, hd95_undefined,
per_class: {"1": {dice, hd95, hd95_undefined}, ...}} (``learner.metrics.summarize``), after
``postprocess``. NaN (an undefined HD95) is written as null.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from learner.checkpoints import load_checkpoint
from learner.data import load_cases
from learner.device import select_device
from learner.postprocess import DEFAULT_POSTPROCESSING
from learner.train import evaluate, train
from registration.io.atomic import write_json_atomic


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_report_json(data: dict, path: str | os.PathLike) -> Path:
    return write_json_atomic(path, _json_safe(data), indent=2, sort_keys=False, allow_nan=False)


def run_training(settings, train_dir: str, val_dir: str, test_dir: str | None, threads: int | None = None) -> dict:
    """Load the directories, train, evaluate the best model on val (and test); the report dict."""
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    train_cases, val_cases = load_cases(train_dir), load_cases(val_dir)
    test_cases = load_cases(test_dir) if test_dir else None
    result, model = train(settings, train_cases, val_cases)
    device = select_device(settings.device)
    report = {
        "method": result.method,
        "minutes": settings.minutes,
        "max_iterations": settings.max_iterations,
        "iterations": result.iterations,
        "iterations_per_second": result.iterations_per_second,
        "batch": result.batch,
        "size": result.size,
        "lr": result.lr,
        "optimizer": result.optimizer,
        "channels": list(result.channels),
        "precision": result.precision,
        "seed": settings.seed,
        "num_classes": result.num_classes,
        "train_seconds": result.train_seconds,
        "validation_seconds": result.validation_seconds,
        "best_iteration": result.best_iteration,
        "val_history": result.val_history,
        "final_losses": result.final_losses,
        "effort": result.effort,
        "checkpoint": result.checkpoint,
        "data": {"train": str(train_dir), "val": str(val_dir), "test": None if test_dir is None else str(test_dir)},
        "device": str(device),
        "threads": torch.get_num_threads(),
        "postprocess": settings.postprocess,
        "val": evaluate(model, val_cases, size=result.size, num_classes=result.num_classes, device=device,
                        postprocess=settings.postprocess),
    }
    if test_cases is not None:
        report["test"] = evaluate(model, test_cases, size=result.size, num_classes=result.num_classes, device=device,
                                  postprocess=settings.postprocess)
    report["wall_seconds"] = time.perf_counter() - started
    report["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
    return report


def run_offline_benchmark(settings, train_dir: str, val_dir: str, test_dir: str, out: str | os.PathLike, *,
                          checkpoint: str | None = None, threads: int | None = None) -> dict:
    """``scribbleflow bench offline``: train with ``settings`` (a ``TrainSettings``), score val
    and test, write the report to ``out``; the checkpoint defaults to ``out`` with ``.pt``."""
    settings.checkpoint = checkpoint or str(Path(out).with_suffix(".pt"))
    report = run_training(settings, train_dir, val_dir, test_dir, threads=threads)
    write_report_json(report, out)
    return report


def evaluate_checkpoint(checkpoint: str, data_dir: str, *, postprocess: str | None = None,
                        device: str | None = None, threads: int | None = None) -> dict:
    """Score a saved model on a labelled directory (``scribbleflow evaluate``): {checkpoint,
    data, postprocess, size, num_classes, metadata, device, scores: learner.metrics.summarize + hd95_unit}.
    ``postprocess`` None = the one the checkpoint was validated with (its metadata), else
    learner.postprocess.DEFAULT_POSTPROCESSING."""
    if threads:
        torch.set_num_threads(threads)
    target = select_device(device)
    model, config, metadata = load_checkpoint(checkpoint, device=target)
    if "size" not in metadata:
        raise ValueError(f"{checkpoint}: no training size in its metadata; was it written by train or bench offline?")
    num_classes = int(metadata.get("num_classes", config.num_classes))
    postprocess = postprocess or metadata.get("postprocess", DEFAULT_POSTPROCESSING)
    cases = load_cases(data_dir)
    started = time.perf_counter()
    scores = evaluate(model, cases, size=int(metadata["size"]), num_classes=num_classes, device=target,
                      postprocess=postprocess)
    return {
        "checkpoint": str(checkpoint), "data": str(data_dir), "postprocess": postprocess,
        "size": int(metadata["size"]), "num_classes": num_classes, "metadata": metadata,
        "device": str(target), "seconds": time.perf_counter() - started, "scores": scores,
    }
