"""Shared fixtures: a temporary data directory, both databases, a running app, tokens, volumes.

Database-dependent tests take the ``database_url`` fixture (directly or through
``settings``/``client``), which is parametrised over SQLite (a file in the test's data
directory) and PostgreSQL (127.0.0.1:5432, trust auth, database ``test``). For
PostgreSQL a uniquely named database is created once per test session and dropped at
the end; every test gets its own schema in it, dropped after the test.
"""

from __future__ import annotations

import io
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

POSTGRES_HOST = "127.0.0.1"
POSTGRES_PORT = 5432
POSTGRES_USERS = ("postgres", "root")
POSTGRES_MAINTENANCE_DB = "test"


def _postgres_user() -> str | None:
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


@pytest.fixture(scope="session")
def postgres_database():
    """(user, database name) of a fresh PostgreSQL database for this test session."""
    import psycopg

    user = _postgres_user()
    if user is None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL must be reachable in CI on {POSTGRES_HOST}:{POSTGRES_PORT}")
        pytest.skip(f"PostgreSQL is not reachable on {POSTGRES_HOST}:{POSTGRES_PORT} (database {POSTGRES_MAINTENANCE_DB!r})")
    name = f"scribbleflow_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname=POSTGRES_MAINTENANCE_DB,
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield user, name
    with psycopg.connect(host=POSTGRES_HOST, port=POSTGRES_PORT, user=user, dbname=POSTGRES_MAINTENANCE_DB,
                         autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A database URL with an empty schema, for each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scribbleflow-test.db'}"
        return
    user, database = request.getfixturevalue("postgres_database")
    with postgres_schema(user, database) as url:
        yield url


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir, database_url):
    """Server settings for fast tests: a tiny network, few training steps."""
    from server.settings import Settings

    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        model_size=32,
        model_channels=(4, 8, 16),
        online_steps=2,
        replay_capacity=1,
        validation_every=0,
        max_upload_mb=2,
        lease_seconds=600,
        compute_threads=1,
    )


@pytest.fixture
def app(settings):
    from server.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as test_client:
        yield test_client


def make_token(app, role: str, owner: str) -> str:
    from server.auth import create_token

    with app.state.context.session_factory() as db:
        token, _ = create_token(db, role, owner)
    return token


@pytest.fixture
def admin_headers(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(app, 'admin', 'alice')}"}


@pytest.fixture
def annotator_headers(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(app, 'annotator', 'bob')}"}


@pytest.fixture
def second_annotator_headers(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(app, 'annotator', 'carol')}"}


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


@pytest.fixture
def volume_and_label():
    return synthetic_volume()


@pytest.fixture
def project(client, admin_headers) -> dict:
    response = client.post(
        "/api/v1/projects", json={"name": "heart", "labels": ["inner", "ring"]}, headers=admin_headers
    )
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def uploaded_image(client, project, annotator_headers, volume_and_label) -> dict:
    volume, _ = volume_and_label
    response = client.post(
        f"/api/v1/projects/{project['id']}/images", files=nifti_file(volume), headers=annotator_headers
    )
    assert response.status_code == 201, response.text
    return response.json()
