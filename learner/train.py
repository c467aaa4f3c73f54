"""Offline training: iteration-based, under a wall-clock budget and/or an iteration cap.

Functional core: :func:`train` (settings + loaded cases -> :class:`TrainResult`), with
:func:`training_step` (one optimiser update, reused by online learning) and :func:`evaluate`
(3D metrics of a model on cases). The command-line shells live in learner/commands.py and
learner/bench/offline.py.

Time accounting: the budget (``minutes``) counts training steps only; validation runs in
between and is reported separately (``validation_seconds``). The poly learning rate follows
progress = max(elapsed / budget, iteration / max_iterations).
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from learner.checkpoints import save_checkpoint
from learner.data import Case, SliceDataset, augment_batch
from learner.device import PRECISIONS, autocast, resolve_precision, select_device
from learner.inference import predict_volume
from learner.metrics import case_metrics, dice_per_class, summarize
from learner.networks import build_network
from learner.objective import (
    SCRIBBLE_METHODS,
    Objective,
    ObjectiveWeights,
    build_objective,
    network_config_for,
)
from learner.postprocess import DEFAULT_POSTPROCESSING, POSTPROCESSING, postprocess_labels
from learner.scribbles import ScribbleEffort, boundary_effort, simulate_scribbles
from registration.io.volume import UNLABELLED

OPTIMIZERS = ("sgd", "adamw")
#: Largest default training size (slices are resized to size x size, a multiple of 16): on a
#: CPU, 128 keeps ACDC's resolution loss small (a perfect 128 x 128 prediction resized back
#: scores 0.994 mean Dice on ACDC val) at a quarter of the cost of 256.
MAX_DEFAULT_SIZE = {"cpu": 128, "cuda": 256}
POLY_POWER = 0.9


@dataclass
class TrainSettings:
    method: str = "pce"
    minutes: float | None = 10.0  # training-time budget; None = only max_iterations
    max_iterations: int | None = None
    size: int | None = None  # None = default_size(train cases), capped per device
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float | None = None  # None = DEFAULT_LR[optimizer]
    weight_decay: float = 1e-4
    seed: int = 0
    val_every: int | None = None  # iterations; None = about VALIDATIONS_PER_RUN times per run
    num_classes: int | None = None  # None = read from the data
    device: str | None = None
    checkpoint: str | None = None  # best-on-validation checkpoint path
    augment: bool = True
    channels: tuple[int, ...] | None = None  # None = NetworkConfig's default
    precision: str = "auto"  # learner.device.PRECISIONS; auto = bf16 autocast where native
    postprocess: str = DEFAULT_POSTPROCESSING  # learner.postprocess.POSTPROCESSING, in every evaluation
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    progress_bar: bool = True

    def validate(self) -> None:
        if self.minutes is None and self.max_iterations is None:
            raise ValueError("give a time budget (minutes) and/or max_iterations")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError("minutes must be positive")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError("max_iterations must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}")
        if self.size is not None and (self.size < 16 or self.size % 16):
            raise ValueError("size must be a positive multiple of 16")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        if self.postprocess not in POSTPROCESSING:
            raise ValueError(f"postprocess must be one of {POSTPROCESSING}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")


DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-3}
VALIDATIONS_PER_RUN = 8


@dataclass
class TrainResult:
    method: str
    iterations: int
    train_seconds: float
    validation_seconds: float
    size: int
    batch: int
    num_classes: int
    lr: float
    optimizer: str
    channels: tuple[int, ...]
    precision: str
    best_iteration: int
    best_val_mean_dice: float
    checkpoint: str | None
    val_history: list[dict]
    effort: dict | None  # simulated-scribble effort over the training set, if simulated
    final_losses: dict

    @property
    def iterations_per_second(self) -> float:
        return self.iterations / self.train_seconds if self.train_seconds > 0 else 0.0


def default_size(cases: list[Case], cap: int = MAX_DEFAULT_SIZE["cuda"]) -> int:
    """The median in-plane extent max(y, x), rounded up to a multiple of 16, at most ``cap``."""
    extents = [max(c.image.array.shape[1:]) for c in cases]
    size = int(math.ceil(float(np.median(extents)) / 16.0) * 16)
    return max(16, min(size, cap))


def num_classes_of(*case_lists: list[Case]) -> int:
    """max label + 1 over dense labels and scribbles (UNLABELLED excluded); at least 2."""
    highest = 0
    for cases in case_lists:
        for case in cases:
            if case.label is not None:
                highest = max(highest, int(case.label.max()))
            if case.scribble is not None:
                drawn = case.scribble[case.scribble != UNLABELLED]
                if drawn.size:
                    highest = max(highest, int(drawn.max()))
    return max(highest + 1, 2)


@dataclass
class SimulatedEffort:
    """Effort of the scribbles simulated for a training set (totals over its volumes)."""

    effort: ScribbleEffort
    boundary_pixels_touched: int  # ground-truth boundary pixels on the slices touched
    boundary_pixels_all: int  # ... on every slice (the cost of a full annotation)

    def to_dict(self) -> dict:
        data = self.effort.to_dict()
        data.pop("slice_indices")
        return {**data, "boundary_pixels_touched": self.boundary_pixels_touched,
                "boundary_pixels_all": self.boundary_pixels_all}


def ensure_scribbles(cases: list[Case], num_classes: int, seed: int) -> SimulatedEffort | None:
    """Give every case without scribbles simulated ones (seeded by ``seed`` and the case name,
    so independent of the case order); None when every case had scribbles already."""
    total: ScribbleEffort | None = None
    touched_sum = all_sum = 0
    for case in cases:
        if case.scribble is not None:
            continue
        if case.label is None:
            raise ValueError(f"case {case.name} has neither scribbles nor labels")
        simulated = simulate_scribbles(case.label, num_classes=num_classes, seed=seed ^ zlib.crc32(case.name.encode()))
        case.scribble = simulated.scribble
        total = simulated.effort if total is None else total + simulated.effort
        touched, every = boundary_effort(case.label, simulated.effort.slice_indices)
        touched_sum += touched
        all_sum += every
    return None if total is None else SimulatedEffort(total, touched_sum, all_sum)


def poly_lr(base_lr: float, progress: float, power: float = POLY_POWER) -> float:
    return base_lr * max(0.0, 1.0 - progress) ** power


def training_step(model: torch.nn.Module, objective: Objective, batch: dict,
                  optimizer: torch.optim.Optimizer, precision: str = "fp32") -> dict[str, float]:
    """One update: forward, objective, backward, step, teacher update. ``batch`` tensors must be
    on the model's device (see learner/objective.py for the keys); ``precision`` is a resolved
    learner.device precision (``fp32`` or ``bf16`` autocast). Returns the loss parts."""
    model.train()
    device = batch["image"].device
    with autocast(device, precision):
        output = model(batch["image"])
        teacher_output = objective.teacher_output(batch) if objective.uses_teacher else None
        losses = objective(output, batch, teacher_output)
    total = losses["total"]
    if not torch.isfinite(total):
        raise FloatingPointError(f"non-finite loss: { {k: float(v) for k, v in losses.items()} }")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    objective.after_step(model)
    return {name: float(value.detach()) for name, value in losses.items()}


def evaluate(model: torch.nn.Module, cases: list[Case], *, size: int, num_classes: int,
             with_hd95: bool = True, device: torch.device | None = None,
             postprocess: str) -> dict:
    """Mean 3D metrics over ``cases`` (dense labels needed): see learner.metrics.summarize.
    Predictions go through ``learner.postprocess.postprocess_labels(.., postprocess)`` first.
    HD95 uses each case's spacing (voxel units for HDF5 data, which keeps none); the result's
    ``hd95_unit`` says which ("mm", or "voxels" as soon as one case has no spacing)."""
    per_case = []
    for case in cases:
        if case.label is None:
            raise ValueError(f"case {case.name} has no label to evaluate against")
        pred = predict_volume(model, case.image.array, size=size, device=device).argmax(axis=0)
        pred = postprocess_labels(pred, num_classes, postprocess)
        if with_hd95:
            per_case.append(case_metrics(pred, case.label, num_classes, case.image.spacing_zyx))
        else:
            per_case.append({cls: {"dice": d} for cls, d in dice_per_class(pred, case.label, num_classes).items()})
    summary = summarize(per_case)
    if not with_hd95:
        return summary
    summary["hd95_unit"] = "mm" if all(case.spacing_known for case in cases) else "voxels"
    return summary


def _make_optimizer(model: torch.nn.Module, settings: TrainSettings, lr: float) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=settings.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=settings.weight_decay)


class _Progress:
    """tqdm over iterations (with a cap) or over budget seconds (time-only)."""

    def __init__(self, settings: TrainSettings):
        from tqdm import tqdm

        self.by_time = settings.max_iterations is None
        total = int(settings.minutes * 60) if self.by_time else settings.max_iterations
        # By time the bar counts training seconds; iterations show in the postfix.
        bar_format = "{l_bar}{bar}| {n}/{total} s [{elapsed}<{remaining}{postfix}]" if self.by_time else None
        self.bar = tqdm(total=total, unit="it", desc=f"train {settings.method}", disable=not settings.progress_bar,
                        dynamic_ncols=True, mininterval=1.0, bar_format=bar_format)

    def update(self, iteration: int, elapsed: float, postfix: dict) -> None:
        self.bar.n = min(int(elapsed), self.bar.total) if self.by_time else iteration
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def train(settings: TrainSettings, train_cases: list[Case], val_cases: list[Case]
          ) -> tuple[TrainResult, torch.nn.Module]:
    """Train a fresh network on ``train_cases``; keep the best model on ``val_cases`` (mean
    Dice), written to ``settings.checkpoint`` when given. Returns the result and the model
    holding the best weights (eval mode). Cases without scribbles get simulated ones."""
    settings.validate()
    if not val_cases:
        raise ValueError("a validation set is needed for best-checkpoint selection")
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed % 2**32)
    device = select_device(settings.device)
    num_classes = settings.num_classes or num_classes_of(train_cases, val_cases)
    size = settings.size or default_size(train_cases, MAX_DEFAULT_SIZE.get(device.type, MAX_DEFAULT_SIZE["cpu"]))
    method = settings.method
    precision = resolve_precision(device, settings.precision)

    effort = None
    if method in SCRIBBLE_METHODS:
        simulated = ensure_scribbles(train_cases, num_classes, settings.seed)
        effort = simulated.to_dict() if simulated is not None else None
    targets = ("label",) if method == "full" else ("scribble",)
    dataset = SliceDataset(train_cases, size=size, targets=targets)

    config = network_config_for(method, num_classes, **({"channels": settings.channels} if settings.channels else {}))
    if size % config.size_multiple:
        raise ValueError(f"size {size} must be a multiple of {config.size_multiple} for channels {config.channels}")
    model = build_network(config).to(device)
    objective = build_objective(method, num_classes, settings.weights).to(device)
    objective.bind(model)
    base_lr = settings.lr if settings.lr is not None else DEFAULT_LR[settings.optimizer]
    optimizer = _make_optimizer(model, settings, base_lr)
    generator = torch.Generator().manual_seed(settings.seed)

    budget = settings.minutes * 60.0 if settings.minutes is not None else math.inf
    val_every = settings.val_every
    if val_every is None and settings.minutes is None:
        val_every = max(1, settings.max_iterations // VALIDATIONS_PER_RUN)
    val_interval_seconds = budget / VALIDATIONS_PER_RUN  # used when val_every is None
    history: list[dict] = []
    best = {"dice": -1.0, "iteration": 0, "state": None}
    metadata = {"method": method, "size": size, "num_classes": num_classes, "seed": settings.seed,
                "postprocess": settings.postprocess}

    def validate(iteration: int) -> None:
        summary = evaluate(model, val_cases, size=size, num_classes=num_classes, with_hd95=False, device=device,
                           postprocess=settings.postprocess)
        history.append({"iteration": iteration, "train_seconds": round(train_seconds, 2), "mean_dice": summary["mean_dice"]})
        if summary["mean_dice"] > best["dice"]:
            best.update(dice=summary["mean_dice"], iteration=iteration,
                        state={k: v.detach().clone() for k, v in model.state_dict().items()})
            if settings.checkpoint:
                save_checkpoint(settings.checkpoint, model, config,
                                {**metadata, "iteration": iteration, "val_mean_dice": summary["mean_dice"]})

    progress_bar = _Progress(settings)
    iteration = 0
    train_seconds = validation_seconds = 0.0
    last_validation_time = 0.0
    losses: dict[str, float] = {}
    try:
        while True:
            progress = train_seconds / budget
            if settings.max_iterations is not None:
                progress = max(progress, iteration / settings.max_iterations)
            if progress >= 1.0:
                break
            started = time.perf_counter()
            lr = poly_lr(base_lr, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr
            objective.progress = progress
            batch = dataset.random_batch(settings.batch_size, generator)
            if settings.augment:
                batch = augment_batch(batch, generator)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            losses = training_step(model, objective, batch, optimizer, precision)
            iteration += 1
            train_seconds += time.perf_counter() - started
            if val_every:
                due = iteration % val_every == 0
            else:
                due = train_seconds - last_validation_time >= val_interval_seconds
            if due:
                started = time.perf_counter()
                validate(iteration)
                validation_seconds += time.perf_counter() - started
                last_validation_time = train_seconds
            progress_bar.update(iteration, train_seconds, {
                "it": iteration, "loss": f"{losses['total']:.3f}", "lr": f"{lr:.2e}",
                "val": f"{best['dice']:.3f}" if best["dice"] >= 0 else "-"})
        if not history or history[-1]["iteration"] != iteration:
            started = time.perf_counter()
            validate(iteration)
            validation_seconds += time.perf_counter() - started
    finally:
        progress_bar.close()

    model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(
        method=method, iterations=iteration, train_seconds=train_seconds, validation_seconds=validation_seconds,
        size=size, batch=settings.batch_size, num_classes=num_classes, lr=base_lr, optimizer=settings.optimizer,
        channels=config.channels, precision=precision,
        best_iteration=best["iteration"], best_val_mean_dice=best["dice"], checkpoint=settings.checkpoint,
        val_history=history, effort=effort, final_losses=losses,
    ), model

