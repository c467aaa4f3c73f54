"""Model versions of a project: list, serving, one version, import an offline checkpoint."""

from __future__ import annotations

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import FileResponse

from server import schemas
from server.api.deps import Ctx, end_transaction, save_upload
from server.auth import AdminUser, CurrentUser, Db
from server.errors import BadInput, NotFound
from server.services import models as model_service
from server.services import projects
from server.services.models import version_out

router = APIRouter(tags=["models"])


@router.get("/projects/{project_id}/models", response_model=schemas.ModelsOut,
            summary="Every model version (rejected ones included) and the serving one")
def list_versions(project_id: int, ctx: Ctx, db: Db, _user: CurrentUser) -> schemas.ModelsOut:
    projects.get_project(db, project_id)
    versions = [version_out(r) for r in ctx.hub.versions(project_id)]
    serving = next((v.version for v in versions if v.serving), None)
    return schemas.ModelsOut(serving_version=serving, versions=versions)


@router.get("/projects/{project_id}/models/serving", response_model=schemas.ModelVersionOut)
def serving_version(project_id: int, ctx: Ctx, db: Db, _user: CurrentUser) -> schemas.ModelVersionOut:
    projects.get_project(db, project_id)
    record = ctx.hub.registry(project_id).serving_record()
    if record is None:
        raise NotFound(f"project {project_id} has no serving model")
    return version_out(record)


@router.get("/projects/{project_id}/models/{version}", response_model=schemas.ModelVersionOut)
def get_version(project_id: int, version: int, ctx: Ctx, db: Db, _user: CurrentUser) -> schemas.ModelVersionOut:
    projects.get_project(db, project_id)
    record = next((r for r in ctx.hub.versions(project_id) if r.version == version), None)
    if record is None:
        raise NotFound(f"project {project_id} has no model version {version}")
    return version_out(record)


@router.get("/projects/{project_id}/models/{version}/checkpoint", response_class=FileResponse,
            summary="Download a version's checkpoint (.pt, as scribbleflow train writes them) (admin)")
def download_checkpoint(project_id: int, version: int, ctx: Ctx, db: Db, _user: AdminUser) -> FileResponse:
    projects.get_project(db, project_id)
    end_transaction(db)
    registry = ctx.hub.registry(project_id)
    if not any(r.version == version for r in registry.versions()):
        raise NotFound(f"project {project_id} has no model version {version}")
    path = registry.checkpoint_path(version)
    if not path.is_file():
        raise NotFound(f"the checkpoint of version {version} is missing from the data store")
    return FileResponse(path, media_type="application/octet-stream",
                        filename=f"project-{project_id}-v{version:06d}.pt")


@router.post(
    "/projects/{project_id}/models/import", response_model=schemas.ModelVersionOut, status_code=201,
    summary="Serve a checkpoint trained offline (scribbleflow train / bench offline) (admin)",
)
def import_checkpoint(
    project_id: int, ctx: Ctx, db: Db, user: AdminUser, file: UploadFile = File(...)
) -> schemas.ModelVersionOut:
    project = projects.get_project(db, project_id)
    if not (file.filename or "").endswith((".pt", ".pth", ".ckpt")):
        raise BadInput("a checkpoint must be a .pt file written by scribbleflow (train or bench offline)")
    end_transaction(db)
    path = save_upload(ctx, file)
    try:
        record = model_service.import_checkpoint(db, ctx.hub, user, project, path, file.filename)
    finally:
        path.unlink(missing_ok=True)
    return version_out(record)
