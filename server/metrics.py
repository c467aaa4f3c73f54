"""Prometheus metrics of one server instance (own registry, exposed at ``GET /metrics``).

Per-project gauges (serving version, its validation Dice, images accepted) are set from
the database and the model registries at every scrape (``set_project_states``), so they
are right whichever process trained the model; counters and histograms count the events
this process saw.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Receive, Scope, Send

CONTENT_TYPE = CONTENT_TYPE_LATEST
ROUND_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120)
PHASE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)


class LapClock:
    """Where one request's time goes: ``lap(name)`` gives the seconds since the previous lap
    (or the start) to phase ``name``; a phase lapped twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        return seconds

    def elapsed(self) -> float:
        """Seconds from the start to the latest lap."""
        return self._last - self._started

    def observe(self, histogram: Histogram) -> None:
        for name, seconds in self.seconds.items():
            histogram.labels(phase=name).observe(seconds)


@dataclass(frozen=True)
class ProjectState:
    """What the per-project gauges show of one project."""

    project_id: int
    name: str
    serving_version: int | None
    serving_dice: float | None
    images_accepted: int


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "scribbleflow_request_seconds", "HTTP request latency", ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.rounds = Counter("scribbleflow_rounds", "Annotation rounds stored", ["kind"], registry=self.registry)
        self.round_seconds = Histogram(
            "scribbleflow_round_compute_seconds",
            "Server time of a round until its answer is computed (its waits included), per project",
            ["project"], registry=self.registry, buckets=ROUND_BUCKETS,
        )
        self.round_phase_seconds = Histogram(
            # Where a round's wall time goes on the server: waits (the image lock, a compute
            # slot) apart from work (reading, the prediction, the computation, files, commit).
            "scribbleflow_round_phase_seconds", "Time per round in each phase of the round request",
            ["phase"], registry=self.registry, buckets=PHASE_BUCKETS,
        )
        self.round_compute_phase_seconds = Histogram(
            # The phase "compute" above, split as ``registration.round.ROUND_PHASES`` times it.
            "scribbleflow_round_compute_phase_seconds",
            "Time per round in each part of its computation (the round phase 'compute'; 0 where a part did not run)",
            ["phase"], registry=self.registry, buckets=PHASE_BUCKETS,
        )
        self.uploads = Counter("scribbleflow_uploads", "Images uploaded", ["format"], registry=self.registry)
        self.jobs = Counter("scribbleflow_jobs", "Training job state changes", ["state"], registry=self.registry)
        self.queue_depth = Gauge("scribbleflow_queue_depth", "Training jobs waiting", registry=self.registry)
        self.job_seconds = Histogram(
            # By trigger too: a 200-step accept job, a superseded round job and a consolidation
            # job differ by minutes, and annotation-to-model time is the accept jobs' alone.
            "scribbleflow_job_seconds", "Training job run time, start to end, by final state and trigger",
            ["state", "trigger"],
            registry=self.registry, buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
        )
        self.project_info = Gauge("scribbleflow_project_info", "1 per project; its name", ["project", "name"],
                                  registry=self.registry)
        self.serving_version = Gauge("scribbleflow_project_serving_version", "Model version serving the project",
                                     ["project"], registry=self.registry)
        self.serving_dice = Gauge(
            "scribbleflow_project_serving_validation_dice",
            "Validation Dice of the serving version (absent until measured)", ["project"], registry=self.registry,
        )
        self.images_accepted = Gauge("scribbleflow_project_images_accepted", "Images with an accepted label",
                                     ["project"], registry=self.registry)
        self._project_lock = threading.Lock()

    def set_project_states(self, states: list[ProjectState]) -> None:
        """Replace the per-project gauges (projects deleted since the last scrape disappear)."""
        with self._project_lock:
            for gauge in (self.project_info, self.serving_version, self.serving_dice, self.images_accepted):
                gauge.clear()
            for state in states:
                project = str(state.project_id)
                self.project_info.labels(project, state.name).set(1)
                self.images_accepted.labels(project).set(state.images_accepted)
                if state.serving_version is not None:
                    self.serving_version.labels(project).set(state.serving_version)
                if state.serving_dice is not None:
                    self.serving_dice.labels(project).set(state.serving_dice)

    def render(self) -> bytes:
        with self._project_lock:
            return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Times every HTTP request by its route template (not the raw path: ids stay out of labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_remember(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_remember)
        finally:
            template = route_template(scope) if scope.get("route") is not None else "unmatched"
            self.metrics.request_seconds.labels(scope["method"], template, str(status["code"])).observe(
                time.perf_counter() - started
            )


def route_template(scope: Scope) -> str:
    """The request path with each path parameter's segment replaced by ``{name}``."""
    segments = scope["path"].split("/")
    for name, value in (scope.get("path_params") or {}).items():
        for index, segment in enumerate(segments):
            if segment == str(value):
                segments[index] = "{" + name + "}"
                break
    return "/".join(segments)
