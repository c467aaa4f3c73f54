"""Redis stopped and started again under a running server and worker (distributed mode,
real processes, a Redis of the test's own): while Redis is down the API still accepts and
stores rounds (never a 500), their jobs show as queued; when Redis is back, server and
worker reconnect by themselves and the jobs run."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from tests.e2e.distributed_support import (
    ComposeServerProcess,
    PrivateRedis,
    WorkerProcess,
    distributed_env,
)
from tests.helpers import nifti_file, synthetic_volume
from tests.server.api.test_sessions import API, stroke_round

pytestmark = pytest.mark.slow


def test_api_keeps_working_while_redis_is_down_and_jobs_run_when_it_is_back(tmp_path):
    if subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0:
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    env = distributed_env(tmp_path, redis.url, SCRIBBLEFLOW_ONLINE_STEPS="5")
    token = subprocess.run([sys.executable, "-m", "server.cli", "token", "create", "--role", "admin", "--owner", "a"],
                           env=env, capture_output=True, encoding="utf-8", check=True, timeout=120).stdout.strip()
    worker = WorkerProcess(env, tmp_path / "worker.log")
    server = ComposeServerProcess(env, tmp_path / "server.log")
    volume, label = synthetic_volume((6, 32, 32), seed=2)
    try:
        worker.start()
        server.start()
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            project = http.post(f"{API}/projects", json={"name": "p", "labels": ["inner", "ring"]}).json()
            image = http.post(f"{API}/projects/{project['id']}/images", files=nifti_file(volume)).json()
            session = http.post(f"{API}/images/{image['id']}/sessions", json={}).json()

            redis.stop()
            rounds = []
            for z in (1, 3):
                response = http.post(f"{API}/sessions/{session['id']}/rounds", json=stroke_round(label, z))
                assert response.status_code == 201, response.text
                rounds.append(response.json())
            listed = http.get(f"{API}/images/{image['id']}/rounds")
            assert listed.status_code == 200 and [r["id"] for r in listed.json()] == [r["id"] for r in rounds]
            time.sleep(3)  # the executor has tried to reach the broker meanwhile
            jobs = http.get(f"{API}/projects/{project['id']}/jobs")
            assert jobs.status_code == 200
            # the newer round's job replaced the older one while neither could reach the broker
            assert [j["state"] for j in jobs.json()] == ["superseded", "queued"], jobs.json()
            for path in ("/health", f"/projects/{project['id']}/models", "/metrics"):
                assert http.get(f"{API}{path}" if path != "/health" else path).status_code == 200, path

            redis.start()  # same port, same append-only file
            deadline = time.monotonic() + 240
            while True:
                states = [j["state"] for j in http.get(f"{API}/projects/{project['id']}/jobs").json()]
                if all(s not in ("queued", "running") for s in states):
                    break
                assert time.monotonic() < deadline, (states, (tmp_path / "worker.log").read_text()[-2000:])
                time.sleep(0.5)
            # the queued job reached the broker and was trained by the reconnected worker
            assert states == ["superseded", "succeeded"], states
            assert http.get(f"{API}/projects/{project['id']}/models").json()["serving_version"] == 1
    finally:
        server.stop()
        worker.stop()
        redis.stop()
