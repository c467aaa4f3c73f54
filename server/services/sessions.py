"""Annotation sessions on an image: open (with a lease, see ``leases``), accept, close.

Opening predicts the image (the serving model or an atlas proxy: ``predictions``), stores the
prediction, its uncertainty and where to start in a fresh session folder, and closes the
image's other open sessions (taken over or expired). Accepting makes the current segmentation
the image's label, scores every active round and the session's openings against it, and
queues a training job. Rounds and undo are in ``rounds``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from learner.metrics import dice_per_class
from registration.io.volume import Volume
from registration.round import opening_suggestion, uncertainty_map
from server.auth import Principal
from server.context import AppContext
from server.errors import Conflict, NotFound
from server.services import audit, history, images, leases, projects
from server.services.predictions import (
    Opening,
    Prediction,
    latest_accepted,
    open_prediction,
    opening_history,
    opening_labels,
)
from server.services.records import (
    ACCEPTED_JSON,
    ACCEPTED_LABEL,
    ROUND_FILES,
    SESSION_FILES,
    staged_record,
    write_probabilities,
)
from server.services.responses import label_counts, suggestion_json
from server.storage.datastore import DataStore
from server.storage.db import utcnow
from server.storage.tables import AnnotationSession, Image, Project, Round, TrainingJob


def get_session(db: Session, session_id: int) -> AnnotationSession:
    session = db.get(AnnotationSession, session_id)
    if session is None:
        raise NotFound(f"session {session_id} not found")
    return session


def open_session(
    ctx: AppContext, db: Session, principal: Principal, image: Image, takeover: bool
) -> AnnotationSession:
    own = leases.check_lease(db, image.id, principal, takeover)
    if own is not None:
        leases.renew(own, ctx.settings.lease_seconds)
        db.commit()
        return own
    project = projects.get_project(db, image.project_id)
    atlas = latest_accepted(db, project.id, image.id)
    scores_so_far = opening_history(db, project)
    # An opening is scored on the label it led to: not on an image accepted before (the model
    # has learnt it) nor one whose rounds go on from an earlier session.
    score = image.accepted_path is None and history.active_round(db, image.id) is None
    db.commit()  # no transaction stays open during the computation

    volume = images.load_volume(ctx.datastore, image)
    with staged_record(ctx.datastore, db, image, "sessions") as folder:
        opening = open_prediction(ctx, project, image, volume, atlas, scores_so_far, score)
        prediction = opening.served
        labels = _write_opening(ctx.datastore, folder, volume, opening)
        opened = AnnotationSession(
            holder=principal.owner,
            token_id=principal.token_id,
            state="open",
            # also when the atlas serves: the version frozen for this image's training targets
            model_version=opening.model_version,
            prediction_source=prediction.source,
            dir=ctx.datastore.relative(folder),
            label_counts=label_counts(labels, projects.label_names(project)),
            suggestion=suggestion_json(
                opening_suggestion(prediction.probabilities, prediction.validation_dice, volume.spacing_zyx),
                volume,
            ),
            opening_scores=opening.record(),
        )
        # The image lock orders this with rounds (session row, then image row) on PostgreSQL.
        with ctx.image_locks(image.id):
            _insert_session(ctx, db, principal, project, image.id, opened, prediction, takeover)
    return opened


def _write_opening(store: DataStore, folder: Path, volume: Volume, opening: Opening) -> np.ndarray:
    """Writes the served opening's labels (returned) and uncertainty; the atlas's probabilities
    when it serves (the rounds fuse with them); the other opening's labels when computed."""
    served = opening.served
    labels = opening_labels(served.probabilities)
    store.write_volume(folder / SESSION_FILES["prediction"], volume, labels)
    store.write_volume(folder / SESSION_FILES["uncertainty"], volume, uncertainty_map(served.probabilities))
    if served.source == "atlas":
        write_probabilities(folder / SESSION_FILES["atlas_probabilities"], served.probabilities)
    if opening.alternative_labels is not None:
        store.write_volume(folder / SESSION_FILES["alternative"], volume, opening.alternative_labels)
    return labels


def _insert_session(
    ctx: AppContext, db: Session, principal: Principal, project: Project, image_id: int,
    session: AnnotationSession, prediction: Prediction, takeover: bool,
) -> None:
    """Add the new session row, closing the image's other open sessions; commits."""
    # The lease is checked again: someone may have opened the image meanwhile.
    image = leases.locked(db, Image, image_id)
    leases.check_lease(db, image.id, principal, takeover)
    closed = leases.close_others(db, image.id, keep=None)
    now = utcnow()
    session.image_id = image.id
    session.opened_at = now
    leases.renew(session, ctx.settings.lease_seconds)
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


def accept(
    ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession,
    final_label: np.ndarray | None = None,
) -> tuple[AnnotationSession, Image, TrainingJob | None]:
    """The current segmentation (or ``final_label``, (z, y, x) label values the caller has checked,
    as a viewer saves it) becomes the image's label; the session closes."""
    with leases.image_held(ctx, db, principal, session) as session:
        image = images.get_image(db, session.image_id)
        project = projects.get_project(db, image.project_id)
        current = history.active_round(db, image.id)
        source = (f"{current.dir}/{ROUND_FILES['segmentation']}" if current
                  else f"{session.dir}/{SESSION_FILES['prediction']}")
        active_rounds = [(row.id, row.dir) for row in history.list_rounds(db, image.id) if row.undone_at is None]
        db.commit()

        store = ctx.datastore
        volume = images.load_volume(store, image)
        label = store.read_volume(source).array.astype(np.uint8) if final_label is None else final_label
        with staged_record(store, db, image, "accepted") as folder:
            label_path = store.write_volume(folder / ACCEPTED_LABEL, volume, label)
            store.write_json(folder / ACCEPTED_JSON, {"round_id": history.round_id(current),
                                                      "session_id": session.id})
            # Scored before the write transaction below (on SQLite it holds the database's
            # write lock; the image lock keeps the rounds as they are).
            round_dice = _round_dice(store, active_rounds, label, projects.label_names(project))
            opening_dice, opening_scores = _scored_openings(store, session, label, len(project.labels))
            session = leases.held(ctx, db, principal, session)
            if history.round_id(history.active_round(db, image.id)) != history.round_id(current):
                raise Conflict(f"image {image.id} changed while accepting; accept again")
            image = _mark_accepted(db, principal, session, project, image.id, current, label,
                                   store.relative(label_path), round_dice, opening_dice, opening_scores)
        files = {"accepted_label": label_path}
        if current is not None:  # the user's own strokes stay hard labels for the scribble loss
            files["scribble"] = store.resolve(f"{current.dir}/{ROUND_FILES['scribble']}")
        job = ctx.training.submit(
            db, principal, project, image, trigger="accept", round_id=image.accepted_round_id,
            reference_version=session.model_version, files=files,
        )
        return session, image, job


def _round_dice(
    store: DataStore, rounds: list[tuple[int, str]], label: np.ndarray, names: list[str]
) -> dict[int, dict[str, float]]:
    """Each round's (id, folder) segmentation scored against ``label``: Dice per label name."""
    round_dice = {}
    for round_id, round_dir in rounds:
        seg = store.read_volume(f"{round_dir}/{ROUND_FILES['segmentation']}").array
        scores = dice_per_class(seg, label, len(names))
        round_dice[round_id] = {names[c]: float(v) for c, v in scores.items()}
    return round_dice


def _scored_openings(
    store: DataStore, session: AnnotationSession, label: np.ndarray, num_classes: int
) -> tuple[float, dict | None]:
    """Mean foreground Dice against the accepted ``label`` of the opening shown, and the
    session's ``opening_scores`` with the Dice of each opening it keeps to be scored
    (``<source>_dice``; None when it keeps none)."""
    kept = dict(session.opening_scores or {})
    paths = {session.prediction_source: f"{session.dir}/{SESSION_FILES['prediction']}"}
    if kept.get("alternative"):
        paths[kept["alternative"]] = f"{session.dir}/{SESSION_FILES['alternative']}"
    dice = {}
    for source, path in paths.items():
        per_class = dice_per_class(store.read_volume(path).array.astype(np.int64), label, num_classes)
        dice[source] = float(np.mean(list(per_class.values())))
    shown = dice[session.prediction_source]
    if session.opening_scores is None:
        return shown, None
    return shown, {**kept, **{f"{source}_dice": dice[source] for source in kept.get("scored", [])}}


def _mark_accepted(
    db: Session, principal: Principal, session: AnnotationSession, project: Project, image_id: int,
    current: Round | None, label: np.ndarray, label_path: str, round_dice: dict[int, dict[str, float]],
    opening_dice: float, opening_scores: dict | None,
) -> Image:
    """The image's accepted label and the session's end, the rounds' and the openings' Dice
    against the label (``round_dice``, ``opening_dice``, ``opening_scores``), and the audit event;
    commits."""
    image = db.get(Image, image_id)
    now = utcnow()
    image.status = "accepted"
    image.accepted_path = label_path
    image.accepted_round_id = history.round_id(current)
    image.accepted_at = now
    image.accepted_by = principal.owner
    session.state = "accepted"
    session.closed_at = now
    session.opening_dice = opening_dice
    if opening_scores is not None:  # the next images' choices read them
        session.opening_scores = opening_scores
    names = projects.label_names(project)
    for row in history.list_rounds(db, image.id):
        if row.id in round_dice:
            row.dice = round_dice[row.id]
    audit.record(db, principal, "accept", project_id=project.id, image_id=image.id,
                 details={"session_id": session.id, "round_id": image.accepted_round_id,
                          "label_counts": label_counts(label, names)})
    db.commit()
    return image


def close(ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession) -> AnnotationSession:
    """Release the lease without accepting."""
    session = leases.held(ctx, db, principal, session)
    session.state = "closed"
    session.closed_at = utcnow()
    db.commit()
    return session


def session_file(ctx: AppContext, session: AnnotationSession, name: str) -> Path:
    """prediction, uncertainty, or alternative (the opening not shown, when both were computed)."""
    if name not in ("prediction", "uncertainty", "alternative"):
        raise NotFound(f"sessions have no file {name!r}")
    path = ctx.datastore.resolve(f"{session.dir}/{SESSION_FILES[name]}")
    if name == "alternative" and not path.exists():
        raise NotFound(f"session {session.id} computed one opening only; it has no alternative")
    return path


