"""Distributed mode end to end: real Redis, real PostgreSQL, a real Celery worker subprocess
(`scribbleflow worker`) and the server (`scribbleflow serve` with SCRIBBLEFLOW_BROKER_URL)
as subprocesses on loopback, started with the very commands docker-compose.yml runs. A round submitted through the API is trained by the worker
into a new model version, and the job's progress shows through the job endpoints."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from clients.annotator import SimulatedAnnotator
from clients.client import ScribbleflowClient
from registration.io.volume import write_volume_atomic
from tests.e2e.distributed_support import (
    REDIS_HOST,
    REDIS_PORT,
    ComposeServerProcess,
    WorkerProcess,
    distributed_env,
    ensure_redis,
)
from tests.helpers import postgres_schema, synthetic_volume

pytestmark = pytest.mark.slow

BROKER_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
JOB_SECONDS = 120


@pytest.fixture
def postgres_url(postgres_database):
    user, database = postgres_database
    with postgres_schema(user, database, prefix="dist") as url:
        yield url


def create_token(env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "token", "create", "--role", "admin", "--owner", "alice"],
        env=env, capture_output=True, encoding="utf-8", check=True, timeout=120,
    ).stdout.strip()


def executor_ids(database_url: str) -> dict[int, str]:
    """Job row id -> the id its executor (here: Celery's task id) knows it by, read from the database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return dict(connection.execute(text("SELECT id, executor_id FROM jobs")).all())
    finally:
        engine.dispose()


def test_round_is_trained_by_a_celery_worker(tmp_path, postgres_url):
    ensure_redis()
    # Enough steps that the job runs for a few seconds: progress is reported about once a second.
    env = distributed_env(tmp_path, BROKER_URL, SCRIBBLEFLOW_DATABASE_URL=postgres_url,
                          SCRIBBLEFLOW_ONLINE_STEPS="150")
    volume, truth = synthetic_volume((7, 40, 36), seed=3)
    image_path = write_volume_atomic(volume, tmp_path / "case.nii.gz")
    token = create_token(env)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    server = ComposeServerProcess(env, tmp_path / "server.log")
    worker.start()
    try:
        server.start()
        with ScribbleflowClient(server.url, token, timeout=120) as client:
            project = client.create_project("heart", ["inner", "ring"])
            image = client.upload_image(project.id, image_path)
            record = SimulatedAnnotator(client, 3, seed=1).annotate(image, truth, 1, accept=False)
            round_id = record.rounds[0].round.id
            (job,) = client.list_jobs(project.id)
            assert (job.round_id, job.trigger) == (round_id, "round")

            seen: list[tuple[str, float]] = []
            deadline = time.monotonic() + JOB_SECONDS
            while time.monotonic() < deadline:
                job = client.get_job(job.id)
                seen.append((job.state, job.progress))
                if job.state not in ("queued", "running"):
                    break
                time.sleep(0.1)
            assert job.state == "succeeded", (job.state, job.message, (tmp_path / "worker.log").read_text()[-3000:])
            assert job.result_version == 1 and job.started_at is not None and job.finished_at is not None
            assert any(state == "running" and 0.0 < progress < 1.0 for state, progress in seen), seen
            assert job.progress == 1.0

            models = client.list_models(project.id)
            assert [v.version for v in models.versions] == [0, 1]
            assert models.serving_version == 1  # no validation image: the candidate is promoted
    finally:
        server.stop()
        worker.stop()

    # The worker ran it: Celery's result for the job's task id names the same version.
    task_id = executor_ids(postgres_url)[job.id]
    from celery.result import AsyncResult

    from learner.worker import WorkerSettings, create_app

    app = create_app(WorkerSettings(broker_url=BROKER_URL, queue_prefix=env["SCRIBBLEFLOW_QUEUE_PREFIX"]))
    outcome = AsyncResult(task_id, app=app).get(timeout=10)
    assert outcome["outcome"] == "succeeded" and outcome["result"]["version"] == 1
    assert outcome["result"]["round_id"] == str(round_id)
    assert f"scribbleflow.train[{task_id}] succeeded" in (tmp_path / "worker.log").read_text()
    assert np.isfinite(outcome["result"]["losses"]).all()


def test_server_killed_while_a_worker_trains_follows_the_job_after_its_restart(tmp_path):
    """SIGKILL of the server while the worker trains: after the restart the server follows the
    job it had sent (not a second message), and the job's row ends succeeded with one version."""
    ensure_redis()
    env = distributed_env(tmp_path, BROKER_URL, SCRIBBLEFLOW_ONLINE_STEPS="150")
    volume, truth = synthetic_volume((6, 32, 32), seed=4)
    image_path = write_volume_atomic(volume, tmp_path / "case.nii.gz")
    token = create_token(env)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    server = ComposeServerProcess(env, tmp_path / "server.log")
    worker.start()
    try:
        server.start()
        with ScribbleflowClient(server.url, token, timeout=120) as client:
            project = client.create_project("heart", ["inner", "ring"])
            image = client.upload_image(project.id, image_path)
            SimulatedAnnotator(client, 3, seed=1).annotate(image, truth, 1, accept=False)
            (job,) = client.list_jobs(project.id)
            deadline = time.monotonic() + JOB_SECONDS
            while client.get_job(job.id).state != "running":
                assert time.monotonic() < deadline, client.get_job(job.id)
                time.sleep(0.1)
        server.kill()
        server.start()
        with ScribbleflowClient(server.url, token, timeout=120) as client:
            jobs = client.wait_for_jobs(project.id, timeout=JOB_SECONDS, poll=0.5)
            assert [(j.id, j.state, j.result_version) for j in jobs] == [(job.id, "succeeded", 1)]
            assert [v.version for v in client.list_models(project.id).versions] == [0, 1]
    finally:
        server.stop()
        worker.stop()
    log = (tmp_path / "worker.log").read_text()
    received = [line for line in log.splitlines() if "Task scribbleflow.train[" in line and "received" in line]
    assert len(received) == 1, received  # one message: the restarted server did not send it again
