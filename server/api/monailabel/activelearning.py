"""``POST /activelearning/{strategy}``: the next image of the project's stream."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from server.api.deps import Ctx
from server.api.monailabel.deps import ServedProject
from server.api.monailabel.schemas import NextSample
from server.auth import CurrentUser, Db
from server.services import monailabel

router = APIRouter(prefix="/activelearning", tags=["MONAI Label: active learning"])


@router.post("/{strategy}", response_model=NextSample, response_model_exclude_none=True,
             summary="The next image (`first`: stream order, `uncertainty`); `{}` when none is left")
def next_sample(
    strategy: str, ctx: Ctx, db: Db, project: ServedProject, user: CurrentUser,
    params: dict[str, Any] | None = Body(None, description="Accepted and unused (e.g. client_id)."),
) -> NextSample:
    return NextSample.model_validate(monailabel.next_sample(ctx, db, user, project, strategy))
