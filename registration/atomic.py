"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

Every package writes through these (it sits at the bottom of the dependency graph, beside
``volume.py``), so a reader never sees a half-written file and a crash leaves the previous
version in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_target(
    path: str | os.PathLike, *, overwrite: bool = True, suffix: str | None = None
) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same suffixes); on success it replaces ``path``.

    With ``overwrite=False`` an existing ``path`` raises ``FileExistsError`` (versioned files);
    ``suffix`` (default: the target's own) tells format-sniffing writers what to write."""
    target = Path(path)
    if not overwrite and target.exists():
        raise FileExistsError(f"refusing to overwrite {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix or "".join(target.suffixes), dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb", *, overwrite: bool = True) -> Iterator[IO]:
    """An open file whose content replaces ``path`` (flushed and fsynced) when the block ends."""
    encoding = None if "b" in mode else "utf-8"
    with atomic_target(path, overwrite=overwrite) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: str | os.PathLike, payload: Any, *, overwrite: bool = True, **dump_options: Any) -> Path:
    """``json.dump(payload)`` to ``path`` atomically (default: indent=1, sorted keys)."""
    options = {"indent": 1, "sort_keys": True, **dump_options}
    with open_atomic(path, "w", overwrite=overwrite) as handle:
        json.dump(payload, handle, **options)
    return Path(path)
