"""``GET /info/``: the app as MONAI Label describes itself (labels, models, trainers, ...)."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import Ctx
from server.api.health import _version
from server.api.monailabel.schemas import AppInfo
from server.auth import CurrentUser, Db
from server.services import monailabel

router = APIRouter(prefix="/info", tags=["MONAI Label: info"])


@router.get("/", response_model=AppInfo, summary="Labels, models, trainers, strategies, datastore counts")
def app_info(ctx: Ctx, db: Db, _user: CurrentUser) -> AppInfo:
    project = monailabel.served_project(db, ctx.settings)
    return AppInfo.model_validate(monailabel.info(ctx, db, project, _version()))
