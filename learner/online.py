"""One online update: fine-tune a model on one image's proxy mask or accepted label, with
trust-weighted targets, hard user labels, class balancing, residual-weighted slice sampling
and replay of earlier images.

The method (see SPEC.md, "dynamic interactive learning on streaming tasks"):

* **Targets only as far as they are trusted.** ``target = (1 − a)·Y_proxy + a·P_prev`` with
  ``a = r·(1 − w)``, where ``Y_proxy`` is the registration proxy (probabilities, or one-hot
  of its labels), ``w`` its confidence map (``confidence_mode="map"``) or the schedule
  ``σ(4(n/N − 0.5))`` over the ``n`` images seen so far (``"schedule"``, N =
  ``schedule_images``), ``P_prev`` the prediction of the *reference* model (the version
  frozen when work on this image started) and ``r`` that model's reliability on this image
  (``registration.fusion.model_reliability``: agreement with the user's drawn voxels and its
  validation Dice; 0 for an untrained model). The per-voxel loss weight is the trust
  ``w + (1 − w)·r``: an untrained model (r = 0) adds nothing, the proxy counts as far as
  its confidence, and a reliable model (r = 1) fills in far from the annotations as in
  the original label smoothing ``(1 − w)·P_prev + w·Y_proxy``. Voxels whose target is
  ambiguous (largest class probability below ``ambiguous_below``: proxy and model pull
  different ways) get weight 0.
* **User-drawn voxels are hard labels**: target one-hot, ``w = 1``, and the objective's
  partial cross-entropy sees them as scribbles. An accepted (final) label is hard
  everywhere.
* **Residual.** ``R = ½·Σ_c |target_c − P_prev,c|`` in [0, 1] (how far the update moves the
  prediction). It weights the loss, ``(1 + α·R)/(1 + α)`` with α =
  ``residual_loss_weight``, and, with the foreground fraction, the choice of slices.
* **Class balancing.** The ``online`` objective adds a weighted soft Dice over the
  foreground classes (``dice_weight``) to the weighted soft-target cross-entropy.
* **Replay.** Each batch mixes at least ``replay_per_batch`` slices of earlier images (from
  a ``ReplayBuffer``, which keeps up to ``replay_slices_per_image`` slices of each of up to
  ``replay_capacity`` images), more as the buffer grows (``replay_balance``), with slices
  of this image; afterwards this image's slices
  join the buffer (an accepted label replaces the image's earlier proxy entry).
* **Loss and steps.** The ``online`` objective of ``learner.objective`` (weighted soft-target
  cross-entropy + ``dice_weight``·soft Dice + partial cross-entropy on user voxels +
  ``crf_weight``·masked CRF), one ``learner.train.training_step`` (AdamW) per step, a fixed
  number of steps per job (default ``DEFAULT_ONLINE_STEPS``), under bf16 autocast where the
  device computes bf16 natively (``precision``; 1.8x faster per step than fp32 on an
  AVX-512-BF16/AMX Xeon core, measured in docs/benchmarks.md).

The network is 2D: volumes are handled as stacks of z-slices, each normalised and
resized exactly as ``learner.inference.predict_volume`` does (``learner.preprocess``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch

from learner.data import augment_batch
from learner.device import PRECISIONS, resolve_precision
from learner.preprocess import normalize_intensity, resize_images, resize_labels
from learner.replay import REPLAY_POLICIES, ReplayBuffer, SoftSlices
from learner.yielding import pause_in_backward
from registration.fusion import model_reliability
from registration.io.volume import UNLABELLED
from registration.labels import one_hot

#: Optimiser steps per online job unless a job says otherwise: what fits the annotation-to-model
#: budget (90 s per accepted image on 2 CPU cores at size 128; docs/benchmarks.md).
DEFAULT_ONLINE_STEPS = 200
#: Steps of the consolidation job that follows each accepted image (training on the replay buffer
#: alone while no image waits; learner.jobs.TrainJob.is_consolidation): the cold start's lever,
#: chosen with learner/bench/online_stream.py --consolidate-steps (docs/benchmarks.md).
DEFAULT_CONSOLIDATION_STEPS = 200
#: Consolidation jobs after each accepted image, one after the other (each through the gate, each
#: queued when the one before has succeeded, so jobs submitted meanwhile run between them).
DEFAULT_CONSOLIDATION_JOBS = 2
CONFIDENCE_MODES = ("map", "schedule")
#: "warmup" spares a trained model the first steps of a fresh AdamW, each about lr in every weight.
#: "warmup_decay": the same warm-up, then linearly down to 0 at the last step (an annealed end point).
LR_SCHEDULES = ("constant", "warmup", "warmup_decay")

#: progress(step, total) after each optimiser step.
ProgressCallback = Callable[[int, int], None]
#: should_stop() -> True to abandon the update (checked before every step).
StopCheck = Callable[[], bool]


class UpdateCancelled(RuntimeError):
    """Raised inside an update when ``should_stop`` asked it to end."""


#: Upper bounds of the integer settings an admin can change over the API: beyond them one job
#: would hold the worker for hours or run out of memory. Checked by :func:`check_setting_change`
#: on changes only, so settings stored before the bounds existed still load.
ONLINE_UPPER_BOUNDS = {"size": 1024, "batch_size": 64, "replay_per_batch": 63, "replay_capacity": 1000,
                       "replay_slices_per_image": 512, "schedule_images": 100_000,
                       "serve_average": 20}


def check_setting_change(change: dict) -> None:
    """Raise ValueError naming the first value of ``change`` (OnlineSettings field -> new value)
    that is not a whole number where one is needed or exceeds :data:`ONLINE_UPPER_BOUNDS`."""
    for name, most in ONLINE_UPPER_BOUNDS.items():
        if name not in change:
            continue
        value = change[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        if value > most:
            raise ValueError(f"{name} must be at most {most}, got {value}")


@dataclass
class OnlineSettings:
    """A project's learning settings for online updates (JSON-safe; see ``to_dict``)."""

    size: int = 128  # slices resized to size x size for training, inference and the gate (multiple of 16)
    batch_size: int = 4  # slices per optimiser step, replay included
    replay_per_batch: int = 2  # of those, slices from earlier images (at most batch_size − 1) when the buffer has any
    replay_balance: bool = True  # more replay slots as the buffer grows (share n/(n+1) of the free slots for n images)
    learning_rate: float = 1e-3
    lr_schedule: str = "warmup"  # "warmup": linear from 0 over warmup_fraction of the steps, then constant; "constant"
    warmup_fraction: float = 0.1
    # The schedule of consolidation jobs (None: lr_schedule): annealed to 0, so that the version each one
    # leaves is an end point of training on every stored image, not a snapshot at the full rate.
    consolidation_lr_schedule: str | None = "warmup_decay"
    keep_fraction_reliable: float = 0.5  # s: the share of an update kept over a base model of validation Dice q is 1 − q·(1 − s)
    # s of consolidation jobs (None: keep_fraction_reliable). 1: they keep all of their change, since they
    # draw every stored image alike (no pull towards one image); docs/benchmarks.md, "Consolidation".
    consolidation_keep_fraction_reliable: float | None = 1.0
    weight_decay: float = 1e-4
    confidence_mode: str = "map"  # "map": the proxy's confidence map; "schedule": σ(4(n/N − 0.5))
    schedule_images: int = 20  # N of the schedule
    residual_loss_weight: float = 1.0  # α in (1 + α·R)/(1 + α)
    sampling_floor: float = 0.05  # slice sampling weight every slice gets before residual/foreground
    augment: bool = True  # random intensity scale/shift of training slices
    spatial_augment: bool = True  # random rot90, flip and ±15° rotation per slice (learner.data.augment_batch)
    crf_weight: float | None = None  # weight of the objective's CRF term; None: the objective's default
    dice_weight: float = 1.0  # weight of the soft Dice term (class balancing); 0: none
    ambiguous_below: float = 0.5  # voxels whose target's largest probability is below this get weight 0
    replay_capacity: int = 100  # images kept in the replay buffer (0: no replay)
    replay_policy: str = "fifo"  # "fifo" or "reservoir" (see learner.replay)
    replay_slices_per_image: int = 32  # slices of each image stored for replay (every slice of most volumes)
    promotion_tolerance: float = 0.02  # allowed drop of mean validation Dice at the promotion gate
    # K: the gate also weighs the mean weights of the job's version and the K − 1 it descends from, and
    # serves the better (learner.averaging, learner.registry); 1: no averaging.
    serve_average: int = 3
    precision: str = "auto"  # training steps: "auto" = bf16 autocast where the CPU/GPU computes bf16 natively, else fp32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 16 or self.size % 16:
            raise ValueError(f"size must be a positive multiple of 16, got {self.size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.replay_per_batch < 0:
            raise ValueError(f"replay_per_batch must not be negative, got {self.replay_per_batch}")
        if self.confidence_mode not in CONFIDENCE_MODES:
            raise ValueError(f"confidence_mode must be one of {CONFIDENCE_MODES}, got {self.confidence_mode!r}")
        if self.replay_policy not in REPLAY_POLICIES:
            raise ValueError(f"replay_policy must be one of {REPLAY_POLICIES}, got {self.replay_policy!r}")
        if self.serve_average < 1:
            raise ValueError(f"serve_average must be at least 1, got {self.serve_average}")
        if self.schedule_images < 1:
            raise ValueError(f"schedule_images must be at least 1, got {self.schedule_images}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.consolidation_lr_schedule not in (None, *LR_SCHEDULES):
            raise ValueError(f"consolidation_lr_schedule must be one of {LR_SCHEDULES} or None, "
                             f"got {self.consolidation_lr_schedule!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must lie in [0, 1), got {self.warmup_fraction}")
        for name in ("keep_fraction_reliable", "consolidation_keep_fraction_reliable"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.crf_weight is not None and self.crf_weight < 0:
            raise ValueError(f"crf_weight must not be negative, got {self.crf_weight}")
        if not 0 <= self.ambiguous_below <= 1:
            raise ValueError(f"ambiguous_below must lie in [0, 1], got {self.ambiguous_below}")
        for name in ("learning_rate", "weight_decay", "residual_loss_weight", "dice_weight",
                     "sampling_floor", "promotion_tolerance", "replay_capacity", "replay_slices_per_image"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict | None) -> OnlineSettings:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown online learning settings {unknown}; known: {sorted(known)}")
        return cls(**values)


# ---------------------------------------------------------------------------------------
# Targets (pure NumPy; any array shapes that broadcast as documented)
# ---------------------------------------------------------------------------------------


def schedule_weight(images_seen: int, schedule_images: int) -> float:
    """``σ(4(n/N − 0.5))``: the proxy's weight after ``n`` images of an expected ``N``."""
    return 1.0 / (1.0 + math.exp(-4.0 * (images_seen / schedule_images - 0.5)))


def label_smoothing_target(previous: np.ndarray, proxy: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``(1 − w)·P_prev + w·Y_proxy``.

    previous, proxy: (C, ...) class probabilities; weight: (...) in [0, 1], or a scalar.
    Returns float32 (C, ...) probabilities.
    """
    w = np.clip(np.asarray(weight, dtype=np.float32), 0.0, 1.0)
    return ((1.0 - w) * previous + w * proxy).astype(np.float32)


def apply_user_labels(
    target: np.ndarray, weight: np.ndarray, user_labels: np.ndarray | None, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where the user drew (``user_labels`` != UNLABELLED) the target is one-hot, weight 1.

    target (C, ...), weight (...), user_labels int (...) with UNLABELLED where none.
    Returns new (target, weight); inputs are not modified.
    """
    if user_labels is None:
        return target, weight
    drawn = user_labels != UNLABELLED
    if not drawn.any():
        return target, weight
    if int(user_labels[drawn].max()) >= num_classes:
        raise ValueError(f"user labels hold values >= num_classes ({num_classes}) besides UNLABELLED")
    target = np.where(drawn[None], one_hot(np.where(drawn, user_labels, 0), num_classes), target)
    weight = np.where(drawn, 1.0, weight)
    return target.astype(np.float32), weight.astype(np.float32)


def trusted_target(
    previous: np.ndarray, proxy: np.ndarray, confidence: np.ndarray, reliability: float
) -> tuple[np.ndarray, np.ndarray]:
    """(target, trust): ``target = (1 − a)·proxy + a·previous`` with ``a = r·(1 − w)`` and
    ``trust = w + (1 − w)·r`` (see the module docstring).

    previous, proxy: (C, ...) probabilities; confidence w: (...) in [0, 1] (or a scalar);
    reliability r of the previous model in [0, 1]. Returns float32 (C, ...) and (...).
    With r = 1 the target is ``label_smoothing_target(previous, proxy, w)`` and the trust 1.
    """
    r = float(np.clip(reliability, 0.0, 1.0))
    w = np.clip(np.asarray(confidence, dtype=np.float32), 0.0, 1.0)
    target = label_smoothing_target(previous, proxy, 1.0 - r * (1.0 - w))
    trust = np.broadcast_to(w + (1.0 - w) * r, target.shape[1:])
    return target, trust.astype(np.float32)


def residual(target: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``½·Σ_c |target_c − previous_c|``: (C, ...) x2 -> float32 (...) in [0, 1]."""
    return (0.5 * np.abs(target - previous).sum(axis=0)).astype(np.float32)


@dataclass
class OnlineExample:
    """What one image offers to an online update; every volume is (z, y, x) of one shape.

    image: raw intensities, any numeric type.
    proxy_probabilities: float (C, z, y, x) from registration, or None.
    proxy_labels: int (z, y, x) in [0, C), used when there are no proxy probabilities.
    confidence: float (z, y, x) in [0, 1], the proxy's confidence map (1 on annotated slices).
    user_labels: int (z, y, x), the user's drawn labels, UNLABELLED where nothing was drawn.
    accepted_label: int (z, y, x), the final label after accept: a hard target everywhere.
    """

    image: np.ndarray
    num_classes: int
    proxy_probabilities: np.ndarray | None = None
    proxy_labels: np.ndarray | None = None
    confidence: np.ndarray | None = None
    user_labels: np.ndarray | None = None
    accepted_label: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3:
            raise ValueError(f"image must be a 3D (z, y, x) array, got shape {self.image.shape}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        shape = self.image.shape
        for name in ("proxy_labels", "confidence", "user_labels", "accepted_label"):
            array = getattr(self, name)
            if array is not None and array.shape != shape:
                raise ValueError(f"{name} shape {array.shape} does not match image {shape}")
        if self.proxy_probabilities is not None and self.proxy_probabilities.shape != (self.num_classes, *shape):
            raise ValueError(
                f"proxy_probabilities shape {self.proxy_probabilities.shape} != (num_classes, *image shape) "
                f"= {(self.num_classes, *shape)}"
            )
        for name in ("proxy_labels", "accepted_label"):
            array = getattr(self, name)
            if array is not None and (array.min() < 0 or array.max() >= self.num_classes):
                raise ValueError(f"{name} values must lie in [0, {self.num_classes}), got [{array.min()}, {array.max()}]")


def proxy_target(example: OnlineExample, settings: OnlineSettings, images_seen: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``Y_proxy`` (C, z, y, x) and its weight ``w`` (z, y, x), user voxels already hard.

    Accepted label: hard everywhere (w = 1). Proxy: probabilities (or one-hot labels)
    weighted by the confidence map (all ones when absent) or the schedule. Neither: only
    the user's voxels carry a target (w = 0 elsewhere, so the target is P_prev).
    """
    shape = example.image.shape
    c = example.num_classes
    if example.accepted_label is not None:
        return one_hot(example.accepted_label, c), np.ones(shape, np.float32)
    if example.proxy_probabilities is not None or example.proxy_labels is not None:
        if example.proxy_probabilities is not None:
            y = np.clip(example.proxy_probabilities.astype(np.float32), 0.0, None)
            y /= np.maximum(y.sum(axis=0, keepdims=True), 1e-8)
        else:
            y = one_hot(example.proxy_labels, c)
        if settings.confidence_mode == "schedule":
            w = np.full(shape, schedule_weight(images_seen, settings.schedule_images), np.float32)
        elif example.confidence is not None:
            w = np.clip(example.confidence.astype(np.float32), 0.0, 1.0)
        else:
            w = np.ones(shape, np.float32)
    else:
        y = np.full((c, *shape), 1.0 / c, np.float32)
        w = np.zeros(shape, np.float32)
    return apply_user_labels(y, w, example.user_labels, c)


# ---------------------------------------------------------------------------------------
# Training-size slices of one image
# ---------------------------------------------------------------------------------------


@dataclass
class PreparedImage:
    """One image at training size S (z-slices), ready for sampling.

    images: float32 (Z, S, S) normalised; targets: float32 (Z, C, S, S) fused targets;
    weights: float32 (Z, S, S) loss weights in [0, 1]; scribble: uint8 (Z, S, S) hard user
    labels, UNLABELLED elsewhere; residual: float32 (Z, S, S) in [0, 1];
    slice_probabilities: float64 (Z,) summing to 1, the chance of drawing each slice.
    """

    images: np.ndarray
    targets: np.ndarray
    weights: np.ndarray
    scribble: np.ndarray
    residual: np.ndarray
    slice_probabilities: np.ndarray
    trust: np.ndarray | None = None  # float32 (Z, S, S): the weights without the residual factor (for replay)
    reliability: float = 0.0  # of the reference model on this image (registration.fusion.model_reliability)

    def soft_slices(self, indices: np.ndarray) -> SoftSlices:
        return SoftSlices(self.images[indices], self.targets[indices], self.weights[indices])


def _resize_volume(array_czyx: np.ndarray, size: int) -> np.ndarray:
    """float (C, z, y, x) -> float32 (z, C, S, S), bilinear per slice."""
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array_czyx, 0, 1), dtype=np.float32))
    return resize_images(t, size, size).numpy()


@torch.no_grad()
def predict_slices(model: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 16) -> np.ndarray:
    """Softmax probabilities float32 (Z, C, S, S) of normalised slices (Z, S, S)."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = torch.from_numpy(images[start : start + batch_size])[:, None].to(device)
            out.append(torch.softmax(model(x).logits.float(), dim=1).cpu().numpy())
        return np.concatenate(out)
    finally:
        model.train(was_training)


def prepare_image(
    example: OnlineExample,
    reference_model: torch.nn.Module | None,
    settings: OnlineSettings,
    *,
    images_seen: int = 0,
    validation_dice: float | None = None,
    device: torch.device | None = None,
) -> PreparedImage:
    """Trusted targets, loss weights and sampling probabilities of ``example`` at training size.

    ``reference_model`` gives P_prev (it is only evaluated, never changed; None: an untrained
    model, P_prev uniform); its reliability
    comes from its agreement with the user's voxels and ``validation_dice`` (its mean Dice
    on the project's validation images, when measured).
    """
    device = device or torch.device("cpu")
    size = settings.size
    c = example.num_classes
    images = resize_images(torch.from_numpy(normalize_intensity(example.image))[:, None], size, size)[:, 0].numpy()
    if reference_model is None:  # untrained: what the user was shown, every class equally likely
        previous = np.full((images.shape[0], c, size, size), 1.0 / c, np.float32)
    else:
        previous = predict_slices(reference_model, images, device)
    if previous.shape[1] != c:
        raise ValueError(f"the reference model predicts {previous.shape[1]} classes, the image has {c}")

    y, w = proxy_target(example, settings, images_seen)
    y_s = _resize_volume(y, size)
    y_s /= np.maximum(y_s.sum(axis=1, keepdims=True), 1e-8)
    w_s = np.clip(_resize_volume(w[None], size)[:, 0], 0.0, 1.0)
    if example.user_labels is not None:
        scribble = resize_labels(torch.from_numpy(example.user_labels.astype(np.uint8)), size, size).numpy()
    else:
        scribble = np.full(images.shape, UNLABELLED, np.uint8)
    # The (C, ...) target functions take classes first; slices here are (Z, C, S, S).
    previous_c = np.moveaxis(previous, 1, 0)
    reliability = model_reliability(previous_c, scribble, validation_dice)
    target_c, trust = trusted_target(previous_c, np.moveaxis(y_s, 1, 0), w_s, reliability)
    target_c, trust = apply_user_labels(target_c, trust, scribble, c)
    trust = np.where(target_c.max(axis=0) < settings.ambiguous_below, 0.0, trust)
    target = np.moveaxis(target_c, 0, 1)

    r = residual(target_c, previous_c)
    alpha = settings.residual_loss_weight
    weights = (trust * (1.0 + alpha * r) / (1.0 + alpha)).astype(np.float32)

    foreground = 1.0 - target[:, 0]
    score = settings.sampling_floor + (trust * r).mean(axis=(1, 2)) + foreground.mean(axis=(1, 2))
    score = np.maximum(score.astype(np.float64), 1e-12)
    return PreparedImage(
        images=np.ascontiguousarray(images, np.float32),
        targets=np.ascontiguousarray(target, np.float32),
        weights=weights,
        scribble=scribble,
        residual=r,
        slice_probabilities=score / score.sum(),
        trust=trust.astype(np.float32),
        reliability=reliability,
    )


def replay_slices(prepared: PreparedImage, count: int, seed: int = 0) -> SoftSlices:
    """Up to ``count`` distinct slices, drawn by ``slice_probabilities``, to store for replay.

    Their weights are the targets' trust without the residual factor: the residual is
    measured against the reference model of this job and means nothing to later ones.
    """
    n = prepared.images.shape[0]
    count = min(count, int(np.count_nonzero(prepared.slice_probabilities)), n)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=count, replace=False, p=prepared.slice_probabilities))
    weights = prepared.trust if prepared.trust is not None else prepared.weights
    return SoftSlices(prepared.images[chosen], prepared.targets[chosen], weights[chosen])


# ---------------------------------------------------------------------------------------
# The update
# ---------------------------------------------------------------------------------------


@dataclass
class UpdateResult:
    losses: list[float]  # total loss per step
    steps: int
    seconds: float
    replay_slices_used: int
    kept_share: float = 1.0  # the share of the trained change kept (see kept_share)


def _make_batch(
    prepared: PreparedImage | None,
    replay: SoftSlices | None,
    current: np.ndarray,
    rng: np.random.Generator,
    settings: OnlineSettings,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    images, targets, weights, scribbles = [], [], [], []
    if prepared is not None:
        images.append(prepared.images[current])
        targets.append(prepared.targets[current])
        weights.append(prepared.weights[current])
        scribbles.append(prepared.scribble[current])
    if replay is not None:
        images.append(replay.images)
        targets.append(replay.targets)
        weights.append(replay.weights)
        scribbles.append(np.full(replay.images.shape, UNLABELLED, np.uint8))
    image = np.concatenate(images)
    if settings.augment:
        scale = rng.uniform(0.9, 1.1, size=(image.shape[0], 1, 1))
        shift = rng.uniform(-0.05, 0.05, size=(image.shape[0], 1, 1))
        image = (image * scale + shift).astype(np.float32)
    batch = {
        "image": torch.from_numpy(image)[:, None],
        "target": torch.from_numpy(np.concatenate(targets)),
        "weight": torch.from_numpy(np.concatenate(weights)),
        "scribble": torch.from_numpy(np.concatenate(scribbles).astype(np.int64)),
    }
    if settings.spatial_augment:
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        batch = augment_batch(batch, generator)
    return {key: value.to(device) for key, value in batch.items()}


def _job_setting(settings: OnlineSettings, name: str, consolidation: bool):
    """Setting ``name``, or for a ``consolidation`` job its ``consolidation_<name>`` when that is set."""
    own = getattr(settings, f"consolidation_{name}") if consolidation else None
    return getattr(settings, name) if own is None else own


def job_learning_rate(settings: OnlineSettings, step: int, steps: int, consolidation: bool = False) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of a ``steps``-step update (a
    ``consolidation`` job follows ``consolidation_lr_schedule`` when that is set)."""
    schedule = _job_setting(settings, "lr_schedule", consolidation)
    base = settings.learning_rate
    warmup = int(settings.warmup_fraction * steps) if schedule != "constant" else 0
    if step < warmup:
        return base * (step + 1) / (warmup + 1)
    if schedule == "warmup_decay":
        return base * (steps - step) / (steps - warmup)
    return base


def kept_share(settings: OnlineSettings, base_quality: float | None, consolidation: bool = False) -> float:
    """α in ``θ_base + α·(θ_trained − θ_base)``: ``1 − q·(1 − s)`` for a base model of validation
    Dice q (0 when unmeasured), s = ``keep_fraction_reliable`` (for a ``consolidation`` job
    ``consolidation_keep_fraction_reliable`` when set). A model that is already good moves by less
    (one image of a stream pulls it towards that image; interpolating in weight space keeps
    most of what it knew), an untrained one takes the whole update."""
    q = 0.0 if base_quality is None or not math.isfinite(base_quality) else float(np.clip(base_quality, 0.0, 1.0))
    return 1.0 - q * (1.0 - _job_setting(settings, "keep_fraction_reliable", consolidation))


def preload_training_imports() -> None:
    """Import now what a process's first online update would import on its own, outside any
    layer (so it cannot give way to a round): torch builds its first optimiser by importing
    ``torch._dynamo`` (about 800 modules, 0.9 s of a core on a 2-core AMD EPYC). Called by
    the embedded executor's worker thread before its first job and by a Celery worker's
    parent process before its pool forks; it starts no thread and touches no CUDA. One step
    too: the first ``optimizer.step()`` imports a little more."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter])
    (parameter * parameter).sum().backward()
    optimizer.step()


def train_online(
    model: torch.nn.Module,
    prepared: PreparedImage | None,
    settings: OnlineSettings,
    *,
    steps: int = DEFAULT_ONLINE_STEPS,
    num_classes: int,
    replay: ReplayBuffer | None = None,
    image_id: str | None = None,
    device: torch.device | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    base_quality: float | None = None,
    base_version: int = 0,
) -> UpdateResult:
    """``steps`` optimiser steps on ``model`` (changed in place, left in eval mode).

    Each batch: ``batch_size − k`` slices of ``prepared`` drawn by their sampling
    probabilities plus ``k`` slices of other images from ``replay`` (all from ``prepared``
    while the buffer holds no other image): ``k = min(replay_per_batch, batch_size − 1)``,
    or with ``replay_balance`` and ``n`` other images in the buffer the larger of that and a
    Binomial(batch_size − 1, n / (n + 1)) draw, so that batches come close to a uniform draw
    over the images seen instead of giving the newest one a fixed share. The learning rate
    follows ``job_learning_rate``; at the end the weights move only ``kept_share`` of the way
    from ``model``'s start (``base_quality``: its validation Dice, None when unmeasured).

    ``prepared`` None consolidates: every slot of every batch comes from ``replay`` (drawn
    uniformly over its images), which must hold at least one image; ``base_version`` (the
    version ``model`` was loaded from) tells consolidation jobs on the same buffer apart, so
    that each draws other batches.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if prepared is None and (replay is None or len(replay) == 0):
        raise ValueError("nothing to consolidate: the replay buffer holds no image")
    from learner.objective import ObjectiveWeights, build_objective
    from learner.train import training_step

    device = device or torch.device("cpu")
    model.to(device)
    precision = resolve_precision(device, settings.precision)
    weights = ObjectiveWeights(dice=settings.dice_weight)
    if settings.crf_weight is not None:
        weights = replace(weights, crf=settings.crf_weight)
    objective = build_objective("online", num_classes, weights).to(device)
    objective.bind(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    if prepared is not None:
        z, size_hw = prepared.images.shape[0], prepared.images.shape[1:]
        rng = np.random.default_rng([settings.seed, steps, z])
    else:  # consolidation jobs differ by the buffer they find and the version they start from
        z, size_hw = 0, (settings.size, settings.size)
        rng = np.random.default_rng([settings.seed, steps, z, replay.images_seen, len(replay), base_version])
    exclude = [image_id] if image_id is not None else []
    replay_slots = min(settings.replay_per_batch, settings.batch_size - 1)  # always some of this image
    if settings.replay_balance and replay is not None:
        # n earlier images: each of the batch_size - 1 free slots is a replay slot with chance n / (n + 1),
        # so batches approach a uniform draw over the images seen (less pull towards the newest one).
        earlier = len([i for i in replay.image_ids() if i not in exclude])
        balanced_share = earlier / (earlier + 1)
    else:
        balanced_share = 0.0
    keep = kept_share(settings, base_quality, consolidation=prepared is None)
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()} if keep < 1 else None
    losses: list[float] = []
    replay_used = 0
    started = time.perf_counter()
    try:
        with pause_in_backward(model.parameters()):
            for step in range(steps):
                if should_stop is not None and should_stop():
                    raise UpdateCancelled(f"stopped after {step} of {steps} steps")
                replayed = None
                if prepared is None:
                    slots = settings.batch_size
                elif balanced_share:
                    slots = max(replay_slots, int(rng.binomial(settings.batch_size - 1, balanced_share)))
                else:
                    slots = replay_slots
                if replay is not None and slots > 0:
                    replayed = replay.sample(slots, rng, exclude=exclude)
                    if replayed is not None and replayed.images.shape[1:] != size_hw:
                        from learner.replay import resize_soft_slices

                        replayed = resize_soft_slices(replayed, size_hw)
                n_current = settings.batch_size - (len(replayed) if replayed is not None else 0)
                current = (rng.choice(z, size=n_current, replace=True, p=prepared.slice_probabilities)
                           if prepared is not None else np.zeros(0, np.int64))
                batch = _make_batch(prepared, replayed, current, rng, settings, device)
                objective.progress = step / steps
                for group in optimizer.param_groups:
                    group["lr"] = job_learning_rate(settings, step, steps, consolidation=prepared is None)
                losses.append(training_step(model, objective, batch, optimizer, precision)["total"])
                replay_used += len(replayed) if replayed is not None else 0
                if progress is not None:
                    progress(step + 1, steps)
        if start_state is not None:
            model.load_state_dict({
                name: start_state[name] + keep * (value - start_state[name]) if value.is_floating_point() else value
                for name, value in model.state_dict().items()
            })
    finally:
        model.eval()
    return UpdateResult(losses, steps, time.perf_counter() - started, replay_used, keep)
