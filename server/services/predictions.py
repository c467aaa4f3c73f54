"""The probabilities an image is opened with, and those a session's rounds fuse with.

Before a project's first trained model (version 0 holds random weights), a session opens with
the labels of the project's latest accepted image carried onto the new one by registration
(an atlas proxy). Once a model is trained, both are computed while the atlas may still win,
and ``registration.opening_choice`` picks one from how each scored on earlier accepted images;
the other one's labels are kept with the session and scored when the image is accepted
(``sessions.accept``). A session's rounds fuse with the source it opened with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from registration.io.volume import Volume
from registration.opening_choice import OpeningScore, atlas_retired, prefer_atlas
from registration.round import AtlasOpening, atlas_opening
from server.context import AppContext
from server.services import projects
from server.services.records import read_probabilities
from server.storage.tables import AnnotationSession, Image, Project

log = logging.getLogger(__name__)

#: Accepted sessions read for the opening choice (newest first); more than it ever weighs.
HISTORY_SESSIONS = 50


@dataclass
class Prediction:
    source: str  # model | atlas
    version: int | None
    probabilities: np.ndarray  # float32 (C, z, y, x)
    validation_dice: float | None = None  # of the model version, when measured


@dataclass
class Opening:
    """What a new session shows (``served``), and, when both sources were computed, the other
    source's labels (uint8 (z, y, x)) and the atlas's registration similarity."""

    served: Prediction
    alternative_labels: np.ndarray | None = None
    similarity: float | None = None

    @property
    def alternative_source(self) -> str | None:
        if self.alternative_labels is None:
            return None
        return "model" if self.served.source == "atlas" else "atlas"


def latest_accepted(db: Session, project_id: int, exclude: int) -> Image | None:
    """The project's most recently accepted image other than ``exclude``: the atlas."""
    return db.scalar(
        select(Image)
        .where(Image.project_id == project_id, Image.accepted_path.is_not(None), Image.id != exclude)
        .order_by(Image.accepted_at.desc())
        .limit(1)
    )


def opening_history(db: Session, project_id: int) -> list[OpeningScore]:
    """The project's accepted images whose two openings were scored, oldest first."""
    rows = db.scalars(
        select(AnnotationSession)
        .join(Image, Image.id == AnnotationSession.image_id)
        .where(Image.project_id == project_id, AnnotationSession.state == "accepted",
               AnnotationSession.opening_scores.is_not(None))
        .order_by(AnnotationSession.closed_at.desc())
        .limit(HISTORY_SESSIONS)
    ).all()
    history = []
    for row in reversed(rows):
        scores = row.opening_scores or {}
        if all(isinstance(scores.get(k), (int, float)) for k in ("similarity", "model_dice", "atlas_dice")):
            history.append(OpeningScore(scores["similarity"], scores["model_dice"], scores["atlas_dice"]))
    return history


def open_prediction(
    ctx: AppContext, project: Project, image: Image, volume: Volume, atlas: Image | None,
    history: list[OpeningScore],
) -> Opening:
    """The opening of a new session on ``image``: see the module's docstring."""
    if not ctx.hub.has_useful_model(project.id):
        carried = _atlas_opening(ctx, project, image, volume, atlas)
        if carried is not None:
            return Opening(Prediction("atlas", None, carried.probabilities))
        return Opening(_model_prediction(ctx, project, image, volume, None))
    model = _model_prediction(ctx, project, image, volume, None)
    if atlas_retired(history):
        return Opening(model)
    carried = _atlas_opening(ctx, project, image, volume, atlas)
    if carried is None:
        return Opening(model)
    if prefer_atlas(history, carried.similarity, model.validation_dice):
        return Opening(Prediction("atlas", None, carried.probabilities), _labels(model.probabilities),
                       carried.similarity)
    return Opening(model, _labels(carried.probabilities), carried.similarity)


def round_prediction(
    ctx: AppContext, project: Project, image: Image, volume: Volume, session: AnnotationSession,
    atlas_file: Path,
) -> Prediction:
    """The probabilities a round of ``session`` fuses with: the atlas it opened with (read from
    ``atlas_file``), else the model version it opened with (its prediction is cached, while a
    version promoted since would cost a whole-volume prediction inside the round)."""
    if session.prediction_source == "atlas" and atlas_file.exists():
        return Prediction("atlas", None, read_probabilities(atlas_file))
    version = session.model_version if session.prediction_source == "model" else None
    return _model_prediction(ctx, project, image, volume, version)


def _labels(probabilities: np.ndarray) -> np.ndarray:
    return probabilities.argmax(axis=0).astype(np.uint8)


def _atlas_opening(
    ctx: AppContext, project: Project, image: Image, volume: Volume, atlas: Image | None
) -> AtlasOpening | None:
    """``atlas``'s accepted labels carried onto ``volume``; None without an atlas or when the
    registration fails."""
    if atlas is None:
        return None
    try:
        atlas_volume = ctx.datastore.read_volume(atlas.path)
        atlas_labels = ctx.datastore.read_volume(atlas.accepted_path).array
        with ctx.compute():
            return atlas_opening(atlas_volume, atlas_labels.astype(np.int64), volume, len(project.labels))
    except (RuntimeError, ValueError) as exc:  # registration failed: the model opens
        log.warning("atlas proposal for image %d failed (%s): using the serving model", image.id, exc)
        return None


def _model_prediction(
    ctx: AppContext, project: Project, image: Image, volume: Volume, version: int | None
) -> Prediction:
    version, probabilities = ctx.hub.predict(
        project.id, image.id, volume.array, projects.model_size(project), version
    )
    return Prediction("model", version, probabilities, ctx.hub.validation_dice(project.id, version))
