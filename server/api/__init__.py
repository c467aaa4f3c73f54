"""HTTP routers, one per resource, all under ``/api/v1`` (``GET /health`` also at the root)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from server.api import admin, dashboard, deps, health, images, jobs, models, projects, sessions
from server.schemas import API_PREFIX


def build_router() -> APIRouter:
    router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(deps.ids_in_range)])
    for module in (health, projects, images, sessions, models, jobs, admin, dashboard):
        router.include_router(module.router)
    return router
