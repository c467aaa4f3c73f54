"""The MONAI Label-compatible API at the server's root (3D Slicer's and OHIF's MONAI Label
plug-ins); the mapping onto scribbleflow lives in ``server/services/monailabel.py``, the
endpoint table in ``docs/viewers.md``."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.monailabel import activelearning, auth, datastore, infer, info, train


def build_router() -> APIRouter:
    router = APIRouter()
    for module in (auth, info, datastore, infer, activelearning, train):
        router.include_router(module.router)
    return router
