"""Backup and restore as docs/deployment.md describes them (pg_dump -Fc of the database, then
a tar of the data directory; pg_restore into a fresh database, untar into a fresh data
directory): the restored installation serves the same projects, images, rounds, jobs, model
versions and audit trail, and the same files."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import psycopg
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.helpers import (
    POSTGRES_HOST,
    POSTGRES_MAINTENANCE_DB,
    POSTGRES_PORT,
    make_token,
    nifti_file,
)
from tests.server.api.test_sessions import API, open_session, stroke_round
from tests.server.storage.test_migrations import _snapshot


def _settings(data_dir, database_url) -> Settings:
    return Settings(data_dir=data_dir, database_url=database_url, model_size=32, model_channels=(4, 8, 16),
                    online_steps=2, replay_capacity=1, validation_every=0, compute_threads=1)


@pytest.mark.skipif(shutil.which("pg_dump") is None or shutil.which("tar") is None, reason="needs pg_dump and tar")
def test_backup_restored_into_a_fresh_database_and_data_directory_serves_the_same(
    tmp_path, postgres_database, volume_and_label
):
    from tests.helpers import postgres_schema

    user, database = postgres_database
    volume, label = volume_and_label
    restored_db = f"scribbleflow_restore_{uuid.uuid4().hex[:12]}"
    maintenance = {"host": POSTGRES_HOST, "port": POSTGRES_PORT, "user": user, "autocommit": True}
    with postgres_schema(user, database, prefix="backup") as url:
        schema = url.rsplit("search_path%3D", 1)[1]
        original = _settings(tmp_path / "data", url)
        app = create_app(original)
        with TestClient(app) as client:
            headers = {"Authorization": f"Bearer {make_token(app, 'admin', 'alice')}"}
            project = client.post(f"{API}/projects", json={"name": "heart", "labels": ["inner", "ring"]},
                                  headers=headers).json()
            image = client.post(f"{API}/projects/{project['id']}/images", files=nifti_file(volume),
                                headers=headers).json()
            session = open_session(client, image, headers).json()
            round_ = client.post(f"{API}/sessions/{session['id']}/rounds", json=stroke_round(label, 2),
                                 headers=headers).json()
            deadline = time.monotonic() + 120
            while any(j["state"] in ("queued", "running")
                      for j in client.get(f"{API}/projects/{project['id']}/jobs", headers=headers).json()):
                assert time.monotonic() < deadline
                time.sleep(0.2)
            before = _snapshot(client, headers, project["id"], image["id"])
            segmentation = client.get(round_["links"]["segmentation"], headers=headers).content
        assert len(before["models"]["versions"]) == 2

        # Backup: the database first, then the files.
        dump = tmp_path / "scribbleflow-db.dump"
        subprocess.run(["pg_dump", "-h", POSTGRES_HOST, "-p", str(POSTGRES_PORT), "-U", user, "-d", database,
                        "-n", schema, "-Fc", "-f", str(dump)], check=True, timeout=120)
        archive = tmp_path / "scribbleflow-data.tgz"
        subprocess.run(["tar", "czf", str(archive), "-C", str(original.data_dir), "."], check=True, timeout=120)
    shutil.rmtree(original.data_dir)  # the original installation is gone (its schema was dropped too)

    with psycopg.connect(dbname=POSTGRES_MAINTENANCE_DB, **maintenance) as conn:
        conn.execute(f'CREATE DATABASE "{restored_db}"')
    try:
        subprocess.run(["pg_restore", "-h", POSTGRES_HOST, "-p", str(POSTGRES_PORT), "-U", user, "-d", restored_db,
                        str(dump)], check=True, timeout=120)
        fresh_dir = tmp_path / "restored"
        fresh_dir.mkdir()
        subprocess.run(["tar", "xzf", str(archive), "-C", str(fresh_dir)], check=True, timeout=120)
        restored_url = (f"postgresql+psycopg://{user}@{POSTGRES_HOST}:{POSTGRES_PORT}/{restored_db}"
                        f"?options=-csearch_path%3D{schema}")
        app = create_app(_settings(fresh_dir, restored_url))
        with TestClient(app) as client:
            after = _snapshot(client, headers, project["id"], image["id"])
            assert client.get(round_["links"]["segmentation"], headers=headers).content == segmentation
            serving = client.get(f"{API}/projects/{project['id']}/models/serving", headers=headers)
            assert serving.status_code == 200 and serving.json()["version"] == 1
        assert after == before
    finally:
        with psycopg.connect(dbname=POSTGRES_MAINTENANCE_DB, **maintenance) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{restored_db}" WITH (FORCE)')
