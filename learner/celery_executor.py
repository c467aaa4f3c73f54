"""``CeleryExecutor``: the ``learner.executors.Executor`` interface over Celery workers.

Jobs go to the ``train`` queue of ``learner.worker`` (Redis broker), where a worker runs
the same job function as ``EmbeddedExecutor``. This object lives in the server process:

- ``submit`` never waits for Redis. A job goes to an outbox that a monitor thread hands
  to the broker, retrying while Redis is unreachable (the job stays ``queued``).
- Superseding: a newer job of the same (project, image) replaces one still in the outbox
  at once; for one already sent, the broker message cannot be replaced, so the newest
  job is recorded in Redis and the older one exits at its start (``superseded``), unless
  it had started already (``learner.worker.JobCoordination``).
- The monitor thread also reads each unfinished job's Celery state (``PROGRESS`` meta
  from the task, then its result) and reports changes to ``on_change`` from a notifier
  thread, as ``EmbeddedExecutor`` does.
- An accept job ends what ``TrainJob.stops`` names, as in ``EmbeddedExecutor``: a job in the
  outbox at once; a sent consolidation job, or a running round job of its image, through a
  cancel request that the worker reads at its start or next step (a sent round job that has
  not started exits as superseded through the newest-job record). Cancel requests, like
  sending, go to Redis from the monitor thread, so ``submit`` and ``cancel`` never wait for
  Redis either.
- A job that was sent before (the server restarted and submits its unfinished jobs
  again) is not sent a second time: the executor follows the existing message.
- ``shutdown`` stops watching; it cancels nothing, because queued and running jobs
  belong to the workers and the next server start picks them up again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict, deque

from celery.result import AsyncResult

from learner.executors import (
    NOTIFIER_STOP,
    JobBook,
    JobState,
    JobStatus,
    QueueFull,
    StateCallback,
    UnknownJob,
)
from learner.jobs import TrainJob
from learner.worker import PROGRESS_STATE, TRAIN_TASK, WorkerSettings, coordination_for, create_app

log = logging.getLogger(__name__)



class CeleryExecutor(JobBook):
    """Runs jobs on Celery workers (see the module docstring).

    settings: broker URL and queue prefix (the workers must use the same).
    max_queued: jobs waiting (outbox + sent, not started) before ``submit`` raises QueueFull.
    poll_interval: seconds between two reads of the job states from Redis.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        on_change: StateCallback | None = None,
        progress_interval: float = 1.0,
        poll_interval: float = 0.5,
        max_queued: int = 10_000,
        keep_finished: int = 1000,
    ):
        self._settings = settings
        self._app = create_app(settings)
        self._coordination = coordination_for(self._app)
        self._on_change = on_change
        self._progress_interval = float(progress_interval)
        self._poll_interval = float(poll_interval)
        self._max_queued = int(max_queued)
        self._keep_finished = max(1, int(keep_finished))
        self._lock = threading.Condition(threading.RLock())
        self._jobs: OrderedDict[str, JobStatus] = OrderedDict()
        self._outbox: deque[TrainJob] = deque()
        self._sent: dict[str, TrainJob] = {}  # unfinished jobs the broker holds
        self._cancels: deque[str] = deque()  # cancel requests for sent jobs, written to Redis by the monitor
        self._last_report: dict[str, float] = {}
        self._closed = False
        self._broker_down_since: float | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._notifier = threading.Thread(target=self._notify_loop, name="scribbleflow-job-events", daemon=True)
        self._monitor = threading.Thread(target=self._monitor_loop, name="scribbleflow-celery-monitor", daemon=True)
        self._notifier.start()
        self._monitor.start()

    # -- interface -----------------------------------------------------------------------
    def submit(self, job: TrainJob) -> str:
        with self._lock:
            if self._closed:
                raise RuntimeError("the executor is shut down")
            if job.job_id in self._jobs:
                raise ValueError(f"job id {job.job_id} was submitted before")
            position = next((i for i, q in enumerate(self._outbox) if q.coalesce_key == job.coalesce_key), None)
            if position is None and self.queue_depth() >= self._max_queued:
                raise QueueFull(f"{self.queue_depth()} training jobs are queued already (limit {self._max_queued})")
            status = JobStatus(
                job_id=job.job_id, project_id=job.project_id, image_id=job.image_id, round_id=job.round_id,
                state=JobState.QUEUED, total=job.steps, submitted_at=time.time(),
            )
            self._jobs[job.job_id] = status
            if position is not None:
                old = self._outbox[position]
                self._outbox[position] = job
                self._finish(old.job_id, JobState.SUPERSEDED, superseded_by=job.job_id)
            else:
                self._outbox.append(job)
            for waiting in [q for q in self._outbox if q is not job and job.stops(q)]:
                self._outbox.remove(waiting)
                self._finish(waiting.job_id, JobState.CANCELLED, superseded_by=job.job_id,
                             error=f"superseded by accept job {job.job_id} before it was sent")
            # A sent round job that has not started exits as superseded at its start (newest-job
            # record); a running one, and any consolidation job, is asked to stop.
            self._cancels.extend(
                job_id for job_id, sent in self._sent.items()
                if job.stops(sent) and (sent.is_consolidation or self._jobs[job_id].state == JobState.RUNNING)
            )
            self._emit(status)
            self._lock.notify_all()
            return job.job_id

    def queue_depth(self) -> int:
        """Jobs waiting for a worker (not counting running ones)."""
        with self._lock:
            return sum(1 for s in self._jobs.values() if s.state == JobState.QUEUED)

    def cancel(self, job_id: str) -> bool:
        """A job still in the outbox ends at once; one sent is flagged, and ends when a worker
        takes it (or at its next step when running): its final state comes from the worker."""
        with self._lock:
            status = self._jobs.get(job_id)
            if status is None:
                raise UnknownJob(job_id)
            if status.state.finished:
                return False
            if job_id not in self._sent:
                self._outbox = deque(j for j in self._outbox if j.job_id != job_id)
                self._finish(job_id, JobState.CANCELLED, error="cancelled before it started")
                return True
            self._cancels.append(job_id)  # written by the monitor thread, which retries while Redis is away
            self._lock.notify_all()
        return True

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._monitor.join(timeout)
            if not self._monitor.is_alive():
                self._events.put(NOTIFIER_STOP)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._notifier.join(remaining)
        self._coordination.client.close()

    # -- internals -----------------------------------------------------------------------
    def _finish(self, job_id: str, state: JobState, **changes) -> None:  # lock held
        status = self._jobs[job_id]
        status.state = state
        status.finished_at = changes.pop("finished_at", None) or time.time()
        for key, value in changes.items():
            setattr(status, key, value)
        self._sent.pop(job_id, None)
        self._last_report.pop(job_id, None)
        self._emit(status)
        self._forget_old()
        self._lock.notify_all()

    def _monitor_loop(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                self._flush_cancels()
                self._flush_outbox()
                self._poll()
                if self._broker_down_since is not None:
                    log.warning("the broker answers again after %.0f s", time.monotonic() - self._broker_down_since)
                    self._broker_down_since = None
            except Exception as error:  # Redis away: keep the jobs, try again
                if self._broker_down_since is None:
                    self._broker_down_since = time.monotonic()
                    log.warning("the broker is unreachable (%s: %s); jobs wait", type(error).__name__, error)
            with self._lock:
                if not self._closed:
                    self._lock.wait(self._poll_interval)

    def _flush_cancels(self) -> None:
        while True:
            with self._lock:
                if not self._cancels:
                    return
                job_id = self._cancels[0]
            self._coordination.request_cancel(job_id)  # the worker ends it at its start or next step
            with self._lock:
                if self._cancels and self._cancels[0] == job_id:
                    self._cancels.popleft()

    def _flush_outbox(self) -> None:
        while True:
            with self._lock:
                if self._closed or not self._outbox:
                    return
                job = self._outbox[0]
            if self._coordination.was_sent(job.job_id):
                superseded = None  # sent by an earlier server process: follow that message
            else:
                superseded = self._coordination.record_newest(job.project_id, job.image_id, job.job_id)
                self._app.send_task(TRAIN_TASK, args=[job.to_dict()], task_id=job.job_id,
                                    queue=self._settings.queue("train"))
                self._coordination.mark_sent(job.job_id)
            with self._lock:
                if self._outbox and self._outbox[0].job_id == job.job_id:
                    self._outbox.popleft()
                if not self._jobs[job.job_id].state.finished:
                    self._sent[job.job_id] = job
                elif self._jobs[job.job_id].state == JobState.CANCELLED:
                    self._cancels.append(job.job_id)  # cancelled while it was being sent
                if superseded is not None and superseded in self._sent:
                    self._finish(superseded, JobState.SUPERSEDED, superseded_by=job.job_id)

    def _poll(self) -> None:
        with self._lock:
            watched = list(self._sent)
        for job_id in watched:
            result = AsyncResult(job_id, app=self._app)
            state, info = result.state, result.info
            with self._lock:
                if job_id in self._sent:
                    self._apply(job_id, state, info)

    def _apply(self, job_id: str, state: str, info) -> None:  # lock held
        status = self._jobs[job_id]
        if state in ("STARTED", PROGRESS_STATE):
            meta = info if isinstance(info, dict) else {}
            changed = status.state != JobState.RUNNING
            status.state = JobState.RUNNING
            status.started_at = status.started_at or meta.get("started_at") or time.time()
            if "step" in meta and (meta["step"], meta.get("total", status.total)) != (status.step, status.total):
                status.step, status.total = int(meta["step"]), int(meta.get("total", status.total))
                now = time.monotonic()
                if now - self._last_report.get(job_id, 0.0) >= self._progress_interval or status.step >= status.total:
                    changed = True
            if changed:
                self._last_report[job_id] = time.monotonic()
                self._emit(status)
        elif state == "SUCCESS":
            outcome = info if isinstance(info, dict) else {}
            started = outcome.get("started_at")
            if started and not status.started_at:
                status.started_at = started
            kind = outcome.get("outcome")
            if kind == "succeeded":
                result = outcome.get("result") or {}
                status.step = status.total = int(result.get("steps", status.total))
                self._finish(job_id, JobState.SUCCEEDED, result=result, finished_at=outcome.get("finished_at"))
            elif kind == "superseded":
                self._finish(job_id, JobState.SUPERSEDED, superseded_by=outcome.get("superseded_by"))
            elif kind == "cancelled":
                self._finish(job_id, JobState.CANCELLED, error=outcome.get("error", "cancelled"))
            else:
                self._finish(job_id, JobState.FAILED, error=f"unexpected worker result: {outcome!r}")
        elif state == "FAILURE":
            error = f"{type(info).__name__}: {info}" if isinstance(info, BaseException) else str(info)
            self._finish(job_id, JobState.FAILED, error=error)
        elif state == "REVOKED":
            self._finish(job_id, JobState.CANCELLED, error="revoked")
        # PENDING / RECEIVED / RETRY: still queued
