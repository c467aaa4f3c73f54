"""Shared fixtures: a temporary data directory, both databases, a running app, tokens, volumes,
one torch thread. Plain helper functions (volumes, files, tokens, tiny networks) are in
``tests/helpers.py``.

Database-dependent tests take the ``database_url`` fixture (directly or through
``settings``/``client``), which is parametrised over SQLite (a file in the test's data
directory) and PostgreSQL (127.0.0.1:5432, trust auth, database ``test``). For
PostgreSQL a uniquely named database is created once per test session and dropped at
the end; every test gets its own schema in it, dropped after the test.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    POSTGRES_HOST,
    POSTGRES_MAINTENANCE_DB,
    POSTGRES_PORT,
    make_token,
    nifti_file,
    postgres_schema,
    postgres_user,
    synthetic_volume,
)


@pytest.fixture(scope="session")
def postgres_database():
    """(user, database name) of a fresh PostgreSQL database for this test session."""
    import psycopg

    user = postgres_user()
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
        consolidation_steps=0,  # tests of consolidation turn it on
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


@pytest.fixture
def admin_headers(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(app, 'admin', 'alice')}"}


@pytest.fixture
def annotator_headers(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(app, 'annotator', 'bob')}"}


@pytest.fixture
def second_annotator_headers(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(app, 'annotator', 'carol')}"}


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


@pytest.fixture
def one_torch_thread():
    """Tiny networks gain nothing from threads, and on a busy 2-core machine contended
    intra-op threads make them many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
