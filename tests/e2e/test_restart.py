"""The embedded server stopped (SIGTERM) or killed (SIGKILL) with one training job running and
one queued, then started again: both jobs are submitted again and end `succeeded`, each with
its own model version (TrainingService._resubmit_unfinished)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tests.e2e.distributed_support import ComposeServerProcess
from tests.helpers import nifti_file, synthetic_volume
from tests.server.api.test_sessions import API, stroke_round

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("stop", ["stop", "kill"])
def test_jobs_running_and_queued_at_a_restart_both_succeed(tmp_path, stop):
    env = {**os.environ, "SCRIBBLEFLOW_DATA_DIR": str(tmp_path / "data"), "SCRIBBLEFLOW_MODEL_SIZE": "32",
           "SCRIBBLEFLOW_MODEL_CHANNELS": "[4, 8, 16]", "SCRIBBLEFLOW_ONLINE_STEPS": "30",
           "SCRIBBLEFLOW_VALIDATION_EVERY": "0", "SCRIBBLEFLOW_LOG_LEVEL": "warning",
           "OMP_NUM_THREADS": "1"}
    env.pop("SCRIBBLEFLOW_BROKER_URL", None)
    token = subprocess.run([sys.executable, "-m", "server.cli", "token", "create", "--role", "admin", "--owner", "a"],
                           env=env, capture_output=True, encoding="utf-8", check=True, timeout=120).stdout.strip()
    server = ComposeServerProcess(env, tmp_path / "server.log")
    headers = {"Authorization": f"Bearer {token}"}
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            project = http.post(f"{API}/projects", json={"name": "p", "labels": ["inner", "ring"]}).json()
            jobs_url = f"{API}/projects/{project['id']}/jobs"
            for seed in (1, 2):
                volume, label = synthetic_volume((6, 32, 32), seed=seed)
                image = http.post(f"{API}/projects/{project['id']}/images", files=nifti_file(volume)).json()
                session = http.post(f"{API}/images/{image['id']}/sessions", json={}).json()
                response = http.post(f"{API}/sessions/{session['id']}/rounds", json=stroke_round(label, 2))
                assert response.status_code == 201, response.text
            deadline = time.monotonic() + 120
            while [j["state"] for j in http.get(jobs_url).json()] != ["running", "queued"]:
                assert time.monotonic() < deadline, http.get(jobs_url).json()
                time.sleep(0.1)
        server.kill() if stop == "kill" else server.stop()

        server.start()
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            deadline = time.monotonic() + 420
            while True:
                jobs = http.get(jobs_url).json()
                if all(j["state"] not in ("queued", "running") for j in jobs):
                    break
                assert time.monotonic() < deadline, [(j["state"], j["progress"], j["message"]) for j in jobs]
                time.sleep(0.5)
            assert [j["state"] for j in jobs] == ["succeeded", "succeeded"], jobs
            assert sorted(j["result_version"] for j in jobs) == [1, 2]
            versions = http.get(f"{API}/projects/{project['id']}/models").json()["versions"]
            assert [v["version"] for v in versions] == [0, 1, 2]
    finally:
        server.stop()
