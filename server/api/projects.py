"""Projects, their learning settings, stream, audit trail and learning curve."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query

from server import schemas
from server.api.deps import Ctx
from server.auth import AdminUser, CurrentUser, Db
from server.services import audit, curves, projects, stream
from server.services import images as image_service

router = APIRouter(tags=["projects"])


@router.post("/projects", response_model=schemas.ProjectOut, status_code=201, summary="Create a project (admin)")
def create_project(request: schemas.ProjectCreate, ctx: Ctx, db: Db, user: AdminUser) -> schemas.ProjectOut:
    project = projects.create_project(db, ctx.settings, ctx.hub, user, request)
    return projects.project_out(db, ctx.hub, project)


@router.get("/projects", response_model=list[schemas.ProjectOut])
def list_projects(ctx: Ctx, db: Db, _user: CurrentUser) -> list[schemas.ProjectOut]:
    return [projects.project_out(db, ctx.hub, p) for p in projects.list_projects(db)]


@router.get("/projects/{project_id}", response_model=schemas.ProjectOut)
def get_project(project_id: int, ctx: Ctx, db: Db, _user: CurrentUser) -> schemas.ProjectOut:
    return projects.project_out(db, ctx.hub, projects.get_project(db, project_id))


@router.patch(
    "/projects/{project_id}/learning", response_model=schemas.ProjectOut, summary="Change learning settings (admin)"
)
def update_learning(
    project_id: int, change: schemas.LearningSettingsUpdate, ctx: Ctx, db: Db, user: AdminUser
) -> schemas.ProjectOut:
    project = projects.update_learning(db, user, projects.get_project(db, project_id), change)
    return projects.project_out(db, ctx.hub, project)


@router.get("/projects/{project_id}/stream/next", response_model=schemas.StreamNext,
            summary="The next image to annotate")
def next_image(
    project_id: int, ctx: Ctx, db: Db, user: CurrentUser,
    order: Literal["stream", "uncertainty"] = Query("stream", description="stream order or model uncertainty"),
) -> schemas.StreamNext:
    project = projects.get_project(db, project_id)
    image = stream.next_image(ctx, db, user, project, order)
    return schemas.StreamNext(
        image=image_service.image_out(image) if image else None,
        order=order,
        remaining=image_service.remaining_count(db, project.id),
    )


@router.get("/projects/{project_id}/audit", response_model=list[schemas.AuditOut],
            summary="Audit trail of a project (admin)")
def project_audit(
    project_id: int, db: Db, _user: AdminUser, limit: int = Query(1000, ge=1, le=100_000)
) -> list[schemas.AuditOut]:
    projects.get_project(db, project_id)
    return [schemas.AuditOut.model_validate(e) for e in audit.list_events(db, project_id=project_id, limit=limit)]


@router.get("/projects/{project_id}/learning-curve", response_model=schemas.LearningCurve)
def learning_curve(project_id: int, ctx: Ctx, db: Db, _user: CurrentUser) -> schemas.LearningCurve:
    return curves.learning_curve(ctx, db, projects.get_project(db, project_id))
