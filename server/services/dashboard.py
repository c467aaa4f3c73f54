"""What the admin dashboard (``/admin``) shows of a project, and the per-project gauges of ``/metrics``.

The dashboard's response is the project's learning curve (``curves.learning_curve``: model
versions, per-image rounds/effort/Dice, jobs, queue depth) joined with what a page needs
to draw it in one request: each job's loss, run time and annotation-to-model latency, each
image's validation flag, label download and how good its opening was, and the round latency
percentiles over the last hour.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server import schemas
from server.context import AppContext
from server.metrics import ProjectState
from server.services import curves, images, projects
from server.storage.db import utcnow
from server.storage.tables import AnnotationSession, Image, Project, Round

ROUND_LATENCY_WINDOW = timedelta(hours=1)


def project_dashboard(
    ctx: AppContext, db: Session, project: Project, now: datetime | None = None
) -> schemas.Dashboard:
    now = now or utcnow()
    curve = curves.learning_curve(ctx, db, project)
    loss_by_version: dict[int, float | None] = {}
    for v in sorted(curve.versions, key=lambda v: v.version):  # an average shows its fine-tuned member's loss
        loss_by_version[v.version] = loss_by_version.get(v.parent) if v.source == "average" else v.metrics.get("loss")
    jobs = [
        schemas.DashboardJob(
            **job.model_dump(),
            loss=loss_by_version.get(job.result_version),
            run_seconds=_seconds_between(job.started_at, job.finished_at),
            annotation_to_model_seconds=curves.annotation_to_model_seconds(job),
        )
        for job in curve.jobs
    ]
    rows = {image.id: image for image in images.list_images(db, project.id)}
    openings = _accepted_openings(db, project.id)
    image_rows = []
    for entry in curve.images:
        row = rows.get(entry.image_id)
        if row is None:  # deleted between the two reads
            continue
        image_rows.append(
            schemas.DashboardImage(
                **entry.model_dump(),
                is_validation=row.is_validation,
                dice_mean_per_round=[_mean_dice(d) for d in entry.dice_per_round],
                label_url=images.image_out(row).links.get("label"),
                **openings.get(entry.image_id, {}),
            )
        )
    serving = next((v for v in curve.versions if v.serving), None)
    return schemas.Dashboard(
        project_id=project.id,
        project_name=project.name,
        generated_at=now,
        serving_version=serving.version if serving else None,
        serving_dice=_serving_dice(serving),
        images_total=len(image_rows),
        images_accepted=sum(1 for i in image_rows if i.status == "accepted"),
        queue_depth=curve.queue_depth,
        job_states=dict(Counter(job.state for job in jobs)),
        round_latency=round_latency(db, project.id, now - ROUND_LATENCY_WINDOW, now),
        versions=curve.versions,
        jobs=jobs,
        images=image_rows,
    )


def _accepted_openings(db: Session, project_id: int) -> dict[int, dict]:
    """Per image: the source and Dice of its first accepted session's opening (what the stream
    had to offer before anyone drew on it), and of the other opening when both were computed."""
    accepted = db.execute(
        select(AnnotationSession.image_id, AnnotationSession.prediction_source, AnnotationSession.opening_dice,
               AnnotationSession.opening_scores)
        .join(Image, Image.id == AnnotationSession.image_id)
        .where(Image.project_id == project_id, AnnotationSession.state == "accepted")
        .order_by(AnnotationSession.closed_at)
    ).all()
    openings = {}
    for image_id, source, dice, scores in accepted:
        alternative = (scores or {}).get("alternative")
        openings.setdefault(image_id, {"opening_source": source, "opening_dice": dice,
                                       "alternative_dice": (scores or {}).get(f"{alternative}_dice")})
    return openings


def round_latency(db: Session, project_id: int, since: datetime, now: datetime) -> schemas.RoundLatency:
    """p50/p95 of the compute time of the project's rounds stored since ``since`` (undone ones too)."""
    seconds = list(
        db.scalars(
            select(Round.compute_seconds)
            .join(Image, Image.id == Round.image_id)
            .where(Image.project_id == project_id, Round.created_at >= since)
        )
    )
    p50 = p95 = None
    if seconds:
        p50, p95 = (float(q) for q in np.percentile(seconds, [50, 95]))
    return schemas.RoundLatency(
        window_seconds=int((now - since).total_seconds()), rounds=len(seconds), p50_seconds=p50, p95_seconds=p95
    )


def project_states(ctx: AppContext, db: Session) -> list[ProjectState]:
    """Serving version, its validation Dice and the accepted image count of every project."""
    accepted = dict(
        db.execute(
            select(Image.project_id, func.count(Image.id)).where(Image.status == "accepted").group_by(Image.project_id)
        ).all()
    )
    states = []
    for project in projects.list_projects(db):
        record = ctx.hub.registry(project.id).serving_record()
        states.append(
            ProjectState(
                project_id=project.id,
                name=project.name,
                serving_version=record.version if record else None,
                serving_dice=_float_or_none(record.metrics.get("val_dice")) if record else None,
                images_accepted=int(accepted.get(project.id, 0)),
            )
        )
    return states


def _serving_dice(version: schemas.ModelVersionOut | None) -> float | None:
    return None if version is None else _float_or_none(version.metrics.get("val_dice"))


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def _mean_dice(per_label: dict[str, float] | None) -> float | None:
    if not per_label:
        return None
    return float(np.mean(list(per_label.values())))


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start).total_seconds()
