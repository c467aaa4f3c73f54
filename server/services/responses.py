"""Sessions and rounds as the API shows them: response models, links, label counts, and a
registration ``Suggestion`` with its centroid in (i, j, k) and LPS millimetres too."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from registration.io.volume import Volume
from registration.residual import Suggestion
from server import schemas
from server.services import history, images
from server.storage.tables import AnnotationSession, Round, TrainingJob

API = schemas.API_PREFIX


def label_counts(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(names))
    return {name: int(counts[value]) for value, name in enumerate(names)}


def suggestion_out(suggestion: Suggestion | None, geometry: Volume) -> schemas.Suggestion | None:
    """A registration Suggestion with its centroid also as (i, j, k) and LPS millimetres."""
    if suggestion is None:
        return None
    z, y, x = (float(c) for c in suggestion.centroid_zyx)
    lps = _index_to_physical(geometry, (x, y, z))
    return schemas.Suggestion(
        axis=int(suggestion.axis),
        slice=int(suggestion.slice),
        bbox_zyx=[int(v) for v in suggestion.bbox_zyx],
        centroid_zyx=[z, y, x],
        centroid_ijk=[x, y, z],
        centroid_lps=list(lps),
        score=float(suggestion.score),
    )


def suggestion_json(suggestion: Suggestion | None, geometry: Volume) -> dict | None:
    """``suggestion_out`` as stored in a session's or round's row."""
    out = suggestion_out(suggestion, geometry)
    return None if out is None else out.model_dump()


def _index_to_physical(geometry: Volume, ijk: tuple[float, float, float]) -> tuple[float, float, float]:
    spacing = np.asarray(geometry.spacing_xyz, dtype=np.float64)
    origin = np.asarray(geometry.origin_xyz, dtype=np.float64)
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    point = origin + direction @ (spacing * np.asarray(ijk, dtype=np.float64))
    return tuple(float(v) for v in point)


def job_of_round(db: Session, round_id: int) -> TrainingJob | None:
    return db.scalar(select(TrainingJob).where(TrainingJob.round_id == round_id).order_by(TrainingJob.id.desc()))


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


def session_links(session: AnnotationSession, current: Round | None) -> dict[str, str]:
    base = f"{API}/sessions/{session.id}"
    return {
        "self": base,
        "rounds": f"{base}/rounds",
        "labelmap": f"{base}/rounds/labelmap",
        "undo": f"{base}/undo",
        "accept": f"{base}/accept",
        "prediction": f"{base}/prediction",
        "uncertainty": f"{base}/uncertainty",
        **({"alternative": f"{base}/alternative"} if (session.opening_scores or {}).get("alternative") else {}),
        "segmentation": (f"{API}/rounds/{current.id}/segmentation" if current else f"{base}/prediction"),
        "residual": (f"{API}/rounds/{current.id}/residual" if current else f"{base}/uncertainty"),
        "image": f"{API}/images/{session.image_id}/volume",
    }


def session_out(db: Session, session: AnnotationSession) -> schemas.SessionOut:
    image = images.get_image(db, session.image_id)
    current = history.active_round(db, session.image_id)
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
        opening_scores={k: v for k, v in (session.opening_scores or {}).items() if k in schemas.OPENING_SCORE_KEYS} or None,
        opening_dice=session.opening_dice,
        label_counts=session.label_counts,
        suggestion=session.suggestion,
        current_round=round_out(db, current) if current else None,
        links=session_links(session, current),
    )
