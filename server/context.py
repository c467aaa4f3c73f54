"""Everything a request handler needs, built once per application from the settings."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from learner.executors import EmbeddedExecutor, ExecutorFactory
from learner.reentry import ThreadReentry
from server.metrics import Metrics
from server.services.model_hub import ModelHub
from server.services.training import TrainingService
from server.settings import TRAINING_PAUSE_SECONDS, Settings
from server.storage.datastore import DataStore
from server.storage.db import make_engine, make_session_factory
from server.storage.migrate import create_schema


class ComputeSlots:
    """At most ``n`` heavy computations (prediction, propagation) at once, in worker threads.

    A thread that holds a slot and asks again passes through (a round holds one from its
    first read until its training job is queued, and the prediction it may need inside asks
    for one too; ``learner.reentry``)."""

    def __init__(self, n: int):
        self._semaphore = threading.BoundedSemaphore(n)
        self._reentry = ThreadReentry()

    def __call__(self) -> AbstractContextManager:
        return self._reentry.hold(lambda: self._semaphore)


#: Seconds of pause budget a training thread regains per second it is not paused (see
#: ``ThreadPolicy``): with requests that never stop, training runs about half of the time.
PAUSE_REFILL_RATE = 1.0


class ThreadPolicy:
    """How the server splits the CPU between interactive requests and background training.

    torch's intra-op thread count is a setting of each OS thread (OpenMP), so each side
    sets its own. A request computing a round, an opening or an accept runs inside
    ``interactive()``; the training thread calls ``before_training_step()`` before every
    optimiser step and runs with ``training_threads``, or with
    ``training_threads_during_rounds`` while any interactive request is in flight, so the
    round keeps a core to itself. An interactive request uses the CPUs that training
    leaves free (all of them when no step ran within ``training_idle_seconds``).
    ``training_threads`` defaults to half the CPUs.

    Fewer threads are not enough on their own: the training thread and the round share
    the GIL, and a round's many short NumPy calls wait for the training loop at every
    switch (ACDC, 2 cores: rounds 3-5x slower while a job ran). So a step that is about to
    start while a request is in flight waits for it to end, and so does a step, a prediction
    or a gate already under way, between two layers (``give_way``, called through
    ``learner.yielding``). The waits draw on a budget of ``max_pause_seconds`` that refills at
    ``PAUSE_REFILL_RATE`` seconds per second of training, so that training always moves on,
    at worst at a fraction of its speed, when requests never stop.
    """

    def __init__(self, training_threads: int | None = None, training_threads_during_rounds: int = 1,
                 cpus: int | None = None, training_idle_seconds: float = 2.0,
                 max_pause_seconds: float = TRAINING_PAUSE_SECONDS):
        self.cpus = max(1, cpus or os.cpu_count() or 1)
        # Half the CPUs by default: the other half stays with the requests, and a training job
        # with more OpenMP threads than the cores it actually gets slows down several times
        # (2 threads on this 2-core machine at load 14: 36 s per step against 9 s with 1).
        self.training_threads = max(1, training_threads or self.cpus // 2)
        self.training_threads_during_rounds = max(1, min(training_threads_during_rounds, self.training_threads))
        self.training_idle_seconds = training_idle_seconds
        self.max_pause_seconds = max_pause_seconds
        self._lock = threading.Condition()
        self._in_flight = 0
        self._last_step = -float("inf")
        self._pause_budget = self.max_pause_seconds
        self._budget_at = time.monotonic()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def interactive_threads(self) -> int:
        with self._lock:
            training = time.monotonic() - self._last_step < self.training_idle_seconds
        return max(1, self.cpus - self.training_threads_during_rounds) if training else self.cpus

    @contextmanager
    def interactive(self) -> Iterator[None]:
        torch.set_num_threads(self.interactive_threads())
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                if not self._in_flight:
                    self._lock.notify_all()

    def _wait_for_requests(self) -> None:
        """(Lock held.) Wait while a request is in flight, as long as the pause budget lasts."""
        now = time.monotonic()
        self._pause_budget = min(self.max_pause_seconds,
                                 self._pause_budget + (now - self._budget_at) * PAUSE_REFILL_RATE)
        self._budget_at = now
        while self._in_flight and self._pause_budget > 0:
            self._lock.wait(self._pause_budget)
            waited_until = time.monotonic()
            self._pause_budget -= waited_until - self._budget_at
            self._budget_at = waited_until

    def give_way(self) -> None:
        """Called by the training thread between layers: wait while a request is in flight."""
        if not self._in_flight:  # the common case, without the lock (a stale read costs one layer)
            return
        with self._lock:
            self._wait_for_requests()

    def training_threads_now(self) -> int:
        """The threads of the step about to start, after waiting (bounded) for requests in flight."""
        with self._lock:
            self._wait_for_requests()
            self._last_step = time.monotonic()
            busy = self._in_flight > 0
        return self.training_threads_during_rounds if busy else self.training_threads

    def before_training_step(self) -> None:
        """Called by the training thread before each optimiser step."""
        wanted = self.training_threads_now()
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)


class ImageLocks:
    """One lock per image: rounds, undo and accept of an image happen one after another."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}

    def __call__(self, image_id: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(image_id, threading.Lock())


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker
    datastore: DataStore
    metrics: Metrics
    compute: ComputeSlots
    hub: ModelHub
    training: TrainingService
    threads: ThreadPolicy = field(default_factory=ThreadPolicy)
    image_locks: ImageLocks = field(default_factory=ImageLocks)


def executor_factory(settings: Settings, threads: ThreadPolicy) -> ExecutorFactory:
    """Where training jobs run: Celery workers when a broker is configured (distributed mode),
    else the embedded executor, its steps under the server's thread policy. The training
    service builds one executor from the factory at each start."""
    if settings.broker_url:
        # Imported only in distributed mode: the embedded server does not load celery.
        from learner.celery_executor import CeleryExecutor
        from learner.worker import WorkerSettings

        worker_settings = WorkerSettings(broker_url=settings.broker_url, queue_prefix=settings.queue_prefix)
        return partial(CeleryExecutor, worker_settings, progress_interval=1.0)
    return partial(EmbeddedExecutor, progress_interval=1.0, before_step=threads.before_training_step,
                   give_way=threads.give_way)


def build_context(settings: Settings) -> AppContext:
    """Create the data directory and database schema if missing, and wire the services."""
    datastore = DataStore(settings.resolved_data_dir)
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    session_factory = make_session_factory(engine)
    metrics = Metrics()
    compute = ComputeSlots(settings.compute_threads)
    threads = ThreadPolicy(settings.training_threads, settings.training_threads_during_rounds,
                           max_pause_seconds=settings.training_pause_seconds)
    return AppContext(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        datastore=datastore,
        metrics=metrics,
        compute=compute,
        hub=ModelHub(datastore, compute, prediction_cache_bytes=int(settings.prediction_cache_mb * 2**20)),
        training=TrainingService(session_factory, datastore, metrics, executor_factory(settings, threads)),
        threads=threads,
    )
