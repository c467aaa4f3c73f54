"""The FastAPI application: ``create_app(settings)``.

Start-up creates the data directory and the database schema when missing and starts the
embedded training executor; shutdown stops it (unfinished jobs stay queued in the
database and are submitted again at the next start). Errors raised by services
(``server.errors``) become 4xx JSON responses ``{"detail": ..., "error": ...}``.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from server.api import build_router
from server.api import dashboard as dashboard_api
from server.api import health as health_api
from server.api import monailabel as monailabel_api
from server.context import AppContext, build_context
from server.errors import ServiceError
from server.metrics import RequestMetricsMiddleware
from server.settings import Settings

log = logging.getLogger(__name__)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from inside the body stream; an HTTPException so that FastAPI's body parsing
    passes it on as a 413 instead of turning it into a generic 400."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)


class BodySizeLimitMiddleware:
    """413 for a request body over the limit, told by Content-Length or counted as it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit_mb = self.max_bytes / (1024 * 1024)
        message = f"the request body is larger than the upload limit of {limit_mb:g} MB"
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await _send_json(send, 413, message, "payload_too_large")
                return
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(message)
            return event

        async def tracking_send(event) -> None:
            nonlocal started
            if event["type"] == "http.response.start":
                started = True
            await send(event)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(send, 413, message, "payload_too_large")


async def _send_json(send: Send, status: int, detail: str, kind: str) -> None:
    body = json.dumps({"detail": detail, "error": kind}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{location}: {error.get('msg', 'invalid')}" if location else error.get("msg", "invalid"))
    return "invalid request: " + "; ".join(parts)


def _document_error_body(app: FastAPI) -> None:
    """Document the 422 body as ``_invalid_request`` below writes it: FastAPI's schema for it
    (``HTTPValidationError``) describes its own default body, a list under ``detail``."""
    build_schema = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build_schema()
            schemas = schema.get("components", {}).get("schemas", {})
            if "HTTPValidationError" in schemas:
                schemas["HTTPValidationError"] = {
                    "title": "HTTPValidationError",
                    "type": "object",
                    "required": ["detail", "error", "errors"],
                    "properties": {
                        "detail": {"type": "string", "description": "What is wrong, in words."},
                        "error": {"type": "string", "enum": ["invalid_request"]},
                        "errors": {"type": "array", "items": {"type": "object"}},
                    },
                }
        return app.openapi_schema

    app.openapi = openapi


def create_app(settings: Settings | None = None, *, context: AppContext | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = context or build_context(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ctx.training.start()
        try:
            yield
        finally:
            ctx.training.stop()
            ctx.engine.dispose()

    app = FastAPI(
        title="scribbleflow",
        version=health_api._version(),
        summary="Learns to segment 3D medical images while radiologists annotate them.",
        description=(
            "All endpoints except `GET /health` need `Authorization: Bearer TOKEN` "
            "(create one with `scribbleflow token create --role admin --owner NAME`)."
        ),
        lifespan=lifespan,
    )
    app.state.context = ctx

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.message, "error": exc.kind}, status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": _validation_message(exc), "error": "invalid_request",
             "errors": json.loads(json.dumps(exc.errors(), default=str))},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail), "error": "http_error"}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    _document_error_body(app)
    app.include_router(build_router())
    app.include_router(health_api.router)  # /health and /metrics at the root as well
    app.include_router(monailabel_api.build_router())  # MONAI Label API at the root: docs/viewers.md
    dashboard_api.add_dashboard_page(app)  # /admin and its scripts
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=ctx.metrics)
    return app
