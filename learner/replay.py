"""A bounded, on-disk replay buffer of training slices from earlier images.

Online learning fine-tunes the model on one image at a time; mixing a few slices of
earlier images into every batch keeps it from forgetting them. The buffer holds at
most ``capacity`` images. Each image's entry is a set of 2D slices at training size with
their soft targets and loss weights, stored as one compressed ``.npz`` file under the
buffer's root folder, and listed in ``index.json`` (written temp file + rename), so the
buffer survives a restart of the process.

Policies when a new image arrives and the buffer is full:
    ``fifo``       the oldest image is evicted (the buffer follows the recent stream);
    ``reservoir``  classic reservoir sampling over images: the n-th distinct image
                   replaces a uniformly chosen entry with probability capacity / n,
                   otherwise it is not stored; every image seen so far is then equally
                   likely to be in the buffer (a uniform sample of the whole stream).
Adding an image already in the buffer (a newer round of the same image) replaces its
entry and does not count as a new image (under ``fifo`` it becomes the newest entry).

Thread-safe within one process (one lock around every read-modify-write). Several
processes must not write to one root at the same time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registration.io.atomic import open_atomic, write_json_atomic

log = logging.getLogger(__name__)

REPLAY_POLICIES = ("fifo", "reservoir")
_INDEX_NAME = "index.json"
_INDEX_FORMAT = 1


@dataclass
class SoftSlices:
    """2D training slices with soft targets.

    images:  float32 (N, H, W), normalised intensities (see ``learner.preprocess``)
    targets: float32 (N, C, H, W), class probabilities summing to 1 over C
    weights: float32 (N, H, W), per-pixel loss weights in [0, 1]
    """

    images: np.ndarray
    targets: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        n, h, w = self.images.shape
        if self.targets.ndim != 4 or self.targets.shape[0] != n or self.targets.shape[2:] != (h, w):
            raise ValueError(f"targets {self.targets.shape} do not match images {self.images.shape}")
        if self.weights.shape != self.images.shape:
            raise ValueError(f"weights {self.weights.shape} do not match images {self.images.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.targets.shape[1])

    def take(self, indices: np.ndarray) -> SoftSlices:
        return SoftSlices(self.images[indices], self.targets[indices], self.weights[indices])

    @staticmethod
    def concatenate(parts: Iterable[SoftSlices]) -> SoftSlices:
        parts = list(parts)
        return SoftSlices(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.targets for p in parts]),
            np.concatenate([p.weights for p in parts]),
        )


@dataclass(frozen=True)
class ReplayEntry:
    image_id: str
    file: str
    num_slices: int
    added_at: float


def _file_stem(image_id: str) -> str:
    # Image ids are arbitrary strings; file names must not be.
    return hashlib.sha256(image_id.encode("utf-8")).hexdigest()[:16]


def _write_npz_atomic(path: Path, slices: SoftSlices) -> None:
    with open_atomic(path) as f:
        np.savez_compressed(
            f,
            images=slices.images.astype(np.float32),
            # Probabilities and weights lose nothing that matters in float16.
            targets=slices.targets.astype(np.float16),
            weights=slices.weights.astype(np.float16),
        )


class ReplayBuffer:
    """At most ``capacity`` images' slices, kept under ``root`` (see module docstring).

    ``capacity`` 0 disables replay: nothing is stored and ``sample`` returns None.
    """

    def __init__(self, root: str | os.PathLike, capacity: int = 100, policy: str = "fifo", seed: int = 0):
        if capacity < 0:
            raise ValueError(f"replay capacity must be 0 (no replay) or more images, got {capacity}")
        if policy not in REPLAY_POLICIES:
            raise ValueError(f"unknown replay policy {policy!r}; expected one of {REPLAY_POLICIES}")
        self.root = Path(root)
        self.capacity = int(capacity)
        self.policy = policy
        self.seed = int(seed)
        self._lock = threading.RLock()
        self._cache: dict[str, SoftSlices] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-*"):
            stale.unlink(missing_ok=True)
        self._entries, self._images_seen = self._read_index()

    def configure(self, capacity: int, policy: str, seed: int) -> None:
        """Follow changed settings; a lower capacity evicts the oldest entries at the next add."""
        if capacity < 0 or policy not in REPLAY_POLICIES:
            raise ValueError(f"bad replay settings: capacity {capacity}, policy {policy!r}")
        with self._lock:
            self.capacity, self.policy, self.seed = int(capacity), policy, int(seed)

    # -- index --------------------------------------------------------------------------
    def _read_index(self) -> tuple[list[ReplayEntry], int]:
        path = self.root / _INDEX_NAME
        if not path.exists():
            return [], 0
        payload = json.loads(path.read_text(encoding="utf-8"))
        entries = [ReplayEntry(**e) for e in payload.get("entries", [])]
        present = [e for e in entries if (self.root / e.file).exists()]
        if len(present) != len(entries):
            log.warning("replay buffer %s: %d entries had no file and were dropped", self.root, len(entries) - len(present))
        return present, int(payload.get("images_seen", len(present)))

    def _write_index(self) -> None:
        write_json_atomic(
            self.root / _INDEX_NAME,
            {
                "format": _INDEX_FORMAT,
                "capacity": self.capacity,
                "policy": self.policy,
                "images_seen": self._images_seen,
                "entries": [e.__dict__ for e in self._entries],
            },
        )

    # -- queries --------------------------------------------------------------------------
    @property
    def images_seen(self) -> int:
        """Distinct images ever added (stored or not)."""
        with self._lock:
            return self._images_seen

    def image_ids(self) -> list[str]:
        """Ids of the stored images, oldest entry first."""
        with self._lock:
            return [e.image_id for e in self._entries]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, image_id: str) -> SoftSlices | None:
        with self._lock:
            entry = next((e for e in self._entries if e.image_id == image_id), None)
            return None if entry is None else _as_float32(self._load(entry))

    def _load(self, entry: ReplayEntry) -> SoftSlices:
        """The entry's slices as stored: targets and weights stay float16 in the cache (a buffer
        of hundreds of images fits in memory); ``_as_float32`` converts what is handed out."""
        cached = self._cache.get(entry.file)
        if cached is None:
            with np.load(self.root / entry.file) as data:
                cached = SoftSlices(data["images"].astype(np.float32), data["targets"], data["weights"])
            self._cache[entry.file] = cached
        return cached

    # -- updates --------------------------------------------------------------------------
    def add(self, image_id: str, slices: SoftSlices) -> bool:
        """Store ``slices`` as the entry of ``image_id``; True when it was stored."""
        if len(slices) == 0:
            raise ValueError("cannot add an empty set of slices to the replay buffer")
        if self.capacity == 0:
            return False
        with self._lock:
            existing = next((i for i, e in enumerate(self._entries) if e.image_id == image_id), None)
            slot: int | None
            evicted: list[ReplayEntry] = []
            if existing is not None:
                slot = existing
            else:
                self._images_seen += 1
                slot = self._slot_for_new_image()
                if slot is None:
                    self._write_index()
                    return False
            # A new file name per write: the previous file stays valid until the index moves on.
            file = f"{_file_stem(image_id)}-{time.time_ns()}.npz"
            _write_npz_atomic(self.root / file, slices)
            entry = ReplayEntry(image_id, file, len(slices), time.time())
            if slot < len(self._entries):
                evicted.append(self._entries[slot])
            if self.policy == "fifo":
                # The entry written last is the newest, whether it is a new image or a new round.
                if slot < len(self._entries):
                    del self._entries[slot]
                self._entries.append(entry)
            elif slot < len(self._entries):
                self._entries[slot] = entry
            else:
                self._entries.append(entry)
            while len(self._entries) > self.capacity:  # capacity lowered since the last run
                evicted.append(self._entries.pop(0))
            self._write_index()
            for old in evicted:
                self._cache.pop(old.file, None)
                (self.root / old.file).unlink(missing_ok=True)
            return True

    def _slot_for_new_image(self) -> int | None:
        """Index to write a new image to (== len for append), or None to skip it."""
        if len(self._entries) < self.capacity:
            return len(self._entries)
        if self.policy == "fifo":
            return 0
        rng = np.random.default_rng([self.seed, self._images_seen])
        j = int(rng.integers(self._images_seen))
        return j if j < len(self._entries) else None

    def remove(self, image_id: str) -> bool:
        """Forget ``image_id`` (e.g. the image was deleted); True when it was stored."""
        with self._lock:
            keep = [e for e in self._entries if e.image_id != image_id]
            if len(keep) == len(self._entries):
                return False
            gone = [e for e in self._entries if e.image_id == image_id]
            self._entries = keep
            self._write_index()
            for old in gone:
                self._cache.pop(old.file, None)
                (self.root / old.file).unlink(missing_ok=True)
            return True

    def sample(self, count: int, rng: np.random.Generator, exclude: Iterable[str] = ()) -> SoftSlices | None:
        """``count`` slices drawn uniformly over stored images, then over their slices.

        Images in ``exclude`` (normally the image being trained on) are skipped. None
        when nothing is left to draw from or ``count`` is 0.
        """
        excluded = set(exclude)
        with self._lock:
            entries = [e for e in self._entries if e.image_id not in excluded]
            if count <= 0 or not entries:
                return None
            loaded = [self._load(e) for e in entries]
        picks = rng.integers(len(loaded), size=count)
        parts = []
        for image_index in np.unique(picks):
            source = loaded[int(image_index)]
            n = int(np.sum(picks == image_index))
            parts.append(source.take(rng.integers(len(source), size=n)))
        sizes = {p.images.shape[1:] for p in parts}
        if len(sizes) > 1:
            # Entries written at another training size: bring them to the first one's.
            target_hw = parts[0].images.shape[1:]
            parts = [resize_soft_slices(p, target_hw) for p in parts]
        return _as_float32(SoftSlices.concatenate(parts))


def _as_float32(slices: SoftSlices) -> SoftSlices:
    return SoftSlices(slices.images.astype(np.float32, copy=False), slices.targets.astype(np.float32, copy=False),
                      slices.weights.astype(np.float32, copy=False))


def resize_soft_slices(slices: SoftSlices, size_hw: tuple[int, int]) -> SoftSlices:
    """Bilinear resize of images, targets and weights to ``size_hw`` (targets renormalised)."""
    import torch

    from learner.preprocess import resize_images

    if tuple(slices.images.shape[1:]) == tuple(size_hw):
        return slices
    height, width = (int(v) for v in size_hw)

    def resize(array: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        if t.ndim == 3:
            return resize_images(t[:, None], height, width)[:, 0].numpy()
        return resize_images(t, height, width).numpy()

    targets = np.clip(resize(slices.targets), 0.0, None)
    targets /= np.maximum(targets.sum(axis=1, keepdims=True), 1e-8)
    return SoftSlices(resize(slices.images), targets, np.clip(resize(slices.weights), 0.0, 1.0))
