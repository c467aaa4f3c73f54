"""Re-entry per thread: a thread that already holds a resource passes through when it asks
for it again (the model registry's lock, the server's compute slots)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager


class ThreadReentry:
    """Counts how deep each OS thread is inside ``hold``; only the outermost call acquires.

    Only for synchronous code that enters and leaves in one thread (no coroutines, no
    generators resumed in another thread)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def hold(self, acquire: Callable[[], AbstractContextManager]) -> Iterator[None]:
        if getattr(self._local, "depth", 0):
            self._local.depth += 1
            try:
                yield
            finally:
                self._local.depth -= 1
            return
        with acquire():
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
