"""Model versions of one project: checkpoints, a manifest, and the promotion gate.

Layout under ``root``::

    manifest.json          every version's record (written temp file + rename)
    versions/v000000.pt    one checkpoint per version (``learner.checkpoints``, atomic)
    .lock                  file lock serialising manifest updates across processes

Versions are numbered 0, 1, 2, ... in creation order. Each record holds its parent
version, creation time, source (``init`` / ``imported`` / ``online`` / ``consolidation`` /
``average``, with the job's identifiers), metrics (validation Dice, training loss, seconds, steps), a status and the
reason for it:

    serving     the version predictions use (exactly one once any exists)
    retired     served earlier, replaced by a newer promoted version
    candidate   trained, not yet through the promotion gate
    rejected    failed the gate: kept and listed, never served
    averaged    a fine-tuned version served only inside an average version (below): the
                next job fine-tunes it, but it was never served on its own

An average version (source kind ``average``) holds the mean weights of the newest
fine-tuned version and the versions it descends from (``learner.averaging``); its
``members`` are those versions, oldest first, and its parent the newest of them. The gate
measures the fine-tuned version and its average alike and serves the better one, so the
line of fine-tuning goes on under an average (:meth:`ModelRegistry.training_head`).

The promotion gate (:meth:`ModelRegistry.promote_or_reject`): on the project's
validation images (accepted labels held out from training) the candidate's mean Dice
(over images, of the mean over classes 1..C-1) must be at least the best Dice of any
version served on exactly these images (the serving one, or a retired one measured on
them) minus ``tolerance``. Comparing with the best rather than the serving version keeps
a run of promotions that each lose a little from adding up to more than ``tolerance``.
With no validation images at all there is nothing to measure against, and the candidate
is promoted: early in a stream learning must not stall waiting for validation data; the
decision's reason says so. Until a project holds out its first image, the server gates on
its accepted training images instead (``in_sample``): the same comparison, which then
checks fit to labels the candidate has trained on, not generalisation, yet still stops a
candidate that lost what the serving version could do (hippocampus cold stream, no held-out
image in the first four: unchecked promotions fell from holdout Dice 0.24 to 0.02 and from
0.67 to 0.49). Over an imported checkpoint neither counts: an offline model the admin chose
is replaced only by a candidate that matches it on held-out validation images (ACDC warm
start: the first unchecked online version fell from holdout Dice 0.837 to 0.570, trained
200 steps on one image, which an in-sample check favours), so until the project has some the
candidate is rejected (it stays listed, and the image stays in the replay buffer).

Checkpoint files never change once written, so models are cached by version.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from learner.reentry import ThreadReentry
from registration.io.atomic import write_json_atomic

VERSION_STATUSES = ("serving", "retired", "candidate", "rejected", "averaged")
_MANIFEST = "manifest.json"
_MANIFEST_FORMAT = 1


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (no such version, already initialised, ...)."""


class CheckpointMismatch(ValueError):
    """An imported checkpoint does not fit the project (classes or input channels)."""


#: Source kinds of versions online jobs store, each through the promotion gate (``metrics["judged"]``
#: False: its sibling of the same job was the one judged, see ``promote_or_reject``).
TRAINED_SOURCES = ("online", "consolidation", "average")
#: Source kinds of versions an average version can be made of: trained weights, not averages.
AVERAGEABLE_SOURCES = ("imported", "online", "consolidation")


@dataclass
class VersionRecord:
    version: int
    parent: int | None
    created_at: str  # ISO 8601, UTC
    source: dict  # {"kind": "init" | "imported" | "online" | "consolidation" | "average", ...}
    status: str
    reason: str
    checkpoint: str  # file name under versions/
    network: dict  # NetworkConfig.to_dict()
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def untrained(self) -> bool:
        """The initial version: random weights, whose predictions mean nothing."""
        return self.source.get("kind") == "init"

    @property
    def validation_dice(self) -> float | None:
        """Mean validation Dice as the promotion gate last measured it; None if never, and for
        the untrained version (what it is shown as is uniform, not its random network)."""
        value = None if self.untrained else self.metrics.get("val_dice")
        return None if value is None else float(value)


@dataclass
class ValidationCase:
    """A held-out image with its accepted label: image (z, y, x) any numeric type, label int (z, y, x)."""

    name: str
    image: np.ndarray
    label: np.ndarray


@dataclass
class GateDecision:
    candidate: int
    serving: int | None  # the version the candidate was compared with
    promoted: bool
    reason: str
    candidate_dice: float | None
    serving_dice: float | None
    tolerance: float
    validation_cases: int
    best_dice: float | None = None  # the best served version's Dice on these images (>= serving_dice)
    best_version: int | None = None
    in_sample: bool = False  # measured on images the candidate trained on (no held-out image yet)
    # With an average version in the running: the job's fine-tuned version and the average
    # (``candidate`` is whichever of the two the gate judged), with their Dice when measured.
    fine_tuned: int | None = None
    fine_tuned_dice: float | None = None
    average: int | None = None
    average_dice: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def validation_key(cases: Sequence[ValidationCase], size: int) -> str:
    """Fingerprint of a validation set and inference size: a stored Dice is reused only for
    exactly the same images, labels and size."""
    digest = hashlib.sha256(str(size).encode())
    for case in sorted(cases, key=lambda c: c.name):
        digest.update(case.name.encode())
        for array in (case.image, case.label):
            a = np.ascontiguousarray(array)
            digest.update(f"{a.dtype}{a.shape}".encode())
            digest.update(a.tobytes())
    return digest.hexdigest()[:24]


def mean_validation_dice(
    model: torch.nn.Module,
    cases: Sequence[ValidationCase],
    num_classes: int,
    *,
    size: int,
    device: torch.device | None = None,
) -> tuple[float, dict[str, float]]:
    """Mean over ``cases`` of each case's mean Dice over classes 1..C-1, and the per-case means."""
    from learner.inference import predict_volume
    from learner.metrics import dice_per_class

    per_case: dict[str, float] = {}
    for case in cases:
        probabilities = predict_volume(model, case.image, size=size, device=device)
        prediction = np.argmax(probabilities, axis=0)
        scores = dice_per_class(prediction, np.asarray(case.label, dtype=np.int64), num_classes)
        per_case[case.name] = float(np.mean(list(scores.values())))
    return float(np.mean(list(per_case.values()))), per_case


class ModelRegistry:
    """Model versions of one project under ``root`` (see the module docstring).

    Safe to use from several threads, and from several processes on one machine (manifest
    updates hold a file lock). Every query reads the manifest from disk, so two registry
    objects on one root (the API's and a worker's) always agree.
    """

    def __init__(self, root: str | os.PathLike, cache_size: int = 2):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.RLock()
        self._reentry = ThreadReentry()
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()
        self._cache_size = max(1, int(cache_size))

    # -- manifest ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This object's thread lock plus an exclusive file lock; re-entrant within a thread."""
        with self._thread_lock, self._reentry.hold(self._file_lock):
            yield

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        # flock is per open file: a nested open in the same thread would wait for itself.
        with open(self.root / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> list[VersionRecord]:
        path = self.root / _MANIFEST
        if not path.exists():
            return []
        payload = json.loads(path.read_text(encoding="utf-8"))
        return [VersionRecord(**record) for record in payload["versions"]]

    def _write(self, records: list[VersionRecord]) -> None:
        write_json_atomic(
            self.root / _MANIFEST,
            {"format": _MANIFEST_FORMAT, "versions": [r.to_dict() for r in records]},
        )

    # -- queries -------------------------------------------------------------------------
    def versions(self) -> list[VersionRecord]:
        """Every version's record, oldest first (rejected ones included)."""
        with self._locked():
            return self._read()

    def record(self, version: int) -> VersionRecord:
        for record in self.versions():
            if record.version == version:
                return record
        raise RegistryError(f"no model version {version} in {self.root}")

    def serving_version(self) -> int | None:
        """The version predictions use; None before any version exists."""
        return next((r.version for r in self.versions() if r.status == "serving"), None)

    def serving_record(self) -> VersionRecord | None:
        return next((r for r in self.versions() if r.status == "serving"), None)

    def training_head(self) -> int | None:
        """The version the next job fine-tunes: the serving one or, when that is an average
        version, its newest member (training goes on from the line, not from the mean)."""
        record = self.serving_record()
        if record is None:
            return None
        if record.source.get("kind") == "average":
            return int(record.source["members"][-1])
        return record.version

    def averaging_line(self, version: int, count: int) -> list[int]:
        """Up to ``count`` versions ending with ``version``, oldest first: it and the versions it
        was fine-tuned from, following parents while they are trained weights of the same network
        (the untrained version, an average, or another architecture ends the line; an imported
        checkpoint is its first member, since its parent is not what it was trained from)."""
        by_version = {r.version: r for r in self.versions()}
        if version not in by_version:
            raise RegistryError(f"no model version {version} in {self.root}")
        newest = by_version[version]
        line = [version]
        parent = newest.parent
        while len(line) < count and parent in by_version:
            record = by_version[parent]
            if record.source.get("kind") not in AVERAGEABLE_SOURCES or record.network != newest.network:
                break
            line.insert(0, record.version)
            parent = None if record.source.get("kind") == "imported" else record.parent
        return line

    def network_config(self, version: int | None = None):
        """NetworkConfig of ``version`` (default: the serving one)."""
        from learner.networks import NetworkConfig

        if version is None:
            version = self.serving_version()
            if version is None:
                raise RegistryError(f"no model version in {self.root} yet")
        return NetworkConfig.from_dict(self.record(version).network)

    def checkpoint_path(self, version: int) -> Path:
        return self.versions_dir / self.record(version).checkpoint

    def load(self, version: int | None = None, *, device: torch.device | None = None, fresh: bool = False):
        """(model in eval mode, NetworkConfig, metadata) of ``version`` (default: serving).

        The model is shared through a small cache: do not train it in place; pass
        ``fresh=True`` for a private copy to fine-tune.
        """
        from learner.checkpoints import load_checkpoint

        if version is None:
            version = self.serving_version()
            if version is None:
                raise RegistryError(f"no model version in {self.root} yet")
        key = (version, str(device) if device is not None else None)
        with self._thread_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is None:
            hit = load_checkpoint(self.checkpoint_path(version), device=device)
            with self._thread_lock:
                self._cache[key] = hit
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        model, config, metadata = hit
        if fresh:
            model = copy.deepcopy(model)
        return model, config, dict(metadata)

    def learning_curve(self) -> list[dict]:
        """Per version: version, parent, status, created_at, val_dice, loss, seconds, steps, source."""
        curve = []
        for r in self.versions():
            curve.append(
                {
                    "version": r.version,
                    "parent": r.parent,
                    "status": r.status,
                    "created_at": r.created_at,
                    "val_dice": r.metrics.get("val_dice"),
                    "loss": r.metrics.get("loss"),
                    "seconds": r.metrics.get("seconds"),
                    "steps": r.metrics.get("steps"),
                    "source": r.source.get("kind"),
                    "image_id": r.source.get("image_id"),
                }
            )
        return curve

    # -- new versions --------------------------------------------------------------------
    def _add(
        self,
        model: torch.nn.Module,
        config,
        *,
        parent: int | None,
        source: dict,
        status: str,
        reason: str,
        metrics: dict | None = None,
        metadata: dict | None = None,
        require_empty: bool = False,
    ) -> VersionRecord:
        from learner.checkpoints import save_checkpoint

        with self._locked():
            records = self._read()
            if require_empty and records:
                raise RegistryError(f"{self.root} already holds {len(records)} model version(s)")
            version = max((r.version for r in records), default=-1) + 1
            name = f"v{version:06d}.pt"
            record = VersionRecord(
                version=version,
                parent=parent,
                created_at=_now(),
                source=dict(source),
                status=status,
                reason=reason,
                checkpoint=name,
                network=config.to_dict(),
                metrics=dict(metrics or {}),
            )
            # The checkpoint is in place before the manifest names it.
            save_checkpoint(
                self.versions_dir / name,
                model,
                config,
                {
                    **(metadata or {}),
                    "version": version,
                    "parent": parent,
                    "source": record.source,
                    "num_classes": config.num_classes,
                },
            )
            if status == "serving":
                for r in records:
                    if r.status == "serving":
                        r.status, r.reason = "retired", f"replaced by version {version}"
            records.append(record)
            self._write(records)
            return record

    def create_initial(self, config, seed: int = 0) -> VersionRecord:
        """Version 0: a randomly initialised network, identical for the same config and seed."""
        from learner.networks import build_network

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_network(config)
        model.eval()
        return self._add(
            model,
            config,
            parent=None,
            source={"kind": "init", "seed": int(seed)},
            status="serving",
            reason="initial version (random initialisation)",
            require_empty=True,
        )

    def import_checkpoint(
        self,
        path: str | os.PathLike,
        *,
        num_classes: int | None = None,
        in_channels: int | None = None,
    ) -> VersionRecord:
        """Serve a checkpoint trained offline as the next version (warm start).

        Its classes and input channels must match ``num_classes`` / ``in_channels`` when
        given, and the versions already in the registry; otherwise CheckpointMismatch.
        """
        from learner.checkpoints import load_checkpoint

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            model, config, metadata = load_checkpoint(path)
        except Exception as error:  # a corrupt or foreign file
            raise CheckpointMismatch(f"{path.name} is not a readable scribbleflow checkpoint: {error}") from error
        expected = {"num_classes": num_classes, "in_channels": in_channels}
        current = self.serving_record()
        if current is not None:
            for key in expected:
                expected[key] = expected[key] if expected[key] is not None else current.network.get(key)
        problems = [
            f"{key} is {getattr(config, key)}, the project needs {value}"
            for key, value in expected.items()
            if value is not None and getattr(config, key) != value
        ]
        if problems:
            raise CheckpointMismatch(f"checkpoint {path.name} does not fit this project: " + "; ".join(problems))
        return self._add(
            model,
            config,
            parent=None if current is None else current.version,
            source={"kind": "imported", "file": path.name, "metadata": _json_safe(metadata)},
            status="serving",
            reason="imported checkpoint",
        )

    def add_candidate(
        self,
        model: torch.nn.Module,
        config,
        *,
        parent: int | None,
        source: dict,
        metrics: dict | None = None,
        metadata: dict | None = None,
    ) -> VersionRecord:
        """Store a trained model as a new version with status ``candidate``.

        ``metadata`` goes into the checkpoint file (e.g. ``size``, ``method``).
        """
        return self._add(
            model, config, parent=parent, source=source, status="candidate",
            reason="awaiting the promotion gate", metrics=metrics, metadata=metadata,
        )

    def add_average(
        self,
        members: Sequence[int],
        *,
        source: dict | None = None,
        metadata: dict | None = None,
        device: torch.device | None = None,
    ) -> VersionRecord:
        """Store the mean weights of ``members`` (oldest first, see :meth:`averaging_line`) as a
        new candidate whose parent is the newest member. ``source`` adds to the record's source
        (e.g. the job's identifiers); ``metadata`` goes into the checkpoint, as in add_candidate."""
        from learner.averaging import average_state_dicts
        from learner.checkpoints import load_checkpoint
        from learner.networks import NetworkConfig, build_network

        members = [int(m) for m in members]
        if len(members) < 2:
            raise ValueError(f"an average needs at least two versions, got {members}")
        by_version = {r.version: r for r in self.versions()}  # one manifest read for all members
        missing = next((m for m in members if m not in by_version), None)
        if missing is not None:
            raise RegistryError(f"no model version {missing} in {self.root}")
        records = [by_version[m] for m in members]
        # One member in memory at a time, on the CPU, whatever the device and serve_average.
        states = (load_checkpoint(self.versions_dir / r.checkpoint, device="cpu")[0].state_dict() for r in records)
        config = NetworkConfig.from_dict(records[-1].network)
        averaged = build_network(config)
        averaged.load_state_dict(average_state_dicts(states))
        return self._add(
            averaged.eval(), config, parent=members[-1],
            source={**(source or {}), "kind": "average", "members": members},
            status="candidate", reason="awaiting the promotion gate",
            metrics={"steps": 0, "members": len(members),
                     "member_steps": sum(int(r.metrics.get("steps") or 0) for r in records)},
            metadata=metadata,
        )

    # -- the gate ------------------------------------------------------------------------
    def _update(self, version: int, **changes) -> VersionRecord:
        return self._update_many({version: changes})[version]

    def _update_many(self, changes: dict[int, dict]) -> dict[int, VersionRecord]:
        """Apply ``{version: {field: value, "metrics": {...}}}`` in one manifest write (hold the lock)."""
        records = self._read()
        by_version = {r.version: r for r in records}
        for version, fields_ in changes.items():
            record = by_version.get(version)
            if record is None:
                raise RegistryError(f"no model version {version} in {self.root}")
            fields_ = dict(fields_)
            metrics = fields_.pop("metrics", None)
            if metrics:
                record.metrics.update(metrics)
            if fields_.get("status") == "serving":
                for r in records:
                    if r.status == "serving" and r.version != version:
                        r.status, r.reason = "retired", f"replaced by version {version}"
            for key, value in fields_.items():
                setattr(record, key, value)
        self._write(records)
        return {version: by_version[version] for version in changes}

    def _validation_dice(
        self, version: int, cases: Sequence[ValidationCase], key: str, size: int, device, prefix: str = "val"
    ) -> float:
        """Mean Dice of ``version`` on ``cases``, stored in its metrics as ``{prefix}_dice`` with
        ``{prefix}_key`` (``fit`` for in-sample cases, which are not a validation Dice)."""
        record = self.record(version)
        if record.metrics.get(f"{prefix}_key") == key and record.metrics.get(f"{prefix}_dice") is not None:
            return float(record.metrics[f"{prefix}_dice"])
        model, config, _ = self.load(version, device=device)
        dice, _per_case = mean_validation_dice(model, cases, config.num_classes, size=size, device=device)
        with self._locked():
            self._update(version, metrics={f"{prefix}_dice": dice, f"{prefix}_key": key, f"{prefix}_cases": len(cases)})
        return dice

    def _best_served(self, key: str, serving: int, serving_dice: float, prefix: str = "val") -> tuple[int, float]:
        """(version, Dice) of the best version served so far whose Dice was measured on the
        validation set ``key``; the serving version unless a retired one scored higher."""
        best = (serving, serving_dice)
        for record in self.versions():
            dice = record.metrics.get(f"{prefix}_dice")
            if record.status == "retired" and record.metrics.get(f"{prefix}_key") == key and dice is not None:
                if float(dice) > best[1]:
                    best = (record.version, float(dice))
        return best

    @staticmethod
    def _gate_measures(serving_record: VersionRecord | None, validation_cases: Sequence[ValidationCase],
                       in_sample: bool) -> bool:
        """Whether the gate measures a candidate against the serving version: one serves, there
        are cases, and an imported serving version is never judged on accepted training images."""
        if serving_record is None or not validation_cases:
            return False
        return not (in_sample and serving_record.source.get("kind") == "imported")

    def gate_can_measure(self, validation_cases: Sequence[ValidationCase], in_sample: bool) -> bool:
        """Whether the gate would measure a candidate now, rather than promote or reject it unseen."""
        return self._gate_measures(self.serving_record(), validation_cases, in_sample)

    def promote_or_reject(
        self,
        candidate: int,
        validation_cases: Sequence[ValidationCase],
        tolerance: float,
        *,
        size: int,
        device: torch.device | None = None,
        in_sample: bool = False,
        average: int | None = None,
    ) -> GateDecision:
        """Make ``candidate`` the serving version, or reject it (see the module docstring).

        Dice is measured with ``predict_volume`` at in-plane ``size`` and stored in each
        version's metrics (reused while the validation set is unchanged). ``in_sample``: the
        cases are accepted training images, not held out (the reason says so, and they do
        not count against an imported serving version).

        ``average``: a candidate average version whose newest member is ``candidate``. Both are
        measured and the better one (the average on a tie) is judged; when the average is served,
        ``candidate`` becomes ``averaged``, otherwise the one not judged is rejected with it.
        With nothing to measure on, ``candidate`` is the one judged. Each records
        ``metrics["judged"]``. Taking the better of two measurements on the same images makes the
        gate a little more lenient than one candidate would find it.
        """
        if tolerance < 0:
            raise ValueError(f"tolerance must not be negative, got {tolerance}")
        for version in (candidate, average):
            if version is not None and (status := self.record(version).status) != "candidate":
                raise RegistryError(f"version {version} is {status}, not a candidate")
        if average is not None and self.record(average).source.get("members", [None])[-1] != candidate:
            raise RegistryError(f"version {average} is not an average ending with version {candidate}")
        key = validation_key(validation_cases, size) if validation_cases else None
        for _attempt in range(3):  # the serving version may change while we measure
            serving_record = self.serving_record()
            serving = serving_record.version if serving_record is not None else None
            judged = candidate
            candidate_dice = serving_dice = best_dice = best_version = fine_tuned_dice = average_dice = None
            if serving_record is None:
                promoted, reason = True, "no serving version yet"
            elif not self._gate_measures(serving_record, validation_cases, in_sample):
                if serving_record.source.get("kind") == "imported":
                    promoted, reason = False, (
                        f"no held-out validation images yet to compare with the imported version {serving}: kept it"
                    )
                else:  # unmeasurable and not imported: there are no cases at all
                    promoted, reason = True, "no validation images yet: promoted without a check"
            else:
                prefix = "fit" if in_sample else "val"
                serving_dice = self._validation_dice(serving, validation_cases, key, size, device, prefix)
                candidate_dice = fine_tuned_dice = self._validation_dice(
                    candidate, validation_cases, key, size, device, prefix)
                if average is not None:
                    average_dice = self._validation_dice(average, validation_cases, key, size, device, prefix)
                    if average_dice >= fine_tuned_dice:
                        judged, candidate_dice = average, average_dice
                best_version, best_dice = self._best_served(key, serving, serving_dice, prefix)
                promoted = candidate_dice >= best_dice - tolerance
                relation = ">=" if promoted else "<"
                which = "serving" if best_version == serving else "best served"
                measure, images = (("training Dice", "accepted training image(s), no held-out image yet")
                                   if in_sample else ("validation Dice", "image(s)"))
                reason = (
                    f"{measure} {candidate_dice:.4f} {relation} {best_dice:.4f} "
                    f"(version {best_version}, {which}) - tolerance {tolerance:g} on {len(validation_cases)} {images}"
                )
                if average is not None:
                    reason += (f"; the average of versions {self.record(average).source['members']} scored "
                               f"{average_dice:.4f}, the fine-tuned version {candidate} {fine_tuned_dice:.4f}")
            changes = {judged: {"status": "serving" if promoted else "rejected", "reason": reason}}
            if average is not None:  # the sibling that was not judged, in the same manifest write
                changes[judged]["metrics"] = {"judged": True}
                sibling = candidate if judged == average else average
                if sibling == candidate and promoted:
                    status, why = "averaged", f"served inside the average version {average}; the next job fine-tunes it"
                else:
                    status, why = "rejected", f"version {judged} of the same job was judged: {reason}"
                changes[sibling] = {"status": status, "reason": why, "metrics": {"judged": False}}
            with self._locked():
                if serving != next((r.version for r in self._read() if r.status == "serving"), None):
                    continue
                self._update_many(changes)
            return GateDecision(
                candidate=judged,
                serving=serving,
                promoted=promoted,
                reason=reason,
                candidate_dice=candidate_dice,
                serving_dice=serving_dice,
                tolerance=float(tolerance),
                validation_cases=len(validation_cases),
                best_dice=best_dice,
                best_version=best_version,
                in_sample=bool(in_sample and validation_cases),
                fine_tuned=candidate if average is not None else None,
                fine_tuned_dice=fine_tuned_dice if average is not None else None,
                average=average,
                average_dice=average_dice,
            )
        raise RegistryError(f"the serving version kept changing while gating version {candidate}")


def _json_safe(value):
    """``value`` with anything json cannot write turned into strings."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _json_safe(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [_json_safe(v) for v in value]
        return str(value)
