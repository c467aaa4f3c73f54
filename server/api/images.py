"""Images: upload (NIfTI, NRRD, MHA, DICOM series zip), list, read, download, delete."""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from server import schemas
from server.api.deps import Ctx, end_transaction, nifti_response, save_upload
from server.auth import AdminUser, CurrentUser, Db
from server.errors import NotFound
from server.services import audit, history, projects, responses
from server.services import images as image_service

router = APIRouter(tags=["images"])


@router.post(
    "/projects/{project_id}/images", response_model=schemas.ImageOut, status_code=201,
    summary="Upload one volume: NIfTI, NRRD, MHA, or a DICOM series as .zip",
)
def upload_image(
    project_id: int,
    ctx: Ctx,
    db: Db,
    user: CurrentUser,
    file: UploadFile = File(..., description="The volume; its file name's suffix tells the format."),
    name: str | None = Form(None, description="Display name (default: the file name)."),
) -> schemas.ImageOut:
    project = projects.get_project(db, project_id)
    end_transaction(db)
    path = save_upload(ctx, file)
    try:
        image = image_service.upload_image(
            db, ctx.datastore, user, project, path, file.filename, name, ctx.settings.max_upload_bytes
        )
    finally:
        path.unlink(missing_ok=True)
    ctx.metrics.uploads.labels(format=image.source_format).inc()
    return image_service.image_out(image)


@router.get("/projects/{project_id}/images", response_model=list[schemas.ImageOut])
def list_images(project_id: int, db: Db, _user: CurrentUser) -> list[schemas.ImageOut]:
    projects.get_project(db, project_id)
    return [image_service.image_out(i) for i in image_service.list_images(db, project_id)]


@router.get("/images/{image_id}", response_model=schemas.ImageOut)
def get_image(image_id: int, db: Db, _user: CurrentUser) -> schemas.ImageOut:
    return image_service.image_out(image_service.get_image(db, image_id))


@router.patch("/images/{image_id}", response_model=schemas.ImageOut, summary="Hold out for validation (admin)")
def update_image(image_id: int, change: schemas.ImageUpdate, db: Db, user: AdminUser) -> schemas.ImageOut:
    image = image_service.update_image(db, user, image_service.get_image(db, image_id), change)
    return image_service.image_out(image)


@router.get("/images/{image_id}/volume", response_class=FileResponse, summary="Download the volume as NIfTI")
def download_volume(image_id: int, ctx: Ctx, db: Db, _user: CurrentUser) -> FileResponse:
    image = image_service.get_image(db, image_id)
    end_transaction(db)
    return nifti_response(ctx.datastore.resolve(image.path), f"image-{image.id}.nii.gz")


@router.get("/images/{image_id}/label", response_class=FileResponse, summary="Download the accepted label")
def download_label(image_id: int, ctx: Ctx, db: Db, _user: CurrentUser) -> FileResponse:
    image = image_service.get_image(db, image_id)
    if not image.accepted_path:
        raise NotFound(f"image {image_id} has no accepted label yet")
    end_transaction(db)
    return nifti_response(ctx.datastore.resolve(image.accepted_path), f"label-{image.id}.nii.gz")


@router.delete("/images/{image_id}", status_code=204, summary="Delete an image and its annotations (admin)")
def delete_image(image_id: int, ctx: Ctx, db: Db, user: AdminUser) -> None:
    image = image_service.get_image(db, image_id)
    image_service.delete_image(db, ctx, user, image)


@router.get("/images/{image_id}/rounds", response_model=list[schemas.RoundOut],
            summary="Every round of the image, undone ones included")
def list_rounds(image_id: int, db: Db, _user: CurrentUser) -> list[schemas.RoundOut]:
    image_service.get_image(db, image_id)
    return [responses.round_out(db, r) for r in history.list_rounds(db, image_id)]


@router.get("/images/{image_id}/audit", response_model=list[schemas.AuditOut],
            summary="Audit trail of an image (admin)")
def image_audit(
    image_id: int, db: Db, _user: AdminUser, limit: int = Query(1000, ge=1, le=100_000)
) -> list[schemas.AuditOut]:
    return [schemas.AuditOut.model_validate(e) for e in audit.list_events(db, image_id=image_id, limit=limit)]
