"""``/datastore``: list, upload images, save final labels (accept), download, image info."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from server.api.deps import Ctx, end_transaction, nifti_response, save_upload
from server.api.monailabel.deps import ServedProject
from server.api.monailabel.schemas import (
    DatalistItem,
    DatastoreAll,
    DatastoreStats,
    Empty,
    ImageAdded,
    LabelSaved,
)
from server.auth import AdminUser, CurrentUser, Db
from server.errors import BadInput, NotFound
from server.services import images, monailabel

router = APIRouter(prefix="/datastore", tags=["MONAI Label: datastore"])



def _image_id():
    return Query(..., description="Image id: its name (`name~<id>` where names repeat).", examples=["case1"])


@router.get("/", response_model=DatastoreStats | DatastoreAll | list[DatalistItem],
            summary="Counts (stats, default), every image and label (all), or image/label pairs (train)")
def datastore(
    ctx: Ctx, db: Db, project: ServedProject, _user: CurrentUser,
    output: Literal["stats", "all", "train"] | None = None,
) -> DatastoreStats | DatastoreAll | list[DatalistItem]:
    if output == "all":
        return DatastoreAll.model_validate(monailabel.datastore_objects(ctx, db, project))
    if output == "train":
        return [DatalistItem(**pair) for pair in monailabel.datalist(db, project)]
    return DatastoreStats.model_validate(monailabel.datastore_stats(db, project))


def _add_image(ctx: Ctx, db: Db, project: ServedProject, user: CurrentUser, file: UploadFile,
               image: str | None) -> ImageAdded:
    end_transaction(db)
    path = save_upload(ctx, file)
    try:
        row, key = monailabel.add_image(ctx, db, user, project, path, file.filename, image)
    finally:
        path.unlink(missing_ok=True)
    ctx.metrics.uploads.labels(format=row.source_format).inc()
    return ImageAdded(image=key)


@router.put("/image", response_model=ImageAdded, summary="Upload a new image (NIfTI, NRRD, MHA, DICOM zip)")
def add_image(
    ctx: Ctx, db: Db, project: ServedProject, user: CurrentUser,
    image: str | None = Query(None, description="Its id (default: the file name without suffix)."),
    params: str = Form("{}", description="JSON object (accepted, unused)."),
    file: UploadFile = File(...),
) -> ImageAdded:
    monailabel.parse_params(params)
    return _add_image(ctx, db, project, user, file, image)


@router.put("/", response_model=ImageAdded, include_in_schema=False)
def add_image_legacy(
    ctx: Ctx, db: Db, project: ServedProject, user: CurrentUser,
    image: str | None = None, params: str = Form("{}"), file: UploadFile = File(...),
) -> ImageAdded:
    """The older upload path the MONAI Label client still uses (``PUT /datastore/?image=``)."""
    monailabel.parse_params(params)
    return _add_image(ctx, db, project, user, file, image)


@router.delete("/image", response_model=Empty, summary="Delete an image and its annotations (admin)")
def remove_image(ctx: Ctx, db: Db, project: ServedProject, user: AdminUser, id: str = _image_id()) -> Empty:
    images.delete_image(db, ctx, user, monailabel.find_image(db, project, id))
    return Empty()


@router.get("/image", response_class=FileResponse, summary="Download an image (NIfTI)")
def download_image(ctx: Ctx, db: Db, project: ServedProject, _user: CurrentUser, image: str = _image_id()):
    row = monailabel.find_image(db, project, image)
    end_transaction(db)
    return nifti_response(ctx.datastore.resolve(row.path), monailabel.file_name(image))


@router.get("/image/info", summary="Image info (name, checksum, ...)")
def get_image_info(ctx: Ctx, db: Db, project: ServedProject, _user: CurrentUser,
                   image: str = _image_id()) -> dict:
    row = monailabel.find_image(db, project, image)
    end_transaction(db)
    return monailabel.image_info(ctx, row, image, checksum=True)


@router.put("/label", response_model=LabelSaved,
            summary="Save the final label: accepts the image (a new version, a training job)")
def save_label(
    ctx: Ctx, db: Db, project: ServedProject, user: CurrentUser,
    image: str = _image_id(),
    tag: str = Query(monailabel.FINAL_TAG, description="Only `final` (the accepted label)."),
    params: str = Form("{}", description="JSON; `label_info` [{name, id}] names the label values."),
    label: UploadFile = File(..., description="Label volume (or raw uint8 .bin), the image's size."),
) -> LabelSaved:
    if (tag or monailabel.FINAL_TAG) != monailabel.FINAL_TAG:
        raise BadInput(f"only the tag {monailabel.FINAL_TAG!r} can be saved (the accepted label); got {tag!r}")
    settings = monailabel.parse_params(params)
    row = monailabel.find_image(db, project, image)
    end_transaction(db)
    path = save_upload(ctx, label)
    try:
        with ctx.threads.interactive():
            row, job, version = monailabel.save_final_label(ctx, db, user, project, row, path, label.filename,
                                                            settings)
    finally:
        path.unlink(missing_ok=True)
    return LabelSaved(image=image, label=image, tag=monailabel.FINAL_TAG, version=version,
                      job_id=job.id if job else None)


@router.get("/label", response_class=FileResponse, summary="Download the final (accepted) label")
def download_label(
    ctx: Ctx, db: Db, project: ServedProject, _user: CurrentUser,
    label: str = _image_id(), tag: str = Query(monailabel.FINAL_TAG),
):
    row = _final_label_image(db, project, label, tag)
    end_transaction(db)
    return nifti_response(ctx.datastore.resolve(row.accepted_path), monailabel.file_name(label))


@router.get("/label/info", summary="Final label info (version, when, by whom)")
def get_label_info(db: Db, project: ServedProject, _user: CurrentUser,
                   label: str = _image_id(), tag: str = Query(monailabel.FINAL_TAG)) -> dict:
    return monailabel.label_info(db, _final_label_image(db, project, label, tag))


def _final_label_image(db: Db, project: ServedProject, label: str, tag: str):
    if tag != monailabel.FINAL_TAG:
        raise NotFound(f"no label tagged {tag!r}: labels are saved as {monailabel.FINAL_TAG!r}")
    row = monailabel.find_image(db, project, label)
    if not row.accepted_path:
        raise NotFound(f"image {label!r} has no final label yet")
    return row
