"""Celery workers under faults, with real Redis and real `scribbleflow worker` subprocesses
(the compose file's command), driven through the server's CeleryExecutor:

- SIGKILL of the worker in mid-training: the job is redelivered to a new worker and
  completes, with exactly one new model version;
- a job superseded by a newer round of its image while it waited in the broker exits at its
  start without training (the broker cannot replace its message);
- a job redelivered after it stored its version (the worker died before acknowledging) is not
  trained again; a copy delivered while another process holds the job's lease is dropped.
"""

from __future__ import annotations

import time

import pytest
from celery.result import AsyncResult

from learner.celery_executor import CeleryExecutor
from learner.executors import JobState
from learner.jobs import TrainJob
from learner.worker import TRAIN_TASK, WorkerSettings, coordination_for, create_app
from tests.e2e.distributed_support import (
    REDIS_HOST,
    REDIS_PORT,
    WorkerProcess,
    distributed_env,
    ensure_redis,
)
from tests.helpers import new_registry, write_project_files

pytestmark = pytest.mark.slow

BROKER_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
# Short limits so that a message of a killed worker comes back within the test:
# soft < hard time limit < visibility timeout, and the lease below the visibility timeout.
LIMITS = {"SCRIBBLEFLOW_JOB_SOFT_TIME_LIMIT": "60", "SCRIBBLEFLOW_JOB_TIME_LIMIT": "70",
          "SCRIBBLEFLOW_VISIBILITY_TIMEOUT": "75", "SCRIBBLEFLOW_JOB_LEASE_SECONDS": "6"}
FAST_REDELIVERY = {"SCRIBBLEFLOW_JOB_SOFT_TIME_LIMIT": "60", "SCRIBBLEFLOW_JOB_TIME_LIMIT": "65",
                   "SCRIBBLEFLOW_VISIBILITY_TIMEOUT": "70", "SCRIBBLEFLOW_JOB_LEASE_SECONDS": "6"}


def worker_settings(env: dict[str, str]) -> WorkerSettings:
    return WorkerSettings(
        broker_url=env["SCRIBBLEFLOW_BROKER_URL"], queue_prefix=env["SCRIBBLEFLOW_QUEUE_PREFIX"],
        job_soft_time_limit=int(env["SCRIBBLEFLOW_JOB_SOFT_TIME_LIMIT"]),
        job_time_limit=int(env["SCRIBBLEFLOW_JOB_TIME_LIMIT"]),
        visibility_timeout=int(env["SCRIBBLEFLOW_VISIBILITY_TIMEOUT"]),
        job_lease_seconds=int(env["SCRIBBLEFLOW_JOB_LEASE_SECONDS"]),
    )


def train_job(tmp_path, round_id: str, steps: int, image_id: str = "1") -> TrainJob:
    files = write_project_files(tmp_path / "files", seed=int(round_id), name=f"r{round_id}")
    return TrainJob(project_id="1", image_id=image_id, round_id=round_id, image_path=files["image_path"],
                    proxy_labels_path=files["label_path"], num_classes=2, steps=steps,
                    settings={"size": 32, "batch_size": 2, "replay_capacity": 0},
                    registry_root=str(tmp_path / "registry"))


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def redis_env(tmp_path):
    ensure_redis()
    return distributed_env(tmp_path, BROKER_URL, **LIMITS)


def test_worker_killed_in_mid_training_job_is_redelivered_and_completes_once(tmp_path):
    ensure_redis()
    env = distributed_env(tmp_path, BROKER_URL, **FAST_REDELIVERY)
    registry = new_registry(tmp_path / "registry")
    executor = CeleryExecutor(worker_settings(env), poll_interval=0.2)
    first = WorkerProcess(env, tmp_path / "worker-1.log", name="first")
    second = WorkerProcess(env, tmp_path / "worker-2.log", name="second")
    try:
        job_id = executor.submit(train_job(tmp_path, "1", steps=150))
        first.start()
        wait_for(lambda: executor.status(job_id).step >= 3, 120, "the first worker's training steps")
        first.kill()  # SIGKILL, worker and pool process: nothing is acknowledged
        assert [r.version for r in registry.versions()] == [0]
        second.start()
        # redelivered after the visibility timeout, once the dead worker's lease ran out
        status = executor.wait(job_id, timeout=240)
        assert status.state == JobState.SUCCEEDED, (status, (tmp_path / "worker-2.log").read_text()[-3000:])
        versions = registry.versions()
        assert [r.version for r in versions] == [0, 1]
        assert versions[1].source["job_id"] == job_id and status.result["version"] == 1
        assert f"scribbleflow.train[{job_id}] succeeded" in (tmp_path / "worker-2.log").read_text()
    finally:
        executor.shutdown()
        first.kill()
        second.stop()


def test_superseded_and_redelivered_jobs_do_not_train_twice(tmp_path, redis_env):
    registry = new_registry(tmp_path / "registry")
    settings = worker_settings(redis_env)
    executor = CeleryExecutor(settings, poll_interval=0.2)
    coordination = coordination_for(create_app(settings))
    worker = WorkerProcess(redis_env, tmp_path / "worker.log")
    try:
        # Two rounds of one image reach the broker before any worker runs: the older one is
        # superseded, exits at its start, and only the newer one trains.
        older = executor.submit(train_job(tmp_path, "1", steps=5))
        wait_for(lambda: coordination.was_sent(older), 30, "the first job to reach the broker")
        newer = executor.submit(train_job(tmp_path, "2", steps=5))
        wait_for(lambda: coordination.was_sent(newer), 30, "the second job to reach the broker")
        assert executor.status(older).state == JobState.SUPERSEDED
        assert executor.status(older).superseded_by == newer
        worker.start()
        assert executor.wait(newer, timeout=180).state == JobState.SUCCEEDED
        app = create_app(settings)
        assert AsyncResult(older, app=app).get(timeout=60) == {
            "outcome": "superseded", "superseded_by": newer,
            "started_at": pytest.approx(time.time(), abs=300)}
        assert [r.version for r in registry.versions()] == [0, 1]
        assert registry.versions()[1].source["job_id"] == newer

        # The same message again (its acknowledgement was lost): the stored version comes back.
        job = train_job(tmp_path, "2", steps=5)
        job.job_id = newer
        app.send_task(TRAIN_TASK, args=[job.to_dict()], task_id=f"{newer}", queue=settings.queue("train"))
        wait_for(lambda: f"job {newer} produced version 1 before" in (tmp_path / "worker.log").read_text(), 120,
                 "the redelivered copy to be answered from the registry")
        # (Celery keeps the first success of a task id; the copy's answer names the same version.)
        outcome = app.backend.get_task_meta(newer, cache=False)["result"]
        assert outcome["outcome"] == "succeeded" and outcome["result"]["version"] == 1
        assert [r.version for r in registry.versions()] == [0, 1]

        # A copy delivered while another process holds the job's lease (the job still runs
        # there) is dropped: no outcome written, nothing trained.
        held = train_job(tmp_path, "3", steps=5, image_id="2")
        assert coordination.take_lease(coordination.job_lease_key(held.job_id), "another-worker", 60)
        app.send_task(TRAIN_TASK, args=[held.to_dict()], task_id=held.job_id, queue=settings.queue("train"))
        wait_for(lambda: f"job {held.job_id} runs in another worker" in (tmp_path / "worker.log").read_text(),
                 120, "the copy to be dropped")
        # no outcome written (STARTED is Celery's own mark on receipt; the job does run elsewhere)
        assert AsyncResult(held.job_id, app=app).state in ("PENDING", "STARTED")
        assert [r.version for r in registry.versions()] == [0, 1]
    finally:
        executor.shutdown()
        worker.stop()


def test_cancel_stops_a_job_running_on_a_worker(tmp_path, redis_env):
    registry = new_registry(tmp_path / "registry")
    executor = CeleryExecutor(worker_settings(redis_env), poll_interval=0.2)
    worker = WorkerProcess(redis_env, tmp_path / "worker.log")
    try:
        worker.start()
        job_id = executor.submit(train_job(tmp_path, "1", steps=5000))
        wait_for(lambda: executor.status(job_id).step >= 2, 120, "the job's first steps")
        assert executor.cancel(job_id)
        status = executor.wait(job_id, timeout=120)
        assert status.state == JobState.CANCELLED, status
        assert status.step < 5000
        assert [r.version for r in registry.versions()] == [0]  # nothing stored
        assert executor.cancel(job_id) is False  # already finished
    finally:
        executor.shutdown()
        worker.stop()


def test_jobs_of_one_project_on_two_workers_run_one_after_the_other(tmp_path, redis_env):
    """They write the same registry and replay buffer: the project lease serialises them, and
    the replay buffer ends up holding both images."""
    from learner.replay import ReplayBuffer

    registry = new_registry(tmp_path / "registry")
    settings = worker_settings(redis_env)
    executor = CeleryExecutor(settings, poll_interval=0.2)
    workers = [WorkerProcess(redis_env, tmp_path / f"worker-{i}.log", name=f"w{i}") for i in (1, 2)]
    try:
        for worker in workers:
            worker.start()
        jobs = []
        for image_id in ("1", "2"):
            job = train_job(tmp_path, image_id, steps=40, image_id=image_id)
            job.settings = {**job.settings, "replay_capacity": 2}
            job.replay_root = str(tmp_path / "replay")
            jobs.append(executor.submit(job))
        statuses = [executor.wait(job_id, timeout=300) for job_id in jobs]
        assert [s.state for s in statuses] == [JobState.SUCCEEDED] * 2, statuses
        app = create_app(settings)
        outcomes = sorted((AsyncResult(j, app=app).get(timeout=30) for j in jobs), key=lambda o: o["started_at"])
        assert outcomes[0]["finished_at"] <= outcomes[1]["started_at"], outcomes
        assert [r.version for r in registry.versions()] == [0, 1, 2]
        assert sorted(ReplayBuffer(tmp_path / "replay", 2).image_ids()) == ["1", "2"]
        logs = [(tmp_path / f"worker-{i}.log").read_text() for i in (1, 2)]
        assert all("succeeded in" in log for log in logs), "each worker should have run one job"
    finally:
        executor.shutdown()
        for worker in workers:
            worker.stop()
