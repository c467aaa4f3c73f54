"""Atomic writes: all or nothing, readable by other users' processes like open() would make them."""

from __future__ import annotations

import json
import os
import stat

import pytest

from registration.io.atomic import atomic_target, open_atomic, write_json_atomic


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_written_files_get_the_mode_open_would_give_not_mkstemps_0600(tmp_path):
    path = write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()
    assert json.loads(path.read_text()) == {"x": 1}


def test_a_failed_write_leaves_the_previous_version_and_no_temporary_file(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), open_atomic(target) as handle:
        handle.write(b"half")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_no_overwrite_refuses_an_existing_file(tmp_path):
    target = tmp_path / "v1.pt"
    target.write_bytes(b"v1")
    with pytest.raises(FileExistsError), atomic_target(target, overwrite=False):
        pass
    assert target.read_bytes() == b"v1"
