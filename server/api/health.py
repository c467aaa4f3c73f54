"""Liveness without a token, and Prometheus metrics with one."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter
from fastapi.responses import Response

from server import schemas
from server.api.deps import Ctx
from server.auth import CurrentUser, Db
from server.metrics import CONTENT_TYPE
from server.services import dashboard

router = APIRouter(tags=["health"])


def _version() -> str:
    try:
        return version("scribbleflow")
    except PackageNotFoundError:
        return "unknown"


@router.get("/health", response_model=schemas.Health, summary="Liveness (no token needed)")
def health(ctx: Ctx) -> schemas.Health:
    return schemas.Health(version=_version(), database=ctx.engine.dialect.name)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(ctx: Ctx, db: Db, _user: CurrentUser) -> Response:
    ctx.metrics.queue_depth.set(ctx.training.queue_depth())
    ctx.metrics.set_project_states(dashboard.project_states(ctx, db))
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)
