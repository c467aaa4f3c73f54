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


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


#: Mode of the files written here: what ``open()`` would give (0666 less the umask).
_NEW_FILE_MODE = 0o666 & ~_umask()


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    os.chmod(tmp, _NEW_FILE_MODE)  # mkstemp makes 0600; other processes (worker, server) read these
    try:
        yield tmp
        _fsync_path(tmp)  # the content is on disk before the rename makes it visible ...
        os.replace(tmp, target)
        _fsync_path(str(target.parent))  # ... and the rename itself survives a crash
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "wb", *, overwrite: bool = True) -> Iterator[IO]:
    """An open file whose content replaces ``path`` (flushed and fsynced) when the block ends."""
    encoding = None if "b" in mode else "utf-8"
    with atomic_target(path, overwrite=overwrite) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle


def write_json_atomic(path: str | os.PathLike, payload: Any, *, overwrite: bool = True, **dump_options: Any) -> Path:
    """``json.dump(payload)`` to ``path`` atomically (default: indent=1, sorted keys)."""
    options = {"indent": 1, "sort_keys": True, **dump_options}
    with open_atomic(path, "w", overwrite=overwrite) as handle:
        json.dump(payload, handle, **options)
    return Path(path)
