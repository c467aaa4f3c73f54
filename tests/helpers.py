"""Helpers shared by the tests (plain functions; the fixtures are in ``tests/conftest.py``):
PostgreSQL schemas, API tokens, synthetic volumes and their files, ACDC-style HDF5 cases,
tiny networks and registries for the learner."""

from __future__ import annotations

import io
import uuid
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from learner.networks import NetworkConfig
from learner.registry import ModelRegistry
from learner.scribbles import simulate_scribbles
from registration.io.volume import UNLABELLED

#: The repository's root, and the data shared beside it (read-only; tests skip when it is absent).
REPO = Path(__file__).resolve().parents[1]
ACDC_VAL = REPO.parent / "shared" / "data" / "acdc" / "val"
POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USERS = ("postgres", "root")
POSTGRES_MAINTENANCE_DB = "test"


def postgres_user() -> str | None:
    import psycopg

    for user in POSTGRES_USERS:
        try:
            with psycopg.connect(
                host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname=POSTGRES_MAINTENANCE_DB, connect_timeout=3
            ):
                return user
        except psycopg.OperationalError:
            continue
    return None


@contextmanager
def postgres_schema(user: str, database: str, prefix: str = "t"):
    """A fresh schema in ``database``; yields a URL whose connections use it, drops it after."""
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    connect = {"host": POSTGRES_HOST, "port": POSTGRES_PORT, "user": user, "dbname": database, "autocommit": True}
    with psycopg.connect(**connect) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield (
            f"postgresql+psycopg://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{database}"
            f"?options=-csearch_path%3D{schema}"
        )
    finally:
        with psycopg.connect(**connect) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def make_token(app, role: str, owner: str) -> str:
    from server.auth import create_token

    with app.state.context.session_factory() as db:
        token, _ = create_token(db, role, owner)
    return token


# --- synthetic volumes -------------------------------------------------------------------


def synthetic_volume(shape_zyx=(6, 32, 32), seed: int = 0):
    """A (z, y, x) float32 image with a bright disc and a ring, and its 3-class label."""
    from registration.io.volume import Volume

    rng = np.random.default_rng(seed)
    z, y, x = shape_zyx
    yy, xx = np.mgrid[:y, :x]
    radius = np.hypot(yy - y / 2 + 0.5, xx - x / 2 + 0.5)
    label = np.zeros(shape_zyx, dtype=np.uint8)
    for k in range(z):
        scale = 1.0 - 0.3 * abs(k - z / 2) / z
        label[k][radius < 0.35 * y * scale] = 2
        label[k][radius < 0.22 * y * scale] = 1
    image = (label * 0.4 + rng.normal(0, 0.05, shape_zyx)).astype(np.float32)
    volume = Volume(image, spacing_xyz=(1.5, 1.25, 4.0), origin_xyz=(-10.0, 5.0, 2.5),
                    direction=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return volume, label


def volume_bytes(volume, suffix: str = ".nii.gz", array=None) -> bytes:
    """The file content of ``volume`` (or ``array`` with its geometry) in the format of ``suffix``."""
    import tempfile

    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"volume{suffix}"
        sitk.WriteImage(volume.to_sitk(array), str(path), useCompression=suffix != ".nii")
        return path.read_bytes()


def nifti_file(volume, name: str = "case.nii.gz", array=None):
    return {"file": (name, io.BytesIO(volume_bytes(volume, ".nii.gz", array)), "application/gzip")}


# --- learner: HDF5 cases and tiny networks ------------------------------------------------

TINY_CHANNELS = (4, 8, 16, 32, 64)


def checkpoint_bytes(tmp_path: Path, num_classes: int, size: int = 32, channels=(4, 8)) -> bytes:
    """An offline checkpoint file's content (random weights, seed 1) to import into a project."""
    import torch

    from learner.checkpoints import save_checkpoint
    from learner.networks import build_network

    config = NetworkConfig(num_classes=num_classes, channels=channels)
    torch.manual_seed(1)
    path = save_checkpoint(tmp_path / f"offline-{num_classes}.pt", build_network(config), config,
                           {"size": size, "method": "pce"})
    return path.read_bytes()


def tiny_config(num_classes: int = 2) -> NetworkConfig:
    return NetworkConfig(num_classes=num_classes, channels=TINY_CHANNELS, deep_supervision=False)


def disc_volume(seed: int, shape: tuple[int, int, int] = (6, 48, 48)) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (z, y, x), label uint8 (z, y, x)): a bright disc (1) at a random place."""
    rng = np.random.default_rng(seed)
    _, h, w = shape
    y, x = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.35, 0.65, 2) * (h, w)
    radius = rng.uniform(0.18, 0.26) * min(h, w)
    disc = ((y - cy) ** 2 + (x - cx) ** 2) < radius**2
    label = np.broadcast_to(disc, shape).astype(np.uint8)
    image = (0.2 + 0.6 * label + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    return image, label


def write_project_files(folder: Path, seed: int, name: str) -> dict[str, str]:
    """Image and proxy label files of one synthetic volume; returns their paths."""
    image, label = disc_volume(seed)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}-image.npy", image)
    np.save(folder / f"{name}-label.npy", label)
    return {"image_path": str(folder / f"{name}-image.npy"), "label_path": str(folder / f"{name}-label.npy")}


def new_registry(root: Path, num_classes: int = 2, seed: int = 0) -> ModelRegistry:
    registry = ModelRegistry(root)
    registry.create_initial(tiny_config(num_classes), seed=seed)
    return registry


def disk_and_ring(shape_zyx=(6, 40, 36), *, seed: int = 0, empty_slices: int = 1):
    """(image float32 (z, y, x) in ~[0, 1], label uint8 (z, y, x)): per slice a disk (1) in a
    ring (2) whose centre and radius vary with the seed; the first ``empty_slices`` slices
    hold background only."""
    rng = np.random.default_rng(seed)
    z, h, w = shape_zyx
    yy, xx = np.mgrid[:h, :w]
    label = np.zeros(shape_zyx, dtype=np.uint8)
    for k in range(empty_slices, z):
        cy = h / 2 + rng.uniform(-2, 2)
        cx = w / 2 + rng.uniform(-2, 2)
        inner = min(h, w) * rng.uniform(0.12, 0.18)
        r = np.hypot(yy - cy, xx - cx)
        label[k][r < inner * 1.8] = 2
        label[k][r < inner] = 1
    intensity = np.array([0.1, 0.8, 0.45], dtype=np.float32)
    image = intensity[label] + rng.normal(0, 0.03, shape_zyx).astype(np.float32)
    return image.astype(np.float32), label


def write_h5_case(path: Path, image: np.ndarray, label: np.ndarray, scribble: np.ndarray | None = None,
                  unlabelled_value: int | None = None) -> Path:
    """An ACDC-style file: image float32, label uint8, scribble uint16 with ``unlabelled_value``
    (default: num_classes) where nothing is drawn."""
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image.astype(np.float32))
        f.create_dataset("label", data=label.astype(np.uint8))
        if scribble is not None:
            value = int(label.max()) + 1 if unlabelled_value is None else unlabelled_value
            f.create_dataset("scribble", data=np.where(scribble == UNLABELLED, value, scribble).astype(np.uint16))
    return path


def write_h5_dataset(directory: Path, count: int, *, shape_zyx=(6, 40, 36), seed: int = 0) -> Path:
    """``count`` ACDC-style cases with simulated scribbles in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, label = disk_and_ring(shape_zyx, seed=seed + i)
        scribble = simulate_scribbles(label, num_classes=3, seed=i).scribble
        write_h5_case(directory / f"case{i:03d}.h5", image, label, scribble)
    return directory
