"""Training jobs: what to train on (a JSON-only payload) and the one function that runs it.

A ``TrainJob`` names files, never arrays or objects, so the same payload can be queued
in-process (``learner.executors.EmbeddedExecutor``) or sent through a broker to a Celery
worker; both end in ``run_train_job``.

File formats accepted for the job's arrays (all (z, y, x) in the image's voxel grid):
    image, proxy labels, confidence, scribble, accepted label: any format SimpleITK reads
        (NIfTI, NRRD, MHA, ...), or ``.npy`` / ``.npz`` (a single array);
    proxy probabilities (C, z, y, x): ``.npy`` / ``.npz``, or a 4D / vector-pixel image.
Scribble files hold ``registration.io.volume.UNLABELLED`` where nothing was drawn.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from learner.online import (
    DEFAULT_ONLINE_STEPS,
    OnlineExample,
    OnlineSettings,
    ProgressCallback,
    StopCheck,
    prepare_image,
    replay_slices,
    train_online,
)
from learner.registry import ModelRegistry, RegistryError, ValidationCase, VersionRecord
from learner.replay import ReplayBuffer

#: The ``image_id`` of every consolidation job: they share one coalescing key per project.
CONSOLIDATION_IMAGE_ID = ""


@dataclass
class ValidationImage:
    """A held-out image of the project and its accepted label, by path."""

    name: str
    image_path: str
    label_path: str


#: The most recently accepted training images the gate uses while a project has no held-out
#: image: with the default ``validation_every`` of 5 that is all of them, and a project that
#: holds out none does not pay a prediction of every accepted image for every job.
IN_SAMPLE_GATE_IMAGES = 4


def gate_images(held_out: list[ValidationImage], accepted_training: list[ValidationImage]) -> dict:
    """The ``TrainJob`` fields of the promotion gate's images: the held-out ones; until there
    is one, the last ``IN_SAMPLE_GATE_IMAGES`` of the accepted training images (in acceptance
    order), marked in-sample (``learner.registry``)."""
    if held_out:
        return {"validation": list(held_out), "validation_in_sample": False}
    latest = list(accepted_training)[-IN_SAMPLE_GATE_IMAGES:]
    return {"validation": latest, "validation_in_sample": bool(latest)}


@dataclass
class TrainJob:
    """One online update of a project's model from one image (JSON-serialisable), or a
    consolidation update from the project's replay buffer alone (``image_path`` None: every
    batch drawn uniformly over the images stored so far, as offline training would; the
    server queues one after each accept job, see ``is_consolidation`` and ``stops``).

    base_version: the version whose weights are fine-tuned; None = the registry's training head
        when the job starts: the serving version, or the newest member of a serving average
        (so a queued job builds on whatever was promoted meanwhile).
    reference_version: the version frozen when work on this image started, whose
        prediction is P_prev in the label-smoothing target; None = the serving version when
        the job starts (what an annotator would have been shown).
    images_seen: images of the stream seen before this one (the schedule's n).
    validation: the project's held-out images for the promotion gate.
    validation_in_sample: True when ``validation`` holds accepted training images instead
        (the project has no held-out image yet; ``ModelRegistry.promote_or_reject``).
    settings: ``OnlineSettings.to_dict()`` (missing keys take their defaults).
    registry_root / replay_root: where a worker finds the project's registry and replay
        buffer (``run_train_job_at_paths``); unused when objects are passed in.
    """

    project_id: str
    image_id: str
    round_id: str
    image_path: str | None
    num_classes: int
    base_version: int | None = None
    reference_version: int | None = None
    proxy_labels_path: str | None = None
    proxy_probabilities_path: str | None = None
    confidence_path: str | None = None
    scribble_path: str | None = None
    accepted_label_path: str | None = None
    validation: list[ValidationImage] = field(default_factory=list)
    validation_in_sample: bool = False
    images_seen: int = 0
    steps: int = DEFAULT_ONLINE_STEPS
    settings: dict = field(default_factory=dict)
    registry_root: str | None = None
    replay_root: str | None = None
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        self.project_id, self.image_id, self.round_id = str(self.project_id), str(self.image_id), str(self.round_id)
        self.validation = [v if isinstance(v, ValidationImage) else ValidationImage(**v) for v in self.validation]
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        OnlineSettings.from_dict(self.settings)  # fail at submission, not in the worker
        if self.is_consolidation and (self.image_id != CONSOLIDATION_IMAGE_ID
                                      or any(getattr(self, name) is not None for name in _IMAGE_FILES)):
            raise ValueError(f"a consolidation job (no image_path) takes no image files and image_id "
                             f"{CONSOLIDATION_IMAGE_ID!r}")
        if not self.is_consolidation and self.image_id == CONSOLIDATION_IMAGE_ID:
            raise ValueError(f"image_id {CONSOLIDATION_IMAGE_ID!r} is reserved for consolidation jobs")

    @classmethod
    def consolidation(cls, project_id: str, round_id: str, num_classes: int, **fields) -> TrainJob:
        """A consolidation job of the project (no image; ``fields``: the other job fields)."""
        return cls(project_id=project_id, image_id=CONSOLIDATION_IMAGE_ID, round_id=round_id, image_path=None,
                   num_classes=num_classes, **fields)

    @property
    def is_consolidation(self) -> bool:
        """Trains on the replay buffer only (no image of its own)."""
        return self.image_path is None

    def stops(self, running: TrainJob) -> bool:
        """Whether submitting this job stops ``running`` at its next step: an accept job stops a
        round job of its image (the accepted label supersedes the round's proxy) and a
        consolidation job of its project (which runs only while no image waits), so the new
        model never waits for training that is thrown away or can run later."""
        if not self.is_final or running.is_final or running.project_id != self.project_id:
            return False
        return running.is_consolidation or running.coalesce_key == self.coalesce_key

    @property
    def is_final(self) -> bool:
        """An accept job: its label supersedes every round of the image."""
        return self.accepted_label_path is not None

    @property
    def coalesce_key(self) -> tuple[str, str]:
        """Jobs with the same key train on the same image: a newer one supersedes a queued one."""
        return (self.project_id, self.image_id)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> TrainJob:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ValueError(f"unknown TrainJob fields {unknown}")
        return cls(**payload)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainJob:
        return cls.from_dict(json.loads(text))


_IMAGE_FILES = ("proxy_labels_path", "proxy_probabilities_path", "confidence_path", "scribble_path",
                "accepted_label_path")


@dataclass
class TrainResult:
    """What a finished job produced (JSON-serialisable through ``to_dict``)."""

    job_id: str
    project_id: str
    image_id: str
    round_id: str
    version: int  # the new version the gate judged: the fine-tuned one or its average
    parent: int  # the version the job fine-tuned (an average ``version``'s own parent is fine_tuned_version)
    reference_version: int  # the version whose prediction was P_prev
    promoted: bool
    reason: str  # why it was promoted or rejected
    serving_version: int | None  # after the gate
    losses: list[float]  # total loss per optimiser step
    steps: int
    seconds: float  # whole job, loading and gate included
    train_seconds: float  # the optimiser steps only
    gate: dict  # GateDecision.to_dict(): candidate/serving Dice, tolerance, number of images
    replay_stored: bool
    fine_tuned_version: int | None = None  # the job's fine-tuned version (= version unless an average was judged)

    def to_dict(self) -> dict:
        return asdict(self)


def load_array(path: str | os.PathLike) -> np.ndarray:
    """An array from ``.npy`` / ``.npz`` (single array) or any image SimpleITK reads.

    Images come back in (z, y, x) order; a vector-pixel image as (C, z, y, x).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    name = path.name.lower()
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            if len(data.files) != 1:
                raise ValueError(f"{path}: expected one array in the .npz file, found {data.files}")
            return data[data.files[0]]
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)
    return array


def load_example(job: TrainJob) -> OnlineExample:
    """The job's files as an ``OnlineExample`` (shapes checked there)."""

    def optional(path: str | None) -> np.ndarray | None:
        return None if path is None else load_array(path)

    return OnlineExample(
        image=load_array(job.image_path),
        num_classes=job.num_classes,
        proxy_probabilities=optional(job.proxy_probabilities_path),
        proxy_labels=optional(job.proxy_labels_path),
        confidence=optional(job.confidence_path),
        user_labels=optional(job.scribble_path),
        accepted_label=optional(job.accepted_label_path),
    )


def load_validation_cases(images: list[ValidationImage]) -> list[ValidationCase]:
    return [ValidationCase(v.name, load_array(v.image_path), load_array(v.label_path).astype(np.int64)) for v in images]


def version_quality(record: VersionRecord) -> float | None:
    """A version's validation Dice on the project's images when measured, else what an imported
    checkpoint reported of its own validation, else None (always None for the untrained version)."""
    value = record.validation_dice
    if value is None and record.source.get("kind") == "imported":
        value = record.source.get("metadata", {}).get("val_mean_dice")
    try:
        quality = float(value) if value is not None else None
    except (TypeError, ValueError):  # metadata from elsewhere: not a number
        return None
    return quality if quality is not None and math.isfinite(quality) else None


def run_train_job(
    job: TrainJob,
    registry: ModelRegistry,
    replay: ReplayBuffer | None,
    *,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Fine-tune, store the candidate version, gate it, and add the image to replay.

    Raises on bad input (missing files, shapes, class counts), when the registry holds no
    version yet, and ``learner.online.UpdateCancelled`` when ``should_stop`` ends it early
    (nothing is stored then).
    """
    from learner.device import select_device

    started = time.perf_counter()
    settings = OnlineSettings.from_dict(job.settings)
    device = select_device() if device is None else torch.device(device)
    base = job.base_version if job.base_version is not None else registry.training_head()
    if base is None:
        raise RegistryError("the project has no model version yet (create the initial version first)")
    reference = job.reference_version if job.reference_version is not None else registry.serving_version()
    model, config, _ = registry.load(base, device=device, fresh=True)
    if config.num_classes != job.num_classes:
        raise ValueError(f"model version {base} predicts {config.num_classes} classes, the job has {job.num_classes}")
    prepared = None  # consolidation: train_online draws every batch from the replay buffer (and checks it holds any)
    if not job.is_consolidation:
        reference_record = registry.record(reference)
        reference_model = None if reference_record.untrained else registry.load(reference, device=device)[0]
        example = load_example(job)
        # The reference's validation Dice (when measured) tells how far its prediction can be trusted.
        prepared = prepare_image(example, reference_model, settings, images_seen=job.images_seen,
                                 validation_dice=reference_record.validation_dice, device=device)
    validation = load_validation_cases(job.validation)
    update = train_online(
        model,
        prepared,
        settings,
        steps=job.steps,
        num_classes=job.num_classes,
        replay=replay,
        image_id=None if job.is_consolidation else job.image_id,
        device=device,
        progress=progress,
        should_stop=should_stop,
        base_quality=version_quality(registry.record(base)),
        base_version=base,
    )
    tail = update.losses[-max(1, len(update.losses) // 10) :]
    identifiers = {"project_id": job.project_id, "image_id": job.image_id, "round_id": job.round_id,
                   "job_id": job.job_id}
    metadata = {"size": settings.size, "method": "online"}
    candidate = registry.add_candidate(
        model,
        config,
        parent=base,
        source={
            "kind": "consolidation" if job.is_consolidation else "online",
            **identifiers,
            "reference_version": reference,
        },
        metrics={
            "loss": float(np.mean(tail)),
            "first_loss": update.losses[0],
            "steps": update.steps,
            "seconds": update.seconds,
            "replay_slices": update.replay_slices_used,
            "reference_reliability": prepared.reliability if prepared is not None else None,
            "kept_share": update.kept_share,
        },
        metadata=metadata,
    )
    average = None
    line = registry.averaging_line(candidate.version, settings.serve_average)
    if len(line) > 1 and registry.gate_can_measure(validation, job.validation_in_sample):
        average = registry.add_average(line, source=identifiers, metadata={**metadata, "method": "average"}).version
    decision = registry.promote_or_reject(
        candidate.version, validation, settings.promotion_tolerance, size=settings.size, device=device,
        in_sample=job.validation_in_sample, average=average,
    )
    stored = False
    if replay is not None and prepared is not None:
        stored = replay.add(job.image_id, replay_slices(prepared, settings.replay_slices_per_image, settings.seed))
    return TrainResult(
        job_id=job.job_id,
        project_id=job.project_id,
        image_id=job.image_id,
        round_id=job.round_id,
        version=decision.candidate,
        parent=base,
        reference_version=reference,
        promoted=decision.promoted,
        reason=decision.reason,
        serving_version=registry.serving_version(),
        losses=update.losses,
        steps=update.steps,
        seconds=time.perf_counter() - started,
        train_seconds=update.seconds,
        gate=decision.to_dict(),
        replay_stored=stored,
        fine_tuned_version=candidate.version,
    )


# One registry / replay object per folder and process, so their locks and caches are shared
# by every job that runs here.
_open_lock = threading.Lock()
_registries: dict[str, ModelRegistry] = {}
_replays: dict[str, ReplayBuffer] = {}


def registry_at(root: str | os.PathLike) -> ModelRegistry:
    key = str(Path(root).resolve())
    with _open_lock:
        if key not in _registries:
            _registries[key] = ModelRegistry(key)
        return _registries[key]


def replay_at(root: str | os.PathLike, settings: OnlineSettings) -> ReplayBuffer:
    """The process's buffer at ``root``, following the latest settings' capacity and policy."""
    key = str(Path(root).resolve())
    with _open_lock:
        buffer = _replays.get(key)
        if buffer is None:
            buffer = _replays[key] = ReplayBuffer(key, settings.replay_capacity, settings.replay_policy, settings.seed)
        else:
            buffer.configure(settings.replay_capacity, settings.replay_policy, settings.seed)
        return buffer


def run_train_job_at_paths(
    job: TrainJob,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
) -> TrainResult:
    """``run_train_job`` with the registry and replay buffer found at the job's roots
    (what an executor or a Celery task calls)."""
    if job.registry_root is None:
        raise ValueError(f"job {job.job_id} names no registry_root")
    settings = OnlineSettings.from_dict(job.settings)
    replay = replay_at(job.replay_root, settings) if job.replay_root is not None else None
    return run_train_job(job, registry_at(job.registry_root), replay, progress=progress, should_stop=should_stop)


def forget_replay(root: str | os.PathLike) -> None:
    """Drop this process's replay buffer object for ``root``: the next job reads the buffer's
    index from disk again (a Celery worker, after another worker may have written it)."""
    with _open_lock:
        _replays.pop(str(Path(root).resolve()), None)
