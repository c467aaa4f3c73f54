"""Database schema migrations (Alembic, server/storage/migrations/), on SQLite and PostgreSQL:
the migrations build exactly the schema of the table definitions, and a database created
before migrations existed (with projects, rounds, jobs and model versions) is brought to the
current schema by `scribbleflow db upgrade` and served with its data unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from server.app import create_app
from server.storage import tables  # noqa: F401  (registers the tables on Base)
from server.storage.db import Base, make_engine
from server.storage.migrate import (
    BASELINE_REVISION,
    alembic_config,
    current_revision,
    head_revision,
)
from tests.helpers import make_token
from tests.server.api.test_sessions import API, open_session, stroke_round


def test_migrations_build_the_schema_of_the_table_definitions(database_url):
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")  # every revision, from nothing
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == [], "a schema change without a migration in server/storage/migrations/versions/"
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def _snapshot(client, headers, project_id: int, image_id: int) -> dict:
    def get(path):
        response = client.get(f"{API}{path}", headers=headers)
        assert response.status_code == 200, (path, response.text)
        return response.json()

    rounds = get(f"/images/{image_id}/rounds")
    for item in rounds:
        item.pop("model_weight", None)  # a column newer than the old schema: empty after the upgrade
    return {
        "projects": get("/projects"),
        "images": get(f"/projects/{project_id}/images"),
        "rounds": rounds,
        "jobs": get(f"/projects/{project_id}/jobs"),
        "models": get(f"/projects/{project_id}/models"),
        "audit": get(f"/projects/{project_id}/audit"),
    }


def test_database_from_before_migrations_is_upgraded_and_served(settings, volume_and_label):
    from tests.helpers import nifti_file

    volume, label = volume_and_label
    app = create_app(settings)
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {make_token(app, 'admin', 'alice')}"}
        project = client.post(f"{API}/projects", json={"name": "heart", "labels": ["inner", "ring"]},
                              headers=headers).json()
        image = client.post(f"{API}/projects/{project['id']}/images", files=nifti_file(volume), headers=headers).json()
        session = open_session(client, image, headers).json()
        for z in (2, 4):
            response = client.post(f"{API}/sessions/{session['id']}/rounds", json=stroke_round(label, z),
                                   headers=headers)
            assert response.status_code == 201, response.text
        deadline = time.monotonic() + 120
        while any(j["state"] in ("queued", "running")
                  for j in client.get(f"{API}/projects/{project['id']}/jobs", headers=headers).json()):
            assert time.monotonic() < deadline, "training jobs did not finish"
            time.sleep(0.2)
        before = _snapshot(client, headers, project["id"], image["id"])
    assert len(before["rounds"]) == 2 and len(before["models"]["versions"]) >= 2

    # Back to the schema as it was before migrations: the first revision, no version table.
    engine = make_engine(settings.resolved_database_url)
    try:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), BASELINE_REVISION)
            connection.execute(text("DROP TABLE alembic_version"))
        tables = set(inspect(engine).get_table_names())
        assert "alembic_version" not in tables and "users" not in tables and "projects" in tables
        assert "model_weight" not in {c["name"] for c in inspect(engine).get_columns("rounds")}
    finally:
        engine.dispose()

    env = {**os.environ, "SCRIBBLEFLOW_DATA_DIR": str(settings.data_dir),
           "SCRIBBLEFLOW_DATABASE_URL": settings.resolved_database_url}
    upgraded = subprocess.run([sys.executable, "-m", "server.cli", "db", "upgrade"], env=env,
                              capture_output=True, encoding="utf-8", timeout=120)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"none -> {head_revision()}" in upgraded.stderr
    current = subprocess.run([sys.executable, "-m", "server.cli", "db", "current"], env=env,
                             capture_output=True, encoding="utf-8", timeout=120, check=True)
    assert current.stdout.split()[0] == head_revision()

    app = create_app(settings)
    with TestClient(app) as client:
        after = _snapshot(client, headers, project["id"], image["id"])
    assert after == before
