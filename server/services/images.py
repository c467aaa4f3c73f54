"""Images of a project: upload (converted to NIfTI, geometry kept), list, read, delete.

An upload is read and checked completely, written to its own folder (temporary file +
rename), and only then committed to the database with its place in the project's
stream; if any step fails nothing is left behind.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from learner.jobs import replay_at
from learner.online import OnlineSettings
from registration.io.volume import Volume
from server import schemas
from server.auth import Principal
from server.errors import BadInput, NotFound
from server.services import audit
from server.services.uploads import read_upload, strip_format_suffix
from server.storage.datastore import DataStore
from server.storage.tables import Image, Project

log = logging.getLogger(__name__)
API = schemas.API_PREFIX


def get_image(db: Session, image_id: int) -> Image:
    image = db.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} not found")
    return image


def list_images(db: Session, project_id: int) -> list[Image]:
    return list(
        db.scalars(select(Image).where(Image.project_id == project_id).order_by(Image.stream_position))
    )


def image_geometry(image: Image) -> Volume:
    """An empty-array Volume carrying the image's geometry (for coordinate conversion)."""
    return Volume(
        np.empty(tuple(image.shape_zyx), dtype=np.uint8),
        tuple(image.spacing_xyz),
        tuple(image.origin_xyz),
        tuple(image.direction),
    )


def load_volume(datastore: DataStore, image: Image) -> Volume:
    return datastore.read_volume(image.path)


def upload_image(
    db: Session,
    datastore: DataStore,
    principal: Principal,
    project: Project,
    upload_path: Path,
    filename: str,
    name: str | None,
    max_bytes: int,
) -> Image:
    converted = read_upload(upload_path, filename, max_bytes)
    volume = converted.volume
    display_name = (name or strip_format_suffix(Path(filename).name)).strip()
    if not display_name:
        raise BadInput("the image needs a name")
    folder = datastore.new_image_dir(project.id)
    try:
        image_path = datastore.write_volume(folder / "image.nii.gz", volume, volume.array)
        locked = db.scalars(
            select(Project).where(Project.id == project.id).with_for_update()
            .execution_options(populate_existing=True)
        ).one()
        position = locked.next_stream_position
        locked.next_stream_position = position + 1
        every = int(locked.learning.get("validation_every", 0))
        image = Image(
            project_id=project.id,
            name=display_name[:300],
            stream_position=position,
            is_validation=bool(every) and (position + 1) % every == 0,
            source_format=converted.source_format,
            pixel_type=converted.pixel_type,
            shape_zyx=list(volume.shape_zyx),
            spacing_xyz=list(volume.spacing_xyz),
            origin_xyz=list(volume.origin_xyz),
            direction=list(volume.direction),
            path=datastore.relative(image_path),
            size_bytes=image_path.stat().st_size,
            created_by=principal.owner,
        )
        db.add(image)
        db.flush()
        audit.record(
            db, principal, "upload", project_id=project.id, image_id=image.id,
            details={"name": image.name, "format": image.source_format, "shape_zyx": image.shape_zyx},
        )
        db.commit()
    except BaseException:
        db.rollback()
        datastore.remove_tree(folder)
        raise
    log.info("image %d uploaded to project %d (%s, shape %s)", image.id, project.id,
             image.source_format, image.shape_zyx)
    return image


def update_image(db: Session, principal: Principal, image: Image, change: schemas.ImageUpdate) -> Image:
    details = {}
    if change.is_validation is not None and change.is_validation != image.is_validation:
        details["is_validation"] = {"from": image.is_validation, "to": change.is_validation}
        image.is_validation = change.is_validation
    if details:
        audit.record(db, principal, "image_update", project_id=image.project_id, image_id=image.id,
                     details=details)
    db.commit()
    return image


def delete_image(db: Session, ctx, principal: Principal, image: Image) -> None:
    """Rows first (with the audit event), then files: a failure leaves only unreferenced files.

    Queued training jobs of the image are cancelled and its slices leave the replay buffer.
    """
    db.commit()  # never wait for the image lock while holding a transaction
    # Under the image lock: a round still computing cannot recreate the folder after delete.
    with ctx.image_locks(image.id):
        datastore: DataStore = ctx.datastore
        folder = datastore.resolve(image.path).parent
        project = db.get(Project, image.project_id)
        audit.record(db, principal, "image_delete", project_id=image.project_id, image_id=image.id,
                     details={"name": image.name})
        image_id, project_id = image.id, image.project_id
        db.delete(image)
        db.commit()
        ctx.training.cancel_image_jobs(image_id)
        replay_root = datastore.replay_dir(project_id)
        if replay_root.exists():
            replay_at(replay_root, OnlineSettings.from_dict(project.learning["online"])).remove(str(image_id))
        datastore.remove_tree(folder)


def remaining_count(db: Session, project_id: int) -> int:
    return int(
        db.scalar(
            select(func.count(Image.id)).where(Image.project_id == project_id, Image.status != "accepted")
        )
        or 0
    )


def image_out(image: Image) -> schemas.ImageOut:
    z, y, x = image.shape_zyx
    links = {
        "self": f"{API}/images/{image.id}",
        "volume": f"{API}/images/{image.id}/volume",
        "rounds": f"{API}/images/{image.id}/rounds",
        "sessions": f"{API}/images/{image.id}/sessions",
    }
    if image.accepted_path:
        links["label"] = f"{API}/images/{image.id}/label"
    return schemas.ImageOut(
        id=image.id,
        project_id=image.project_id,
        name=image.name,
        stream_position=image.stream_position,
        status=image.status,
        is_validation=image.is_validation,
        source_format=image.source_format,
        pixel_type=image.pixel_type,
        shape_zyx=list(image.shape_zyx),
        size_ijk=[x, y, z],
        spacing_xyz=list(image.spacing_xyz),
        origin_xyz=list(image.origin_xyz),
        direction=list(image.direction),
        created_at=image.created_at,
        created_by=image.created_by,
        accepted_at=image.accepted_at,
        accepted_by=image.accepted_by,
        links=links,
    )
