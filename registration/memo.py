"""A small thread-safe LRU memo of arrays keyed by the content of their inputs: rounds of one
session repeat work on the same planes and slice pairs (``registration.round.dense_labels``,
``registration.slice_registration.register_slice_pairs_memoised``)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np


def content_digest(label: str, *arrays: np.ndarray | None) -> bytes:
    """16-byte digest of ``label`` and the dtype, shape and bytes of each array (None counts
    as an empty one)."""
    digest = hashlib.blake2b(label.encode(), digest_size=16)
    for part in arrays:
        array = np.ascontiguousarray(part if part is not None else np.empty(0))
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.data)
    return digest.digest()


class ArrayMemo:
    """At most ``entries`` arrays, the least recently used dropped first; counts hits and misses."""

    def __init__(self, entries: int):
        self.entries = entries
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: bytes, value: np.ndarray) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
