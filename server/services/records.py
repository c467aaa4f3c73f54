"""The files of an image's annotation records (sessions, rounds, accepted labels).

Every record gets a fresh folder beside its image (``DataStore.new_record_dir``), never
overwritten. ``staged_record`` is the one way to fill one: if anything fails before the
database commit, the transaction is rolled back and the folder removed, so the files and
the rows stay in step.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from registration.io.atomic import open_atomic
from server.storage.datastore import DataStore
from server.storage.tables import Image

# Files of a round folder.
ROUND_FILES = {
    "input": "input.nii.gz",  # this round's own seeds, uint8, UNLABELLED where none
    "scribble": "scribble.nii.gz",  # all seeds so far (what the user has drawn)
    "proxy": "proxy.nii.gz",  # registration proxy labels
    "proxy_probabilities": "proxy_probabilities.npz",  # float16 (C, z, y, x)
    "confidence": "confidence.nii.gz",  # float32 [0, 1]
    "segmentation": "segmentation.nii.gz",  # fused labels: the result of the round
    "residual": "residual.nii.gz",  # float32 [0, 1]
}
ROUND_INPUT_JSON = "input.json"  # the request as received (or a labelmap's summary)
# Files of a session folder.
SESSION_FILES = {
    "prediction": "prediction.nii.gz",  # labels predicted at open
    "uncertainty": "uncertainty.nii.gz",  # float32 [0, 1]
    "atlas_probabilities": "atlas_probabilities.npz",  # when the atlas opened the session
    "alternative": "alternative_prediction.nii.gz",  # labels of the opening not shown, scored at accept
}
# Files of an accepted folder.
ACCEPTED_LABEL = "label.nii.gz"
ACCEPTED_JSON = "accepted.json"


@contextmanager
def staged_record(store: DataStore, db: Session, image: Image, kind: str) -> Iterator[Path]:
    """A fresh ``kind`` folder beside ``image`` (sessions, rounds, accepted); on any failure
    inside the block the transaction is rolled back and the folder removed."""
    folder = store.new_record_dir(store.resolve(image.path).parent, kind)
    try:
        yield folder
    except BaseException:
        db.rollback()
        store.remove_tree(folder)
        raise


def write_probabilities(path: Path, probabilities: np.ndarray) -> None:
    """(C, z, y, x) probabilities as float16 in an ``.npz`` (key ``probabilities``), deflate
    level 1: written on every round, about 1.5x faster than ``np.savez_compressed``'s level
    for ~10 % more bytes."""
    with open_atomic(path, overwrite=False) as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            with archive.open("probabilities.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, probabilities.astype(np.float16), allow_pickle=False)


def read_probabilities(path: Path) -> np.ndarray:
    """The float32 (C, z, y, x) probabilities of a file written by ``write_probabilities``."""
    with np.load(path) as data:
        return data["probabilities"].astype(np.float32)
