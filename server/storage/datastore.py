"""Files under the data directory: volumes, masks, round records. Never overwritten.

Every write goes to a temporary file in the target folder and is renamed into place,
so a reader sees either nothing or a whole file. New records get fresh folders
(``new_record_dir``) so an earlier round's files are never replaced. Paths stored in the
database are relative to the data directory (``relative``/``resolve``), so the
directory can be moved.

Layout::

    DATA_DIR/projects/<project>/images/<image>/image.nii.gz
    DATA_DIR/projects/<project>/images/<image>/sessions/<key>/...   (prediction at open)
    DATA_DIR/projects/<project>/images/<image>/rounds/<key>/...     (one folder per round)
    DATA_DIR/projects/<project>/images/<image>/accepted/<key>/label.nii.gz
    DATA_DIR/projects/<project>/models/                             (model registry)
    DATA_DIR/projects/<project>/replay/                             (replay buffer)
    DATA_DIR/tmp/                                                   (uploads in flight)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from registration.io.atomic import write_json_atomic
from registration.io.volume import Volume, read_volume, write_volume_atomic

#: gzip level of the volumes written here. Level 1 writes a round's float maps (residual,
#: confidence) about 1.5-3x faster than the default level for a few per cent more bytes:
#: the files are written on every round, while the user waits.
VOLUME_COMPRESSION_LEVEL = 1


class DataStore:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def project_dir(self, project_id: int) -> Path:
        return self.root / "projects" / str(project_id)

    def models_dir(self, project_id: int) -> Path:
        return self.project_dir(project_id) / "models"

    def replay_dir(self, project_id: int) -> Path:
        return self.project_dir(project_id) / "replay"

    def new_image_dir(self, project_id: int) -> Path:
        return self._fresh(self.project_dir(project_id) / "images")

    def new_record_dir(self, image_dir: Path, kind: str) -> Path:
        """A new, empty folder ``image_dir/kind/<unique key>`` (kind: sessions, rounds, accepted)."""
        return self._fresh(image_dir / kind)

    @staticmethod
    def _fresh(parent: Path) -> Path:
        parent.mkdir(parents=True, exist_ok=True)
        for _ in range(8):
            candidate = parent / uuid.uuid4().hex[:16]
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
            return candidate
        raise RuntimeError(f"could not create a fresh folder under {parent}")

    def relative(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def resolve(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"path {relative!r} leaves the data directory")
        return path

    # --- writes (temporary file + rename) ---------------------------------------------------

    @staticmethod
    def write_volume(path: Path, geometry: Volume, array: np.ndarray) -> Path:
        if path.exists():
            raise FileExistsError(f"refusing to overwrite {path}")
        return write_volume_atomic(geometry, path, array, compression_level=VOLUME_COMPRESSION_LEVEL)

    @staticmethod
    def write_json(path: Path, payload: Any) -> Path:
        return write_json_atomic(path, payload, overwrite=False)

    # --- reads ------------------------------------------------------------------------------

    def read_volume(self, relative: str) -> Volume:
        return read_volume(self.resolve(relative))

    def read_json(self, relative: str) -> Any:
        return json.loads(self.resolve(relative).read_text())

    def remove_tree(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def new_temp_path(self, suffix: str) -> Path:
        fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=suffix, dir=self.tmp_dir)
        os.close(fd)
        return Path(tmp)
