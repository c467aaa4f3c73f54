"""The model's probabilities for an image when a session opens or a round is computed.

The serving model predicts once it has been trained; before that (version 0 holds random
weights), the labels of the project's latest accepted image are carried onto the new one
by registration (an atlas proxy), and the session keeps those probabilities for its rounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from registration.io.volume import Volume
from registration.round import atlas_probabilities
from server.context import AppContext
from server.services import projects
from server.services.records import read_probabilities
from server.storage.tables import Image, Project

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    source: str  # model | atlas
    version: int | None
    probabilities: np.ndarray  # float32 (C, z, y, x)
    validation_dice: float | None = None  # of the model version, when measured


def latest_accepted(db: Session, project_id: int, exclude: int) -> Image | None:
    """The project's most recently accepted image other than ``exclude``: the atlas."""
    return db.scalar(
        select(Image)
        .where(Image.project_id == project_id, Image.accepted_path.is_not(None), Image.id != exclude)
        .order_by(Image.accepted_at.desc())
        .limit(1)
    )


def predict(
    ctx: AppContext, project: Project, image: Image, volume: Volume, atlas: Image | None,
    atlas_file: Path | None, version: int | None = None,
) -> Prediction:
    """The model's probabilities (``version``, default the serving one); before any trained
    model, an atlas proxy when possible (read from ``atlas_file`` when the session stored one,
    else computed from ``atlas``)."""
    if ctx.hub.has_useful_model(project.id):
        return _model_prediction(ctx, project, image, volume, version)
    if atlas_file is not None and atlas_file.exists():
        return Prediction("atlas", None, read_probabilities(atlas_file))
    if atlas is not None:
        try:
            atlas_volume = ctx.datastore.read_volume(atlas.path)
            atlas_labels = ctx.datastore.read_volume(atlas.accepted_path).array
            with ctx.compute():
                probabilities = atlas_probabilities(
                    atlas_volume, atlas_labels.astype(np.int64), volume, len(project.labels)
                )
            return Prediction("atlas", None, probabilities)
        except (RuntimeError, ValueError) as exc:  # registration failed: fall back to the model
            log.warning("atlas proposal for image %d failed (%s): using the serving model", image.id, exc)
    return _model_prediction(ctx, project, image, volume, version)


def _model_prediction(
    ctx: AppContext, project: Project, image: Image, volume: Volume, version: int | None
) -> Prediction:
    version, probabilities = ctx.hub.predict(
        project.id, image.id, volume.array, projects.model_size(project), version
    )
    return Prediction("model", version, probabilities, ctx.hub.validation_dice(project.id, version))
