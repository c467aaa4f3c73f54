"""Prometheus metrics of one server instance (own registry, exposed at ``GET /metrics``)."""

from __future__ import annotations

import time

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
            "scribbleflow_round_compute_seconds", "Propagation + prediction + fusion time per round",
            registry=self.registry, buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120),
        )
        self.uploads = Counter("scribbleflow_uploads", "Images uploaded", ["format"], registry=self.registry)
        self.jobs = Counter("scribbleflow_jobs", "Training job state changes", ["state"], registry=self.registry)
        self.queue_depth = Gauge("scribbleflow_queue_depth", "Training jobs waiting", registry=self.registry)

    def render(self) -> bytes:
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
