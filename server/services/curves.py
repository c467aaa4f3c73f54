"""Learning-curve data of a project: model versions, per-image effort and Dice, jobs."""

from __future__ import annotations

from sqlalchemy.orm import Session

from server import schemas
from server.context import AppContext
from server.services import history, images, training
from server.services.models import version_out
from server.services.training import CONSOLIDATION_TRIGGER
from server.storage.tables import Project


def learning_curve(ctx: AppContext, db: Session, project: Project) -> schemas.LearningCurve:
    versions = [version_out(r) for r in ctx.hub.versions(project.id)]
    image_curves = []
    for image in images.list_images(db, project.id):
        active = [r for r in history.list_rounds(db, image.id) if r.undone_at is None]
        effort = schemas.Effort()
        for row in active:
            for key, value in row.effort.items():
                setattr(effort, key, getattr(effort, key) + int(value))
        image_curves.append(
            schemas.ImageCurve(
                image_id=image.id,
                name=image.name,
                stream_position=image.stream_position,
                status=image.status,
                rounds=len(active),
                effort=effort,
                dice_per_round=[r.dice for r in active],
                accepted_at=image.accepted_at,
            )
        )
    jobs = training.list_jobs(db, project.id)
    latency = [seconds for job in jobs if (seconds := annotation_to_model_seconds(job)) is not None]
    return schemas.LearningCurve(
        versions=versions,
        images=image_curves,
        jobs=[schemas.JobOut.model_validate(j) for j in jobs],
        annotation_to_model_seconds=latency,
        queue_depth=ctx.training.queue_depth(),
    )


def annotation_to_model_seconds(job) -> float | None:
    """From a job's round (or accept), when it was queued, to its new model version; None
    unless the job succeeded, and for consolidation jobs (no annotation behind them).
    ``job``: a ``TrainingJob`` row or a ``schemas.JobOut``."""
    if job.state != "succeeded" or job.finished_at is None or job.trigger == CONSOLIDATION_TRIGGER:
        return None
    return (job.finished_at - job.created_at).total_seconds()
