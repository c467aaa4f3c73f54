"""Dependencies of the MONAI Label routers: the served project."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from server.api.deps import Ctx
from server.auth import CurrentUser, Db
from server.services import monailabel
from server.storage.tables import Project


def served_project(ctx: Ctx, db: Db, _user: CurrentUser) -> Project:
    """The served project; the caller's token is checked first (no answer without one)."""
    return monailabel.require_project(db, ctx.settings)


ServedProject = Annotated[Project, Depends(served_project)]
