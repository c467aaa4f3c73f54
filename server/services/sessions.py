"""Annotation sessions on an image: open, add a round, undo, accept.

A session holds a lease on its image: another annotator opening the image gets a
``Conflict`` naming the holder unless they take it over; a lease not renewed within
``Settings.lease_seconds`` has expired and the image is free. Every request of the
holder renews the lease.

The state of an image's annotation is its latest round that was not undone; rounds of
all sessions of the image form one history, so a takeover continues where the previous
annotator stopped. Each round's input and outputs go to a fresh folder (never
overwritten), and the round row is committed only after its files are in place.
Heavy work (prediction, propagation, fusion) runs in the calling worker thread with a
compute slot and with no database transaction open.
"""

from __future__ import annotations

import json
import logging
import time
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from registration.atomic import open_atomic
from registration.volume import Volume
from server import schemas
from server.auth import Principal
from server.context import AppContext
from server.errors import Conflict, NotFound
from server.services import audit, images, interactions, pipeline, projects
from server.services.idempotency import keyed_round
from server.services.uploads import read_upload
from server.storage.db import utcnow
from server.storage.models import AnnotationSession, Image, Project, Round, TrainingJob

log = logging.getLogger(__name__)
API = "/api/v1"

# Files of a round folder.
ROUND_FILES = {
    "input": "input.nii.gz",  # this round's own seeds, uint8, UNLABELLED where none
    "scribble": "scribble.nii.gz",  # all seeds so far (what the user has drawn)
    "proxy": "proxy.nii.gz",  # registration proxy labels
    "proxy_probabilities": "proxy_probabilities.npz",  # float16 (C, z, y, x)
    "confidence": "confidence.nii.gz",  # float32 [0, 1]
    "segmentation": "segmentation.nii.gz",  # fused labels: the result of the round
    "residual": "residual.nii.gz",  # float32 [0, 1]
}
SESSION_FILES = {
    "prediction": "prediction.nii.gz",  # labels predicted at open
    "uncertainty": "uncertainty.nii.gz",  # float32 [0, 1]
    "atlas_probabilities": "atlas_probabilities.npz",  # cold start only
}


# --- lookups --------------------------------------------------------------------------------


def get_session(db: Session, session_id: int) -> AnnotationSession:
    session = db.get(AnnotationSession, session_id)
    if session is None:
        raise NotFound(f"session {session_id} not found")
    return session


def get_round(db: Session, round_id: int) -> Round:
    row = db.get(Round, round_id)
    if row is None:
        raise NotFound(f"round {round_id} not found")
    return row


def active_round(db: Session, image_id: int) -> Round | None:
    """The image's latest round that was not undone: the current state of its annotation."""
    return db.scalar(
        select(Round).where(Round.image_id == image_id, Round.undone_at.is_(None)).order_by(Round.id.desc()).limit(1)
    )


def list_rounds(db: Session, image_id: int) -> list[Round]:
    return list(db.scalars(select(Round).where(Round.image_id == image_id).order_by(Round.id)))


def job_of_round(db: Session, round_id: int) -> TrainingJob | None:
    return db.scalar(select(TrainingJob).where(TrainingJob.round_id == round_id).order_by(TrainingJob.id.desc()))


def _open_sessions(db: Session, image_id: int) -> list[AnnotationSession]:
    return list(
        db.scalars(
            select(AnnotationSession).where(
                AnnotationSession.image_id == image_id, AnnotationSession.state == "open"
            )
        )
    )


def _locked(db: Session, model, row_id: int):
    """The row, re-read and locked for this transaction (a no-op lock on SQLite)."""
    query = select(model).where(model.id == row_id).with_for_update().execution_options(populate_existing=True)
    row = db.scalar(query)
    if row is None:
        raise NotFound(f"{model.__tablename__[:-1]} {row_id} not found")
    return row


# --- leases ---------------------------------------------------------------------------------


def _lease_conflict(holder: AnnotationSession, image_id: int) -> Conflict:
    return Conflict(
        f"image {image_id} is being annotated by {holder.holder!r} (session {holder.id}, lease until "
        f"{holder.lease_expires_at.isoformat(timespec='seconds')}); open it with takeover=true to take it over"
    )


def _check_lease(db: Session, image_id: int, principal: Principal, takeover: bool) -> AnnotationSession | None:
    """The caller's own live session on the image, or None; Conflict if someone else holds it."""
    now = utcnow()
    own = None
    for session in _open_sessions(db, image_id):
        live = session.lease_expires_at > now
        if live and session.holder != principal.owner and not takeover:
            raise _lease_conflict(session, image_id)
        if live and session.holder == principal.owner:
            own = session
    return own


def _close_others(db: Session, image_id: int, principal: Principal, keep: int | None) -> list[str]:
    """Close the image's other open sessions (taken over or expired); their holders."""
    now = utcnow()
    closed = []
    for session in _open_sessions(db, image_id):
        if session.id == keep:
            continue
        session.state = "taken_over" if session.lease_expires_at > now else "expired"
        session.closed_at = now
        closed.append(session.holder)
    return closed


def require_holder(
    db: Session, settings_lease: int, principal: Principal, session: AnnotationSession
) -> None:
    """The session must be open and the caller's; renews its lease (not committed)."""
    if session.state != "open":
        successor = db.scalar(
            select(AnnotationSession)
            .where(AnnotationSession.image_id == session.image_id, AnnotationSession.id > session.id)
            .order_by(AnnotationSession.id.desc())
            .limit(1)
        )
        by = f" by {successor.holder!r} (session {successor.id})" if successor is not None else ""
        raise Conflict(f"session {session.id} is {session.state.replace('_', ' ')}{by}; open a new session")
    if session.holder != principal.owner:
        raise Conflict(f"session {session.id} is held by {session.holder!r}, not by {principal.owner!r}")
    session.lease_expires_at = utcnow() + timedelta(seconds=settings_lease)


# --- model probabilities for an image -----------------------------------------------------


@dataclass
class Prediction:
    source: str  # model | atlas
    version: int | None
    probabilities: np.ndarray  # float32 (C, z, y, x)
    validation_dice: float | None = None  # of the model version, when measured


def _latest_accepted(db: Session, project_id: int, exclude: int) -> Image | None:
    return db.scalar(
        select(Image)
        .where(Image.project_id == project_id, Image.accepted_path.is_not(None), Image.id != exclude)
        .order_by(Image.accepted_at.desc())
        .limit(1)
    )


def _predict(
    ctx: AppContext, project: Project, image: Image, volume: Volume, atlas: Image | None,
    atlas_file: Path | None, version: int | None = None,
) -> Prediction:
    """The model's probabilities (``version``, default the serving one); before any trained
    model, an atlas proxy when possible."""
    size = projects.model_size(project)
    if ctx.hub.has_useful_model(project.id):
        version, probabilities = ctx.hub.predict(project.id, image.id, volume.array, size, version)
        return Prediction("model", version, probabilities, ctx.hub.validation_dice(project.id, version))
    if atlas_file is not None and atlas_file.exists():
        with np.load(atlas_file) as data:
            return Prediction("atlas", None, data["probabilities"].astype(np.float32))
    if atlas is not None:
        try:
            atlas_volume = ctx.datastore.read_volume(atlas.path)
            atlas_labels = ctx.datastore.read_volume(atlas.accepted_path).array
            with ctx.compute():
                probabilities = pipeline.atlas_probabilities(
                    atlas_volume, atlas_labels.astype(np.int64), volume, len(project.labels)
                )
            return Prediction("atlas", None, probabilities)
        except (RuntimeError, ValueError) as exc:  # registration failed: fall back to the model
            log.warning("atlas proposal for image %d failed (%s): using the serving model", image.id, exc)
    version, probabilities = ctx.hub.predict(project.id, image.id, volume.array, size, version)
    return Prediction("model", version, probabilities, ctx.hub.validation_dice(project.id, version))


# --- open -----------------------------------------------------------------------------------


def open_session(
    ctx: AppContext, db: Session, principal: Principal, image: Image, takeover: bool
) -> AnnotationSession:
    own = _check_lease(db, image.id, principal, takeover)
    if own is not None:
        own.lease_expires_at = utcnow() + timedelta(seconds=ctx.settings.lease_seconds)
        db.commit()
        return own
    project = projects.get_project(db, image.project_id)
    atlas = _latest_accepted(db, project.id, image.id)
    db.commit()  # no transaction stays open during the computation

    volume = images.load_volume(ctx.datastore, image)
    folder = ctx.datastore.new_record_dir(ctx.datastore.resolve(image.path).parent, "sessions")
    try:
        prediction = _predict(ctx, project, image, volume, atlas, None)
        labels = prediction.probabilities.argmax(axis=0).astype(np.uint8)
        uncertainty = pipeline.uncertainty_map(prediction.probabilities)
        suggestion = pipeline.opening_suggestion(
            prediction.probabilities, prediction.validation_dice, volume.spacing_zyx
        )
        ctx.datastore.write_volume(folder / SESSION_FILES["prediction"], volume, labels)
        ctx.datastore.write_volume(folder / SESSION_FILES["uncertainty"], volume, uncertainty)
        if prediction.source == "atlas":
            _write_npz(folder / SESSION_FILES["atlas_probabilities"], prediction.probabilities)

        # The image lock orders this with rounds (session row, then image row) on PostgreSQL.
        with ctx.image_locks(image.id):
            # The lease is checked again: someone may have opened the image meanwhile.
            image = _locked(db, Image, image.id)
            _check_lease(db, image.id, principal, takeover)
            closed = _close_others(db, image.id, principal, keep=None)
            now = utcnow()
            session = AnnotationSession(
                image_id=image.id,
                holder=principal.owner,
                token_id=principal.token_id,
                state="open",
                opened_at=now,
                lease_expires_at=now + timedelta(seconds=ctx.settings.lease_seconds),
                model_version=prediction.version,
                prediction_source=prediction.source,
                dir=ctx.datastore.relative(folder),
                label_counts=pipeline.label_counts(labels, projects.label_names(project)),
                suggestion=_suggestion_json(suggestion, volume),
            )
            db.add(session)
            if image.status == "new":
                image.status = "in_progress"
            db.flush()
            audit.record(db, principal, "session_open", project_id=project.id, image_id=image.id,
                         details={"session_id": session.id, "model_version": prediction.version,
                                  "prediction_source": prediction.source})
            if closed and takeover:
                audit.record(db, principal, "takeover", project_id=project.id, image_id=image.id,
                             details={"session_id": session.id, "from": sorted(set(closed))})
            db.commit()
    except BaseException:
        db.rollback()
        ctx.datastore.remove_tree(folder)
        raise
    return session


# --- rounds ---------------------------------------------------------------------------------


@dataclass
class _Prepared:
    project: Project
    image: Image
    previous: Round | None
    previous_seeds: np.ndarray | None
    previous_planes: set[tuple[int, int]]
    previous_segmentation: np.ndarray | None  # the answer the user corrects (none before round 1)


def _prepare(ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession) -> _Prepared:
    session = _locked(db, AnnotationSession, session.id)
    require_holder(db, ctx.settings.lease_seconds, principal, session)
    image = images.get_image(db, session.image_id)
    project = projects.get_project(db, image.project_id)
    previous = active_round(db, image.id)
    db.commit()  # the renewed lease; and no transaction during the computation
    seeds, planes, segmentation = None, set(), None
    if previous is not None:
        seeds = ctx.datastore.read_volume(f"{previous.dir}/{ROUND_FILES['scribble']}").array.astype(np.uint8)
        planes = {(int(a), int(i)) for a, i in previous.planes}
        segmentation = ctx.datastore.read_volume(f"{previous.dir}/{ROUND_FILES['segmentation']}").array
        segmentation = segmentation.astype(np.uint8)
    return _Prepared(project, image, previous, seeds, planes, segmentation)


def add_round(
    ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession, request: schemas.RoundCreate,
    idempotency_key: str | None = None,
) -> Round:
    db.commit()  # never wait for the image lock while holding a transaction
    with ctx.image_locks(session.image_id):
        if (stored := keyed_round(db, session.id, idempotency_key)) is not None:
            return stored  # a retry of a round stored before: the same round, not a second one
        prepared = _prepare(ctx, db, principal, session)
        volume = images.load_volume(ctx.datastore, prepared.image)
        num_classes = len(prepared.project.labels)
        checked = interactions.check_round(request, volume, num_classes)  # before the prediction's cost
        prediction = _round_prediction(ctx, prepared, session, volume)
        painted = interactions.paint_round(
            checked, volume, num_classes, ctx.settings.click_radius, prediction.probabilities
        )
        record = request.model_dump(mode="json")
        return _store_round(ctx, db, principal, session, prepared, volume, prediction, painted,
                            "interactions", record, idempotency_key)


def add_labelmap_round(
    ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession,
    upload_path: Path, filename: str, idempotency_key: str | None = None,
) -> Round:
    db.commit()  # never wait for the image lock while holding a transaction
    with ctx.image_locks(session.image_id):
        if (stored := keyed_round(db, session.id, idempotency_key)) is not None:
            return stored
        prepared = _prepare(ctx, db, principal, session)
        volume = images.load_volume(ctx.datastore, prepared.image)
        labelmap = read_upload(upload_path, filename, ctx.settings.max_upload_bytes).volume
        painted = interactions.labelmap_input(labelmap.array, volume, len(prepared.project.labels))
        prediction = _round_prediction(ctx, prepared, session, volume)
        record = {"labelmap": True, "labelled_voxels": painted.voxels}
        return _store_round(ctx, db, principal, session, prepared, volume, prediction, painted,
                            "labelmap", record, idempotency_key)


def _round_prediction(ctx: AppContext, prepared: _Prepared, session: AnnotationSession, volume: Volume) -> Prediction:
    atlas_file = None
    if session.prediction_source == "atlas":
        atlas_file = ctx.datastore.resolve(session.dir) / SESSION_FILES["atlas_probabilities"]
    # The version the session opened with: its prediction of this image is cached, while a
    # newer version (promoted since) would cost a whole-volume prediction inside the round.
    version = session.model_version if session.prediction_source == "model" else None
    return _predict(ctx, prepared.project, prepared.image, volume, None, atlas_file, version)


def _store_round(
    ctx: AppContext,
    db: Session,
    principal: Principal,
    session: AnnotationSession,
    prepared: _Prepared,
    volume: Volume,
    prediction: Prediction,
    painted: interactions.PaintedInput,
    kind: str,
    record: dict,
    idempotency_key: str | None = None,
) -> Round:
    project, image = prepared.project, prepared.image
    seeds = interactions.merge(prepared.previous_seeds, painted.seeds)
    planes = prepared.previous_planes | painted.planes
    started = time.perf_counter()
    with ctx.compute():
        result = pipeline.compute_round(
            volume.array, volume.spacing_zyx, seeds, planes, prediction.probabilities, len(project.labels),
            validation_dice=prediction.validation_dice, previous_segmentation=prepared.previous_segmentation,
        )
    seconds = time.perf_counter() - started
    ctx.metrics.round_seconds.labels(project=str(project.id)).observe(seconds)

    store = ctx.datastore
    folder = store.new_record_dir(store.resolve(image.path).parent, "rounds")
    try:
        store.write_json(folder / "input.json", record)
        store.write_volume(folder / ROUND_FILES["input"], volume, painted.seeds)
        store.write_volume(folder / ROUND_FILES["scribble"], volume, seeds)
        store.write_volume(folder / ROUND_FILES["proxy"], volume, result.proxy_labels)
        _write_npz(folder / ROUND_FILES["proxy_probabilities"], result.proxy_probabilities)
        store.write_volume(folder / ROUND_FILES["confidence"], volume, result.confidence)
        store.write_volume(folder / ROUND_FILES["segmentation"], volume, result.segmentation)
        store.write_volume(folder / ROUND_FILES["residual"], volume, result.residual)

        session = _locked(db, AnnotationSession, session.id)
        require_holder(db, ctx.settings.lease_seconds, principal, session)  # still ours?
        latest = active_round(db, image.id)
        if (latest.id if latest else None) != (prepared.previous.id if prepared.previous else None):
            raise Conflict(f"image {image.id} changed while this round was computed; submit it again")
        number = 1 + len(list_rounds(db, image.id))
        effort = schemas.Effort(voxels=painted.voxels, strokes=painted.strokes, clicks=painted.clicks,
                                slices_touched=len(painted.planes))
        row = Round(
            session_id=session.id,
            image_id=image.id,
            number=number,
            kind=kind,
            previous_round_id=prepared.previous.id if prepared.previous else None,
            created_by=principal.owner,
            model_version=prediction.version,
            prediction_source=prediction.source,
            dir=store.relative(folder),
            label_counts=pipeline.label_counts(result.segmentation, projects.label_names(project)),
            suggestion=_suggestion_json(result.suggestion, volume),
            effort=effort.model_dump(),
            planes=[list(p) for p in sorted(planes)],
            compute_seconds=seconds,
            model_weight=result.model_weight,
            idempotency_key=idempotency_key,
        )
        db.add(row)
        db.flush()
        audit.record(db, principal, "round", project_id=project.id, image_id=image.id,
                     details={"round_id": row.id, "session_id": session.id, "kind": kind, **effort.model_dump()})
        db.commit()
    except BaseException:
        db.rollback()
        store.remove_tree(folder)
        raise
    ctx.metrics.rounds.labels(kind=kind).inc()
    if project.learning.get("train_on_rounds", True):
        ctx.training.submit(
            db, principal, project, image, trigger="round", round_id=row.id,
            reference_version=session.model_version,
            files={
                "proxy_labels": folder / ROUND_FILES["proxy"],
                "proxy_probabilities": folder / ROUND_FILES["proxy_probabilities"],
                "confidence": folder / ROUND_FILES["confidence"],
                "scribble": folder / ROUND_FILES["scribble"],
            },
        )
    return row


# --- undo and accept ------------------------------------------------------------------------


def undo(ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession) -> Round:
    """Mark the image's latest active round undone (its files stay); returns that round."""
    db.commit()  # never wait for the image lock while holding a transaction
    with ctx.image_locks(session.image_id):
        session = _locked(db, AnnotationSession, session.id)
        require_holder(db, ctx.settings.lease_seconds, principal, session)
        latest = active_round(db, session.image_id)
        if latest is None:
            db.rollback()
            raise Conflict(f"nothing to undo: image {session.image_id} has no active round")
        latest.undone_at = utcnow()
        latest.undone_by = principal.owner
        image = images.get_image(db, session.image_id)
        audit.record(db, principal, "undo", project_id=image.project_id, image_id=image.id,
                     details={"round_id": latest.id, "session_id": session.id})
        db.commit()
        return latest


def accept(
    ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession,
    final_label: np.ndarray | None = None,
) -> tuple[AnnotationSession, Image, TrainingJob | None]:
    """The current segmentation (or ``final_label``, (z, y, x) label values the caller has checked,
    as a viewer saves it) becomes the image's label; the session closes."""
    from learner.metrics import dice_per_class

    db.commit()  # never wait for the image lock while holding a transaction
    with ctx.image_locks(session.image_id):
        session = _locked(db, AnnotationSession, session.id)
        require_holder(db, ctx.settings.lease_seconds, principal, session)
        image = images.get_image(db, session.image_id)
        project = projects.get_project(db, image.project_id)
        current = active_round(db, image.id)
        source = f"{current.dir}/{ROUND_FILES['segmentation']}" if current else f"{session.dir}/{SESSION_FILES['prediction']}"
        active_rounds = [(row.id, row.dir) for row in list_rounds(db, image.id) if row.undone_at is None]
        db.commit()

        store = ctx.datastore
        volume = images.load_volume(store, image)
        label = store.read_volume(source).array.astype(np.uint8) if final_label is None else final_label
        folder = store.new_record_dir(store.resolve(image.path).parent, "accepted")
        try:
            label_path = store.write_volume(folder / "label.nii.gz", volume, label)
            store.write_json(folder / "accepted.json", {"round_id": current.id if current else None,
                                                        "session_id": session.id})
            # Each round's Dice against the label, scored before the write transaction below
            # (on SQLite it holds the database's write lock; the image lock keeps the rounds as they are).
            names = projects.label_names(project)
            round_dice = {}
            for round_id, round_dir in active_rounds:
                seg = store.read_volume(f"{round_dir}/{ROUND_FILES['segmentation']}").array
                scores = dice_per_class(seg, label, len(names))
                round_dice[round_id] = {names[c]: float(v) for c, v in scores.items()}
            session = _locked(db, AnnotationSession, session.id)
            require_holder(db, ctx.settings.lease_seconds, principal, session)
            latest = active_round(db, image.id)
            if (latest.id if latest else None) != (current.id if current else None):
                raise Conflict(f"image {image.id} changed while accepting; accept again")
            image = db.get(Image, image.id)
            now = utcnow()
            image.status = "accepted"
            image.accepted_path = store.relative(label_path)
            image.accepted_round_id = current.id if current else None
            image.accepted_at = now
            image.accepted_by = principal.owner
            session.state = "accepted"
            session.closed_at = now
            for row in list_rounds(db, image.id):
                if row.id in round_dice:
                    row.dice = round_dice[row.id]
            audit.record(db, principal, "accept", project_id=project.id, image_id=image.id,
                         details={"session_id": session.id, "round_id": image.accepted_round_id,
                                  "label_counts": pipeline.label_counts(label, names)})
            db.commit()
        except BaseException:
            db.rollback()
            store.remove_tree(folder)
            raise
        files = {"accepted_label": label_path}
        if current is not None:  # the user's own strokes stay hard labels for the scribble loss
            files["scribble"] = store.resolve(f"{current.dir}/{ROUND_FILES['scribble']}")
        job = ctx.training.submit(
            db, principal, project, image, trigger="accept", round_id=image.accepted_round_id,
            reference_version=session.model_version, files=files,
        )
        return session, image, job


def close(ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession) -> AnnotationSession:
    """Release the lease without accepting."""
    session = _locked(db, AnnotationSession, session.id)
    require_holder(db, ctx.settings.lease_seconds, principal, session)
    session.state = "closed"
    session.closed_at = utcnow()
    db.commit()
    return session


# --- responses ------------------------------------------------------------------------------


def _suggestion_json(suggestion, geometry: Volume) -> dict | None:
    out = pipeline.suggestion_out(suggestion, geometry)
    return None if out is None else out.model_dump()


def _write_npz(path: Path, probabilities: np.ndarray) -> None:
    """float16 ``probabilities`` in an .npz, deflate level 1: written on every round, about
    1.5x faster than ``np.savez_compressed``'s level for ~10 % more bytes."""
    with open_atomic(path, overwrite=False) as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            with archive.open("probabilities.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, probabilities.astype(np.float16), allow_pickle=False)


def round_links(row: Round) -> dict[str, str]:
    base = f"{API}/rounds/{row.id}"
    links = {"self": base}
    for name in ("segmentation", "residual", "scribble", "input", "proxy", "confidence"):
        links[name] = f"{base}/{name}"
    return links


def round_out(db: Session, row: Round) -> schemas.RoundOut:
    job = job_of_round(db, row.id)
    return schemas.RoundOut(
        id=row.id,
        session_id=row.session_id,
        image_id=row.image_id,
        number=row.number,
        kind=row.kind,
        previous_round_id=row.previous_round_id,
        created_at=row.created_at,
        created_by=row.created_by,
        undone=row.undone_at is not None,
        model_version=row.model_version,
        prediction_source=row.prediction_source,
        label_counts=row.label_counts,
        suggestion=row.suggestion,
        effort=schemas.Effort(**row.effort),
        compute_seconds=row.compute_seconds,
        model_weight=row.model_weight,
        job_id=job.id if job else None,
        links=round_links(row),
    )


def session_out(db: Session, session: AnnotationSession) -> schemas.SessionOut:
    image = images.get_image(db, session.image_id)
    current = active_round(db, session.image_id)
    base = f"{API}/sessions/{session.id}"
    links = {
        "self": base,
        "rounds": f"{base}/rounds",
        "labelmap": f"{base}/rounds/labelmap",
        "undo": f"{base}/undo",
        "accept": f"{base}/accept",
        "prediction": f"{base}/prediction",
        "uncertainty": f"{base}/uncertainty",
        "segmentation": (f"{API}/rounds/{current.id}/segmentation" if current else f"{base}/prediction"),
        "residual": (f"{API}/rounds/{current.id}/residual" if current else f"{base}/uncertainty"),
        "image": f"{API}/images/{image.id}/volume",
    }
    return schemas.SessionOut(
        id=session.id,
        image_id=session.image_id,
        project_id=image.project_id,
        holder=session.holder,
        state=session.state,
        opened_at=session.opened_at,
        lease_expires_at=session.lease_expires_at,
        model_version=session.model_version,
        prediction_source=session.prediction_source,
        label_counts=session.label_counts,
        suggestion=session.suggestion,
        current_round=round_out(db, current) if current else None,
        links=links,
    )


def round_file(ctx: AppContext, row: Round, name: str) -> Path:
    if name not in ROUND_FILES or name == "proxy_probabilities":
        raise NotFound(f"rounds have no file {name!r}")
    return ctx.datastore.resolve(f"{row.dir}/{ROUND_FILES[name]}")


def session_file(ctx: AppContext, session: AnnotationSession, name: str) -> Path:
    if name not in ("prediction", "uncertainty"):
        raise NotFound(f"sessions have no file {name!r}")
    return ctx.datastore.resolve(f"{session.dir}/{SESSION_FILES[name]}")


def round_input(ctx: AppContext, row: Round) -> dict:
    return json.loads((ctx.datastore.resolve(row.dir) / "input.json").read_text())
