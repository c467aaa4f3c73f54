"""Everything a request handler needs, built once per application from the settings."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from server.metrics import Metrics
from server.services.models import ModelHub
from server.services.training import TrainingService
from server.settings import Settings
from server.storage.datastore import DataStore


class ComputeSlots:
    """At most ``n`` heavy computations (prediction, propagation) at once, in worker threads."""

    def __init__(self, n: int):
        self._semaphore = threading.BoundedSemaphore(n)

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._semaphore:
            yield


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
    image_locks: ImageLocks = field(default_factory=ImageLocks)


def build_context(settings: Settings) -> AppContext:
    """Create the data directory and database schema if missing, and wire the services."""
    from server.storage.db import create_schema, make_engine, make_session_factory

    datastore = DataStore(settings.resolved_data_dir)
    engine = make_engine(settings.resolved_database_url)
    create_schema(engine)
    session_factory = make_session_factory(engine)
    metrics = Metrics()
    compute = ComputeSlots(settings.compute_threads)
    return AppContext(
        settings=settings,
        engine=engine,
        session_factory=session_factory,
        datastore=datastore,
        metrics=metrics,
        compute=compute,
        hub=ModelHub(datastore, compute),
        training=TrainingService(session_factory, datastore, metrics,
                                 executor_factory=_celery_executor_factory(settings)),
    )


def _celery_executor_factory(settings: Settings):
    """Distributed mode (issue 13): a CeleryExecutor when a broker is configured, else None.
    A minimal selection, to be folded into the executor seam."""
    if not settings.broker_url:
        return None
    # Imported only in distributed mode: the embedded server does not load celery.
    from learner.celery_executor import CeleryExecutor
    from learner.worker import WorkerSettings

    worker_settings = WorkerSettings(broker_url=settings.broker_url, queue_prefix=settings.queue_prefix)
    return lambda on_change: CeleryExecutor(worker_settings, on_change=on_change, progress_interval=1.0)
