"""Consolidation jobs on a real Celery worker (real Redis, the compose file's `scribbleflow
worker` as a subprocess), driven through the server's CeleryExecutor: an accept job of the
project, submitted while the project's consolidation job trains on the worker, ends that job
(``cancelled``, through the cancel request the worker reads at every step) and then trains."""

from __future__ import annotations

import pytest

from learner.celery_executor import CeleryExecutor
from learner.executors import JobState
from learner.jobs import CONSOLIDATION_IMAGE_ID, TrainJob
from learner.replay import ReplayBuffer
from tests.e2e.distributed_support import WorkerProcess, distributed_env, ensure_redis
from tests.e2e.test_worker_faults import BROKER_URL, LIMITS, wait_for, worker_settings
from tests.helpers import new_registry, write_project_files

pytestmark = pytest.mark.slow

SETTINGS = {"size": 32, "batch_size": 2, "replay_capacity": 2}
CONSOLIDATION_STEPS = 100_000  # far more than can run before the accept job comes


def accept_job(tmp_path, image_id: str, steps: int = 5) -> TrainJob:
    files = write_project_files(tmp_path / "files", seed=int(image_id), name=f"image{image_id}")
    return TrainJob(project_id="1", image_id=image_id, round_id=image_id, image_path=files["image_path"],
                    accepted_label_path=files["label_path"], num_classes=2, steps=steps, settings=dict(SETTINGS),
                    registry_root=str(tmp_path / "registry"), replay_root=str(tmp_path / "replay"))


def consolidation_job(tmp_path, steps: int) -> TrainJob:
    return TrainJob(project_id="1", image_id=CONSOLIDATION_IMAGE_ID, round_id="consolidate-1", image_path=None,
                    num_classes=2, images_seen=1, steps=steps, settings=dict(SETTINGS),
                    registry_root=str(tmp_path / "registry"), replay_root=str(tmp_path / "replay"))


def test_accept_job_stops_a_running_consolidation_job_on_the_worker(tmp_path):
    ensure_redis()
    env = distributed_env(tmp_path, BROKER_URL, **LIMITS)
    registry = new_registry(tmp_path / "registry")
    executor = CeleryExecutor(worker_settings(env), poll_interval=0.2)
    worker = WorkerProcess(env, tmp_path / "worker.log")
    log = tmp_path / "worker.log"
    try:
        worker.start()
        # A first accepted image fills the replay buffer that consolidation trains on.
        first = executor.submit(accept_job(tmp_path, "1"))
        status = executor.wait(first, timeout=180)
        assert status.state == JobState.SUCCEEDED, (status, log.read_text()[-3000:])
        assert ReplayBuffer(tmp_path / "replay", SETTINGS["replay_capacity"]).image_ids() == ["1"]
        assert [r.version for r in registry.versions()] == [0, 1]

        consolidation = executor.submit(consolidation_job(tmp_path, CONSOLIDATION_STEPS))
        wait_for(lambda: executor.status(consolidation).step >= 2, 120, "the consolidation job's first steps")
        assert executor.status(consolidation).state == JobState.RUNNING

        second = executor.submit(accept_job(tmp_path, "2"))
        stopped = executor.wait(consolidation, timeout=120)
        assert stopped.state == JobState.CANCELLED, (stopped, log.read_text()[-3000:])
        assert 2 <= stopped.step < CONSOLIDATION_STEPS
        accepted = executor.wait(second, timeout=180)
        assert accepted.state == JobState.SUCCEEDED, (accepted, log.read_text()[-3000:])

        # The stopped consolidation stored nothing; the accept job's version follows the first.
        versions = registry.versions()
        assert [r.version for r in versions] == [0, 1, 2]
        assert [r.source["kind"] for r in versions[1:]] == ["online", "online"]
        assert versions[2].source["job_id"] == second and accepted.result["version"] == 2
        assert sorted(ReplayBuffer(tmp_path / "replay", SETTINGS["replay_capacity"]).image_ids()) == ["1", "2"]
        assert f"scribbleflow.train[{second}] succeeded" in log.read_text()
    finally:
        executor.shutdown()
        worker.stop()
