"""The probabilities an image is opened with, and those a session's rounds fuse with.

Before a project's first trained model (version 0 holds random weights), a session opens with
the labels of the project's latest accepted image carried onto the new one by registration
(an atlas proxy); afterwards with the serving model's prediction. With the project setting
``atlas_beside_model``, both are computed once a model is trained while the atlas may still
win, and ``registration.opening_choice`` picks one from how each scored on earlier images; the
other one's labels are kept with the session (the "alternative"). The openings computed for an
image that was never accepted are scored when it is (``sessions.accept``). A session's rounds
fuse with the source it opened with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from registration.io.volume import Volume
from registration.labels import class_argmax
from registration.opening_choice import OpeningScore, atlas_retired, prefer_atlas
from registration.round import atlas_opening
from server.context import AppContext
from server.services import projects
from server.services.records import read_probabilities
from server.storage.tables import AnnotationSession, Image, Project

log = logging.getLogger(__name__)

#: The newest accepted sessions read for the opening choice. A window: pairs that fall out of
#: it (after this many later images) no longer count, so a retired atlas is tried again.
HISTORY_SESSIONS = 200


@dataclass
class Prediction:
    source: str  # model | atlas
    version: int | None
    probabilities: np.ndarray  # float32 (C, z, y, x)
    validation_dice: float | None = None  # of the model version, when measured


@dataclass
class Opening:
    """What a new session shows (``served``); when both sources were computed, the other one's
    labels (uint8 (z, y, x)) and the atlas's registration similarity; the model version computed
    (also when the atlas serves); the sources to score at accept."""

    served: Prediction
    alternative_labels: np.ndarray | None = None
    similarity: float | None = None
    model_version: int | None = None
    scored: list[str] = field(default_factory=list)

    @property
    def alternative_source(self) -> str | None:
        if self.alternative_labels is None:
            return None
        return "model" if self.served.source == "atlas" else "atlas"

    def record(self) -> dict | None:
        """What the session row keeps of it (``AnnotationSession.opening_scores``) until accept."""
        if not self.scored:
            return None
        kept: dict = {"scored": list(self.scored)}
        if self.alternative_source is not None:
            kept["alternative"] = self.alternative_source
        if self.similarity is not None:
            kept["similarity"] = float(self.similarity)
        return kept


def latest_accepted(db: Session, project_id: int, exclude: int) -> Image | None:
    """The project's most recently accepted image other than ``exclude``: the atlas."""
    return db.scalar(
        select(Image)
        .where(Image.project_id == project_id, Image.accepted_path.is_not(None), Image.id != exclude)
        .order_by(Image.accepted_at.desc())
        .limit(1)
    )


def atlas_beside_model(project: Project) -> bool:
    """The project's learning setting: the atlas is computed beside a trained model."""
    return bool(project.learning.get("atlas_beside_model", False))


def opening_history(db: Session, project: Project) -> list[OpeningScore]:
    """The project's scored images (their first accept), oldest first; none are read when the
    atlas is not computed beside a trained model (before one, the choice needs no history)."""
    if not atlas_beside_model(project):
        return []
    project_id = project.id
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
        entry = OpeningScore(_number(scores.get("similarity")), _number(scores.get("model_dice")),
                             _number(scores.get("atlas_dice")))
        if entry.model_dice is not None or entry.atlas_dice is not None:
            history.append(entry)
    return history


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def open_prediction(
    ctx: AppContext, project: Project, image: Image, volume: Volume, atlas: Image | None,
    history: list[OpeningScore], score: bool,
) -> Opening:
    """The opening of a new session on ``image`` (see the module's docstring). ``score``: the
    image was never accepted and has no rounds, so its openings are to be scored at accept;
    otherwise a trained model opens it alone."""
    if not ctx.hub.has_useful_model(project.id):
        carried = _carried_atlas(ctx, project, image, volume, atlas)
        if carried is not None:
            return Opening(_atlas_prediction(carried.probabilities), similarity=carried.similarity,
                           scored=["atlas"] if score else [])
        untrained = _model_prediction(ctx, project, image, volume, None)  # empty: nothing to score
        return Opening(untrained, model_version=untrained.version)
    model = _model_prediction(ctx, project, image, volume, None)
    if not score or not atlas_beside_model(project) or atlas_retired(history):
        return Opening(model, model_version=model.version, scored=["model"] if score else [])
    carried = _carried_atlas(ctx, project, image, volume, atlas)
    if carried is None:
        return Opening(model, model_version=model.version, scored=["model"])
    both = ["model", "atlas"]
    if prefer_atlas(history, carried.similarity, model.validation_dice):
        return Opening(_atlas_prediction(carried.probabilities), opening_labels(model.probabilities),
                       carried.similarity, model.version, both)
    return Opening(model, opening_labels(carried.probabilities), carried.similarity, model.version, both)


def round_prediction(
    ctx: AppContext, project: Project, image: Image, volume: Volume, session: AnnotationSession,
    atlas_file: Path,
) -> Prediction:
    """The probabilities a round of ``session`` fuses with: the atlas it opened with (read from
    ``atlas_file``), else the model version it opened with (its prediction is cached, while a
    version promoted since would cost a whole-volume prediction inside the round)."""
    if session.prediction_source == "atlas" and atlas_file.exists():
        return _atlas_prediction(read_probabilities(atlas_file))
    version = session.model_version if session.prediction_source == "model" else None
    return _model_prediction(ctx, project, image, volume, version)


def opening_labels(probabilities: np.ndarray) -> np.ndarray:
    """What an opening shows: the most probable class of each voxel, uint8 (z, y, x)."""
    return class_argmax(probabilities)


def _atlas_prediction(probabilities: np.ndarray) -> Prediction:
    return Prediction("atlas", None, probabilities)


def _carried_atlas(ctx: AppContext, project: Project, image: Image, volume: Volume, atlas: Image | None):
    """``atlas``'s accepted labels carried onto ``volume`` (``registration.atlas.AtlasProxy``);
    None without an atlas or when its files or the registration fail."""
    if atlas is None:
        return None
    try:
        atlas_volume = ctx.datastore.read_volume(atlas.path)
        atlas_labels = ctx.datastore.read_volume(atlas.accepted_path).array
        with ctx.compute():
            return atlas_opening(atlas_volume, atlas_labels.astype(np.int64), volume, len(project.labels))
    except (OSError, RuntimeError, ValueError) as exc:  # the model opens
        log.warning("atlas proposal for image %d failed (%s): using the serving model", image.id, exc)
        return None


def _model_prediction(
    ctx: AppContext, project: Project, image: Image, volume: Volume, version: int | None
) -> Prediction:
    version, probabilities = ctx.hub.predict(
        project.id, image.id, volume.array, projects.model_size(project), version
    )
    return Prediction("model", version, probabilities, ctx.hub.validation_dice(project.id, version))
