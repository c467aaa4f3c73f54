"""Distributed mode: the Celery app whose workers run training jobs over a Redis broker.

Queues ``train``, ``register`` and ``infer`` (each name prefixed by ``queue_prefix``, so
that several installations or test runs can share one Redis). Redis is the broker and
the result backend. The task is a thin adapter around the same job function the
embedded executor runs, ``learner.jobs.run_train_job_at_paths``; its progress goes out
as task state ``PROGRESS`` with ``{"step", "total", "started_at"}``, which the server's
``learner.celery_executor.CeleryExecutor`` reads back and stores.

Long-job settings: one message prefetched per worker process, acknowledged only after
the job ended (a worker killed in mid-job leaves it to be redelivered), a broker
visibility timeout above the hard time limit (a message is not handed out twice while
its job may still be running), soft and hard time limits.

Coordination through Redis (``JobCoordination``), with no database access here:
- *superseded*: the broker cannot replace a queued message, so the executor records the
  newest job of each (project, image); a job that is not the newest when it starts
  exits without training (a job already running is never interrupted);
- *cancel*: a flag that the running job checks at every optimiser step, and at its start;
- *started*: set atomically with the superseded check, so exactly one of "the job
  starts" and "a newer job supersedes it" happens;
- *project lease*: the jobs of one project run one at a time across all workers (they
  write the same model registry and replay buffer), and each job reads the replay
  buffer's index afresh (the registry reads its manifest at every call anyway);
- *lease*: the process running a job holds a lease on it, renewed by a heartbeat thread.
  A redelivered copy of the job (the broker's visibility timeout passed while it still
  ran) finds the lease held and is dropped without touching the job's state; after a
  worker was killed, its lease runs out and the redelivered job runs.

A job that already produced its model version (the worker died after storing it, before
acknowledging the message) is not trained again: the task returns that version.

Settings come from ``SCRIBBLEFLOW_*`` environment variables (``WorkerSettings``), the
same names the server uses for the broker (``SCRIBBLEFLOW_BROKER_URL``,
``SCRIBBLEFLOW_QUEUE_PREFIX``). This module never imports ``server``.

A GPU worker pins each worker process to one device (``SCRIBBLEFLOW_WORKER_DEVICES``,
e.g. ``0,1``: process i gets device i mod n) by setting ``CUDA_VISIBLE_DEVICES`` in the
process before anything touches CUDA; the parent process imports torch (so that a job's
time limit does not count the import) but never initialises CUDA.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import redis
from billiard import current_process
from celery import Celery, signals
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Loaded in the worker's parent process, before the pool forks, so that a job's time limit
# does not count importing torch; nothing here touches CUDA (see _pin_device).
from learner.jobs import TrainJob, forget_replay, registry_at, run_train_job_at_paths
from learner.online import UpdateCancelled, preload_training_imports

log = logging.getLogger(__name__)

QUEUES = ("train", "register", "infer")
TRAIN_TASK = "scribbleflow.train"
PROGRESS_STATE = "PROGRESS"
#: How long coordination keys live in Redis (a job is long finished by then).
KEY_TTL_SECONDS = 7 * 24 * 3600


class WorkerSettings(BaseSettings):
    """What a worker (and the server's CeleryExecutor) needs to reach the broker."""

    model_config = SettingsConfigDict(env_prefix="SCRIBBLEFLOW_", extra="ignore")

    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL: broker and result backend.")
    queue_prefix: str = Field("", description="Prefix of the queue names and coordination keys.")
    # An online job takes about a minute on a CPU (docs/benchmarks.md); a job of a worker that
    # died is handed to another worker after the visibility timeout, so keep these tight.
    job_soft_time_limit: int = Field(1800, ge=1, description="Seconds until a job is asked to stop.")
    job_time_limit: int = Field(2100, ge=1, description="Seconds until a job's process is killed.")
    visibility_timeout: int = Field(
        2400, ge=1,
        description="Seconds before an unacknowledged message goes to another worker; above job_time_limit.",
    )
    worker_devices: str = Field("", description="CUDA devices of a GPU worker, e.g. '0,1' (empty: none pinned).")
    job_lease_seconds: int = Field(
        60, ge=2, description="A running job's lease, renewed every third of it; a redelivered copy "
                              "of a job whose lease is held exits.",
    )

    @model_validator(mode="after")
    def _limits_in_order(self) -> WorkerSettings:
        if not self.job_soft_time_limit < self.job_time_limit < self.visibility_timeout:
            raise ValueError(
                "need job_soft_time_limit < job_time_limit < visibility_timeout, got "
                f"{self.job_soft_time_limit}, {self.job_time_limit}, {self.visibility_timeout}"
            )
        if not self.job_lease_seconds < self.visibility_timeout:
            # else a job redelivered after its worker died would find the dead worker's lease
            raise ValueError(f"need job_lease_seconds < visibility_timeout, got {self.job_lease_seconds}, "
                             f"{self.visibility_timeout}")
        return self

    def queue(self, name: str) -> str:
        if name not in QUEUES:
            raise ValueError(f"unknown queue {name!r}; queues: {', '.join(QUEUES)}")
        return f"{self.queue_prefix}{name}"


# Compare-and-set scripts: each runs atomically in Redis.
# KEYS[1] = newest job of the image, ARGV[1] = the new job, ARGV[2] = the prefix of "started"
# keys (the previous job's key is only known after reading KEYS[1]), ARGV[3] = key lifetime.
_SUBMIT_SCRIPT = """
local previous = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
if previous and previous ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. previous) == 0 then
  return previous
end
return false
"""
# KEYS[1] = newest job of the image, KEYS[2] = this job's "started" key, ARGV[1] = this job,
# ARGV[2] = key lifetime.
_START_SCRIPT = """
local newest = redis.call('GET', KEYS[1])
if newest and newest ~= ARGV[1] and redis.call('EXISTS', KEYS[2]) == 0 then
  return newest
end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return false
"""


_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """Holds a job's lease while the job runs, and then its project's: a daemon thread renews
    both every third of their time. The project lease makes the jobs of one project run one
    after another across all workers (they write the same model registry and replay buffer)."""

    def __init__(self, coordination: JobCoordination, job_id: str, seconds: int):
        self.coordination, self.job_id, self.seconds = coordination, job_id, seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._keys: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id}", daemon=True)

    def acquire(self) -> bool:
        key = self.coordination.job_lease_key(self.job_id)
        if not self.coordination.take_lease(key, self.holder, self.seconds):
            return False
        self._keys.append(key)
        self._thread.start()
        return True

    def wait_for_project(self, project_id: str, poll: float = 0.5) -> None:
        """Block until this job holds its project's lease (another job of the project ends,
        or its dead worker's lease runs out)."""
        key = self.coordination.project_lease_key(project_id)
        while not self.coordination.take_lease(key, self.holder, self.seconds):
            time.sleep(poll)
        self._keys.append(key)

    def _beat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            for key in list(self._keys):
                try:
                    if not self.coordination.renew_lease(key, self.holder, self.seconds):
                        log.warning("job %s: lease %s lost", self.job_id, key)
                except redis.RedisError as error:  # Redis away for a moment: try again at the next beat
                    log.warning("job %s: lease %s not renewed (%s)", self.job_id, key, error)

    def release(self) -> None:
        self._stop.set()
        for key in reversed(self._keys):
            try:
                self.coordination.release_lease(key, self.holder)
            except redis.RedisError as error:
                log.warning("job %s: lease %s not released (%s); it runs out by itself", self.job_id, key, error)


@dataclass
class JobCoordination:
    """The Redis keys that executor and workers share (see the module docstring)."""

    client: redis.Redis
    prefix: str = ""

    def _key(self, kind: str, *parts: str) -> str:
        return f"{self.prefix}scribbleflow:{kind}:" + ":".join(parts)

    def newest_key(self, project_id: str, image_id: str) -> str:
        return self._key("newest", project_id, image_id)

    def started_key(self, job_id: str) -> str:
        return self._key("started", job_id)

    def record_newest(self, project_id: str, image_id: str, job_id: str) -> str | None:
        """Mark ``job_id`` the newest job of its image (before its message is sent); returns
        the job it supersedes (the previous newest, when that one has not started) or None."""
        previous = self.client.eval(
            _SUBMIT_SCRIPT, 1, self.newest_key(project_id, image_id), job_id, self._key("started", ""),
            KEY_TTL_SECONDS,
        )
        return previous.decode() if isinstance(previous, bytes) else previous

    def mark_sent(self, job_id: str) -> None:
        """The job's message is with the broker: a server restarted later must not send it again."""
        self.client.set(self._key("sent", job_id), "1", ex=KEY_TTL_SECONDS)

    def was_sent(self, job_id: str) -> bool:
        return bool(self.client.exists(self._key("sent", job_id)))

    def try_start(self, project_id: str, image_id: str, job_id: str) -> str | None:
        """None when the job may run (also when it ran before: a redelivery); else the newer job's id."""
        newest = self.client.eval(
            _START_SCRIPT, 2, self.newest_key(project_id, image_id), self.started_key(job_id), job_id,
            KEY_TTL_SECONDS,
        )
        return newest.decode() if isinstance(newest, bytes) else newest

    def job_lease_key(self, job_id: str) -> str:
        return self._key("lease", job_id)

    def project_lease_key(self, project_id: str) -> str:
        return self._key("project-lease", project_id)

    def take_lease(self, key: str, holder: str, seconds: int) -> bool:
        """True when ``holder`` now holds the lease ``key`` (nobody else held it)."""
        return bool(self.client.set(key, holder, nx=True, ex=seconds))

    def renew_lease(self, key: str, holder: str, seconds: int) -> bool:
        return bool(self.client.eval(_RENEW_SCRIPT, 1, key, holder, seconds))

    def release_lease(self, key: str, holder: str) -> None:
        self.client.eval(_RELEASE_SCRIPT, 1, key, holder)

    def request_cancel(self, job_id: str) -> None:
        self.client.set(self._key("cancel", job_id), "1", ex=KEY_TTL_SECONDS)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.client.exists(self._key("cancel", job_id)))


def create_app(settings: WorkerSettings | None = None) -> Celery:
    """The Celery app for ``settings`` (default: from the environment), with the train task."""
    settings = settings or WorkerSettings()
    app = Celery("scribbleflow", broker=settings.broker_url, backend=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue("train"),
        task_routes={TRAIN_TASK: {"queue": settings.queue("train")}},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,  # a worker process killed in mid-job: the message goes back
        task_track_started=True,
        task_soft_time_limit=settings.job_soft_time_limit,
        task_time_limit=settings.job_time_limit,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,
        # Unacknowledged messages older than the visibility timeout (their worker died) are
        # looked for every 10 s (kombu's default throttle would make it about every 100 s).
        broker_transport_options={"visibility_timeout": settings.visibility_timeout,
                                  "unacked_restore_interval": 10, "unacked_restore_throttle": 1},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_expires=KEY_TTL_SECONDS,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # keep trying while Redis is away
        worker_hijack_root_logger=False,
    )
    app.scribbleflow_settings = settings
    app.task(bind=True, name=TRAIN_TASK)(_train_task)
    _pinned_devices[:] = [d.strip() for d in settings.worker_devices.split(",") if d.strip()]
    return app


def coordination_for(app: Celery) -> JobCoordination:
    settings: WorkerSettings = app.scribbleflow_settings
    return JobCoordination(redis.Redis.from_url(settings.broker_url), prefix=settings.queue_prefix)


#: CUDA devices of this worker (WorkerSettings.worker_devices), read by _pin_device in each process.
_pinned_devices: list[str] = []
#: One Redis client per process (a forked pool process makes its own).
_process_coordination: dict[int, JobCoordination] = {}


def _coordination(app: Celery) -> JobCoordination:
    pid = os.getpid()
    if pid not in _process_coordination:
        _process_coordination[pid] = coordination_for(app)
    return _process_coordination[pid]


def _train_task(task, payload: dict) -> dict:
    """Run one ``TrainJob`` payload; the outcome as JSON (``outcome``: succeeded | superseded | cancelled).

    Failures raise (task state FAILURE with the message).
    """
    job = TrainJob.from_dict(payload)
    coordination = _coordination(task.app)
    settings: WorkerSettings = task.app.scribbleflow_settings
    lease = Lease(coordination, job.job_id, settings.job_lease_seconds)
    if not lease.acquire():
        # A redelivered copy while the job still runs elsewhere: leave its state alone.
        log.warning("job %s runs in another worker (lease held): this copy is dropped", job.job_id)
        raise Ignore()
    try:
        lease.wait_for_project(job.project_id)
        if job.replay_root is not None:
            forget_replay(job.replay_root)  # another worker may have written it since this process read it
        return _run_leased(task, job, coordination)
    finally:
        lease.release()


def _run_leased(task, job: TrainJob, coordination: JobCoordination) -> dict:
    started_at = time.time()
    if coordination.cancel_requested(job.job_id):
        return {"outcome": "cancelled", "error": "cancelled before it started", "started_at": started_at}
    newer = coordination.try_start(job.project_id, job.image_id, job.job_id)
    if newer is not None:
        log.info("job %s superseded by %s: exits without training", job.job_id, newer)
        return {"outcome": "superseded", "superseded_by": newer, "started_at": started_at}
    last_report = 0.0

    def progress(step: int, total: int) -> None:
        nonlocal last_report
        now = time.monotonic()
        if step >= total or now - last_report >= 1.0:
            last_report = now
            task.update_state(state=PROGRESS_STATE,
                              meta={"step": int(step), "total": int(total), "started_at": started_at})

    stored = _version_of_job(registry_at(job.registry_root), job.job_id) if job.registry_root else None
    if stored is not None:
        log.info("job %s produced version %s before (redelivered): not trained again", job.job_id, stored["version"])
        return {"outcome": "succeeded", "result": stored, "started_at": started_at, "finished_at": time.time()}
    progress(0, job.steps)
    try:
        result = run_train_job_at_paths(job, progress, lambda: coordination.cancel_requested(job.job_id))
    except UpdateCancelled as stopped:
        return {"outcome": "cancelled", "error": str(stopped), "started_at": started_at}
    except SoftTimeLimitExceeded as exceeded:
        limit = task.app.conf.task_soft_time_limit
        raise RuntimeError(f"the job ran past its soft time limit of {limit} s") from exceeded
    return {"outcome": "succeeded", "result": result.to_dict(), "started_at": started_at,
            "finished_at": time.time()}


def _version_of_job(registry, job_id: str) -> dict | None:
    """The result of a version that ``job_id`` stored already (the worker died before acknowledging)."""
    stored = [r for r in registry.versions() if r.source.get("job_id") == job_id]
    if not stored:
        return None
    # The fine-tuned version and maybe its average: the one the gate judged (the first before the gate).
    fine_tuned = stored[0]
    record = next((r for r in stored if r.metrics.get("judged")), fine_tuned)
    return {
        "job_id": job_id, "project_id": record.source.get("project_id"), "image_id": record.source.get("image_id"),
        "round_id": record.source.get("round_id"), "version": record.version, "parent": fine_tuned.parent,
        "promoted": record.status in ("serving", "retired"), "reason": record.reason,
        "serving_version": registry.serving_version(), "steps": int(fine_tuned.metrics.get("steps", 0)),
        "fine_tuned_version": fine_tuned.version, "redelivered": True,
    }


@signals.worker_process_init.connect
def _pin_device(**_kwargs) -> None:
    """Give this worker process its CUDA device before anything in it touches CUDA."""
    if not _pinned_devices:
        return
    index = getattr(current_process(), "index", 0) or 0  # the pool's process slot, 0-based
    os.environ["CUDA_VISIBLE_DEVICES"] = _pinned_devices[index % len(_pinned_devices)]
    log.info("worker process %d pinned to CUDA device %s", os.getpid(), os.environ["CUDA_VISIBLE_DEVICES"])


@signals.worker_init.connect
def _preload_training_imports(**_kwargs) -> None:
    """The optimiser's one-off imports (``learner.online.preload_training_imports``), in the
    parent before the pool forks, so that each pool process inherits them: a
    ``worker_process_init`` handler must not block for seconds."""
    preload_training_imports()


def __getattr__(name: str):
    # ``celery -A learner.worker worker`` looks for ``app``: built from the environment on demand.
    if name == "app":
        return create_app()
    raise AttributeError(name)
