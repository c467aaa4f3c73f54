"""The project's stream of images: which one to annotate next."""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from registration.round import uncertainty_map
from server.auth import Principal
from server.context import AppContext
from server.services import images, projects
from server.storage.db import utcnow
from server.storage.tables import AnnotationSession, Image, Project


def _candidates(db: Session, principal: Principal, project: Project) -> list[Image]:
    """Images not accepted yet and not leased by someone else, in stream order."""
    now = utcnow()
    leased_by_others = set(
        db.scalars(
            select(AnnotationSession.image_id)
            .join(Image, Image.id == AnnotationSession.image_id)
            .where(
                Image.project_id == project.id,
                AnnotationSession.state == "open",
                AnnotationSession.lease_expires_at > now,
                AnnotationSession.holder != principal.owner,
            )
        )
    )
    pending = db.scalars(
        select(Image)
        .where(Image.project_id == project.id, Image.status != "accepted")
        .order_by(Image.stream_position)
    )
    return [image for image in pending if image.id not in leased_by_others]


def next_image(ctx: AppContext, db: Session, principal: Principal, project: Project, order: str) -> Image | None:
    candidates = _candidates(db, principal, project)
    if not candidates or order == "stream":
        return candidates[0] if candidates else None
    # By uncertainty: the mean normalised entropy of the serving model's prediction,
    # cached per image and model version; a bounded number of images scored per request.
    version = ctx.hub.serving_version(project.id)
    unscored = [c for c in candidates if c.uncertainty_version != version]
    unscored = unscored[: ctx.settings.stream_uncertainty_max_images]
    db.commit()  # no transaction stays open while predicting
    scores: dict[int, float] = {}
    for image in unscored:
        volume = images.load_volume(ctx.datastore, image)
        scored_version, probabilities = ctx.hub.predict(
            project.id, image.id, volume.array, projects.model_size(project)
        )
        scores[image.id] = (scored_version, float(np.mean(uncertainty_map(probabilities))))
    for image_id, (scored_version, score) in scores.items():
        row = db.get(Image, image_id)
        if row is not None:
            row.uncertainty_version, row.uncertainty_score = scored_version, score
    db.commit()
    scored = [c for c in candidates if c.uncertainty_version == version and c.uncertainty_score is not None]
    if not scored:
        return candidates[0]
    return max(scored, key=lambda c: (c.uncertainty_score, -c.stream_position))
