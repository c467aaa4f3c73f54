"""Where training jobs run. ``Executor`` is the interface the server uses;
``EmbeddedExecutor`` runs jobs in a background thread of the server process, one at a
time (training saturates the CPU). A Celery executor will implement the same interface
and run the same job function (``learner.jobs.run_train_job_at_paths``) in a worker.

Job life cycle::

    queued ──> running ──> succeeded | failed | cancelled
      └──> superseded   (a newer job for the same image arrived before it started)
      └──> cancelled    (cancel() or shutdown() before it started)

Coalescing: a job's ``coalesce_key`` is (project, image). Submitting a job while another
job with the same key is still queued marks the queued one ``superseded`` (with the id of
the job that replaced it) and puts the new one in its place in the queue, so an image's
newest round is trained once instead of every round in turn. A running round job is not
interrupted by a newer round (the new job queues behind it), but an accept job
(``TrainJob.is_final``) stops a running round job of its image, or a consolidation job of its
project, at the next step (state ``cancelled``; ``TrainJob.stops``; a queued consolidation
job of the project is cancelled at once): the accepted label
supersedes the round's proxy, consolidation can run again later, and the new model should
not wait for either (annotation-to-model latency). Consolidation jobs (no image) coalesce
per project. The next job to run is the oldest queued accept job, of any project, or else the
oldest queued job: an accept job waits at most for the job running when it arrived.

State changes (and progress, at most every ``progress_interval`` seconds) are reported
to ``on_change(JobStatus)`` from a separate notifier thread, in the order they happened,
with no executor lock held: the callback may be slow (a database write) or call back into
the executor. Exceptions in the callback are logged and otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from learner.jobs import TrainJob, TrainResult, run_train_job_at_paths
from learner.online import ProgressCallback, StopCheck, UpdateCancelled, preload_training_imports
from learner.yielding import yielding_to

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


@dataclass
class JobStatus:
    """A snapshot of one job. Times are Unix seconds; ``result`` is ``TrainResult.to_dict()``."""

    job_id: str
    project_id: str
    image_id: str
    round_id: str
    state: JobState
    step: int = 0
    total: int = 0
    result: dict | None = None
    error: str | None = None
    superseded_by: str | None = None
    submitted_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["state"] = str(self.state)
        return data


class QueueFull(RuntimeError):
    """The executor's queue holds ``max_queued`` jobs already."""


class UnknownJob(KeyError):
    """No job with that id (never submitted, or forgotten long after it finished)."""


#: runner(job, progress, should_stop) -> TrainResult (or a JSON-safe dict).
JobRunner = Callable[[TrainJob, ProgressCallback, StopCheck], TrainResult | dict]
#: on_change(status snapshot)
StateCallback = Callable[[JobStatus], None]


class Executor(Protocol):
    """Everything the server needs from the place where jobs run.

    An executor reports every state change of its jobs (and their progress) to the
    ``on_change`` callback it was built with (``ExecutorFactory``), in the order they
    happened, from one thread of its own.
    """

    def submit(self, job: TrainJob) -> str:
        """Queue ``job``; returns its id. Raises QueueFull or RuntimeError after shutdown."""
        ...

    def status(self, job_id: str) -> JobStatus:
        """The job's current snapshot; UnknownJob when there is none."""
        ...

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job, or ask a running one to stop; False when already finished."""
        ...

    def queue_depth(self) -> int:
        """Jobs waiting to run (not counting running ones)."""
        ...

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop taking jobs, cancel queued ones and the running one, optionally wait."""
        ...


class ExecutorFactory(Protocol):
    """Builds an executor that reports to ``on_change``; the server builds a fresh one at
    each start (``functools.partial(EmbeddedExecutor, max_queued=...)`` is one)."""

    def __call__(self, *, on_change: StateCallback) -> Executor: ...


#: Put on a JobBook's event queue to end its notifier thread.
NOTIFIER_STOP = object()


class JobBook:
    """The job table both executors keep: snapshots, waiting, state events to the callback.

    Subclasses set ``_lock`` (a ``threading.Condition``), ``_jobs`` (job id -> JobStatus, in
    submission order), ``_on_change``, ``_events`` (a queue drained by ``_notify_loop`` on its
    own thread) and ``_keep_finished``.
    """

    def status(self, job_id: str) -> JobStatus:
        with self._lock:
            status = self._jobs.get(job_id)
            if status is None:
                raise UnknownJob(job_id)
            return dataclasses.replace(status)

    def jobs(self) -> list[JobStatus]:
        """Snapshots of every remembered job, oldest submission first."""
        with self._lock:
            return [dataclasses.replace(s) for s in self._jobs.values()]

    def wait(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Block until the job has finished (or ``timeout`` seconds passed); its snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if job_id not in self._jobs:
                raise UnknownJob(job_id)
            while job_id in self._jobs and not self._jobs[job_id].state.finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._lock.wait(remaining)
            return self.status(job_id)

    def _emit(self, status: JobStatus) -> None:  # lock held
        if self._on_change is not None:
            self._events.put(dataclasses.replace(status))

    def _forget_old(self) -> None:  # lock held
        finished = [job_id for job_id, s in self._jobs.items() if s.state.finished]
        for job_id in finished[: max(0, len(finished) - self._keep_finished)]:
            del self._jobs[job_id]

    def _notify_loop(self) -> None:  # notifier thread, no lock
        while True:
            event = self._events.get()
            if event is NOTIFIER_STOP:
                return
            try:
                self._on_change(event)
            except Exception:
                log.exception("job state callback failed for job %s", event.job_id)


class EmbeddedExecutor(JobBook):
    """Runs jobs in one background thread of this process (see the module docstring).

    runner: the job function (default: ``run_train_job_at_paths``).
    max_queued: queued (not yet running) jobs accepted before ``submit`` raises QueueFull.
    keep_finished: finished jobs whose status stays queryable (oldest forgotten first).
    before_step: called in the worker thread before every optimiser step of a job (e.g. the
        server's thread policy setting the step's torch threads).
    give_way: called in the worker thread between the layers of every forward and backward
        pass of a job (``learner.yielding``), e.g. to wait while a round computes.
    preload: run in the worker thread before it takes its first job (default
        ``learner.online.preload_training_imports``; None: nothing).
    """

    def __init__(
        self,
        runner: JobRunner = run_train_job_at_paths,
        *,
        max_queued: int = 64,
        on_change: StateCallback | None = None,
        progress_interval: float = 1.0,
        keep_finished: int = 1000,
        before_step: Callable[[], None] | None = None,
        give_way: Callable[[], None] | None = None,
        preload: Callable[[], None] | None = preload_training_imports,
    ):
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, got {max_queued}")
        self._runner = runner
        self._max_queued = int(max_queued)
        self._on_change = on_change
        self._progress_interval = float(progress_interval)
        self._keep_finished = max(1, int(keep_finished))
        self._before_step = before_step
        self._give_way = give_way
        self._preload = preload
        self._lock = threading.Condition(threading.RLock())
        self._queue: deque[TrainJob] = deque()
        self._jobs: OrderedDict[str, JobStatus] = OrderedDict()
        self._running: str | None = None
        self._running_job: TrainJob | None = None
        self._stop_requested: set[str] = set()
        self._superseded_running: dict[str, str] = {}  # running round job -> the accept job stopping it
        self._closed = False
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._notifier = threading.Thread(target=self._notify_loop, name="scribbleflow-job-events", daemon=True)
        self._worker = threading.Thread(target=self._work_loop, name="scribbleflow-train", daemon=True)
        self._notifier.start()
        self._worker.start()

    # -- interface -----------------------------------------------------------------------
    def submit(self, job: TrainJob) -> str:
        with self._lock:
            if self._closed:
                raise RuntimeError("the executor is shut down")
            if job.job_id in self._jobs:
                raise ValueError(f"job id {job.job_id} was submitted before")
            position = next((i for i, q in enumerate(self._queue) if q.coalesce_key == job.coalesce_key), None)
            if position is None and len(self._queue) >= self._max_queued:
                raise QueueFull(f"{len(self._queue)} training jobs are queued already (limit {self._max_queued})")
            status = JobStatus(
                job_id=job.job_id,
                project_id=job.project_id,
                image_id=job.image_id,
                round_id=job.round_id,
                state=JobState.QUEUED,
                total=job.steps,
                submitted_at=time.time(),
            )
            self._jobs[job.job_id] = status
            if position is not None:
                old = self._queue[position]
                self._queue[position] = job
                self._finish(old.job_id, JobState.SUPERSEDED, superseded_by=job.job_id)
            else:
                self._queue.append(job)
            for waiting in [q for q in self._queue if q is not job and job.stops(q)]:
                self._queue.remove(waiting)
                self._finish(waiting.job_id, JobState.CANCELLED, superseded_by=job.job_id,
                             error=f"superseded by accept job {job.job_id} before it started")
            running = self._running_job
            if running is not None and job.stops(running):
                self._stop_requested.add(running.job_id)
                self._superseded_running[running.job_id] = job.job_id
            self._emit(status)
            self._forget_old()
            self._lock.notify_all()
            return job.job_id

    def queue_depth(self) -> int:
        """Jobs waiting (not counting the running one)."""
        with self._lock:
            return len(self._queue)

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            status = self._jobs.get(job_id)
            if status is None:
                raise UnknownJob(job_id)
            if status.state == JobState.QUEUED:
                self._queue = deque(j for j in self._queue if j.job_id != job_id)
                self._finish(job_id, JobState.CANCELLED, error="cancelled before it started")
                return True
            if status.state == JobState.RUNNING:
                self._stop_requested.add(job_id)
                return True
            return False

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                while self._queue:
                    self._finish(self._queue.popleft().job_id, JobState.CANCELLED, error="executor shut down")
                if self._running is not None:
                    self._stop_requested.add(self._running)
                self._lock.notify_all()
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._worker.join(timeout)
            if not self._worker.is_alive():
                self._events.put(NOTIFIER_STOP)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._notifier.join(remaining)

    # -- internals (called with the lock held unless said otherwise) ---------------------
    def _finish(self, job_id: str, state: JobState, **changes) -> None:
        status = self._jobs[job_id]
        status.state = state
        status.finished_at = time.time()
        for key, value in changes.items():
            setattr(status, key, value)
        self._emit(status)
        self._lock.notify_all()

    def _next_job(self) -> TrainJob | None:
        with self._lock:
            while not self._queue and not self._closed:
                self._lock.wait()
            if not self._queue:
                return None
            # Accept jobs (any project's) go first: a user waits for that model; the rest in order.
            job = next((q for q in self._queue if q.is_final), self._queue[0])
            self._queue.remove(job)
            status = self._jobs[job.job_id]
            status.state, status.started_at = JobState.RUNNING, time.time()
            self._running = job.job_id
            self._running_job = job
            self._emit(status)
            return job

    def _work_loop(self) -> None:  # worker thread
        if self._preload is not None:
            try:
                self._preload()
            except Exception:  # only a head start: the jobs must run without it
                log.exception("preloading the training imports failed")
        while True:
            job = self._next_job()
            if job is None:
                return
            self._run(job)

    def _run(self, job: TrainJob) -> None:
        last_report = 0.0

        def progress(step: int, total: int) -> None:
            nonlocal last_report
            with self._lock:
                status = self._jobs[job.job_id]
                status.step, status.total = int(step), int(total)
                now = time.monotonic()
                if step >= total or now - last_report >= self._progress_interval:
                    last_report = now
                    self._emit(status)

        def should_stop() -> bool:  # asked before every step
            if self._before_step is not None:
                self._before_step()
            with self._lock:
                return job.job_id in self._stop_requested

        try:
            with yielding_to(self._give_way):
                outcome = self._runner(job, progress, should_stop)
            result = outcome.to_dict() if isinstance(outcome, TrainResult) else dict(outcome)
            final = {"state": JobState.SUCCEEDED, "result": result}
        except UpdateCancelled as stopped:
            final = {"state": JobState.CANCELLED, "error": str(stopped)}
            with self._lock:
                accept = self._superseded_running.get(job.job_id)
            if accept is not None:
                final.update(error=f"superseded by accept job {accept} ({stopped})", superseded_by=accept)
        except Exception as error:  # a failed job must not end the worker
            log.exception("training job %s failed", job.job_id)
            final = {"state": JobState.FAILED, "error": f"{type(error).__name__}: {error}"}
        with self._lock:
            self._running = None
            self._running_job = None
            self._stop_requested.discard(job.job_id)
            self._superseded_running.pop(job.job_id, None)
            state = final.pop("state")
            self._finish(job.job_id, state, **final)
            self._forget_old()
