"""Rounds of an annotation session: add one (interactions or a label map), undo the latest.

A round merges the user's new seeds with all earlier ones, runs the round's computation
(``registration.round.compute_round``: dense 2D → 3D proxy → fusion with the model →
residual and the next suggestion), stores its input and outputs in a fresh folder (never
overwritten) and commits its row only after the files are in place; then a training job
is queued. The round runs in the calling worker thread and holds one compute slot from its
first read until its job is queued; its heavy work runs with no database transaction open.
Each phase's time goes to ``scribbleflow_round_phase_seconds``, and the parts of its
computation to ``scribbleflow_round_compute_phase_seconds``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from registration.io.volume import Volume
from registration.round import ROUND_PHASES, RoundComputation, compute_round
from server import schemas
from server.auth import Principal
from server.context import AppContext
from server.errors import Conflict, NotFound
from server.metrics import LapClock
from server.services import audit, history, images, interactions, leases, projects
from server.services.idempotency import keyed_round
from server.services.predictions import Prediction, round_prediction
from server.services.records import (
    ROUND_FILES,
    ROUND_INPUT_JSON,
    SESSION_FILES,
    staged_record,
    write_probabilities,
)
from server.services.responses import label_counts, suggestion_json
from server.services.uploads import read_upload
from server.storage.db import utcnow
from server.storage.tables import AnnotationSession, Image, Project, Round


@dataclass
class RoundSubmission:
    """One round, from the request to its stored row: where it starts and what the user gave."""

    session: AnnotationSession
    project: Project
    image: Image
    volume: Volume
    previous: Round | None  # the image's active round when the round began
    previous_seeds: np.ndarray | None  # all seeds up to ``previous``
    previous_planes: set[tuple[int, int]]
    previous_segmentation: np.ndarray | None  # the answer the user corrects (none before round 1)
    idempotency_key: str | None = None  # a retry with it gets this round back (``idempotency``)
    prediction: Prediction | None = None
    painted: interactions.PaintedInput | None = None
    kind: str = "interactions"  # interactions | labelmap
    record: dict | None = None  # input.json: the request, or a summary of the label map
    clock: LapClock | None = None  # where the request's time goes (``scribbleflow_round_phase_seconds``)

    @property
    def seeds(self) -> np.ndarray:
        return interactions.merge(self.previous_seeds, self.painted.seeds)

    @property
    def planes(self) -> set[tuple[int, int]]:
        return self.previous_planes | self.painted.planes


def add_round(
    ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession, request: schemas.RoundCreate,
    idempotency_key: str | None = None,
) -> Round:
    with _turn(ctx, db, principal, session, idempotency_key) as submission:
        if isinstance(submission, Round):
            return submission  # a retry of a round stored before: the same round, not a second one
        num_classes = len(submission.project.labels)
        checked = interactions.check_round(request, submission.volume, num_classes)  # before the prediction's cost
        submission.clock.lap("check")
        submission.prediction = _round_prediction(ctx, submission)
        submission.painted = interactions.paint_round(
            checked, submission.volume, num_classes, ctx.settings.click_radius, submission.prediction.probabilities
        )
        submission.clock.lap("paint")
        submission.kind, submission.record = "interactions", request.model_dump(mode="json")
        return _store(ctx, db, principal, submission)


def add_labelmap_round(
    ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession,
    upload_path: Path, filename: str, idempotency_key: str | None = None,
) -> Round:
    with _turn(ctx, db, principal, session, idempotency_key) as submission:
        if isinstance(submission, Round):
            return submission  # a retry of a round stored before
        labelmap = read_upload(upload_path, filename, ctx.settings.max_upload_bytes).volume
        submission.clock.lap("check")
        submission.painted = interactions.labelmap_input(
            labelmap.array, submission.volume, len(submission.project.labels)
        )
        submission.clock.lap("paint")
        submission.prediction = _round_prediction(ctx, submission)
        submission.kind = "labelmap"
        submission.record = {"labelmap": True, "labelled_voxels": submission.painted.voxels}
        return _store(ctx, db, principal, submission)


@contextmanager
def _turn(
    ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession, idempotency_key: str | None
) -> Iterator[RoundSubmission | Round]:
    """Under the image's lock (``leases.image_locked``): the round already stored for
    ``idempotency_key`` (a retry), else the new round's starting point, the session checked
    to be the caller's."""
    clock = LapClock()
    with leases.image_locked(ctx, db, session.image_id):
        stored = keyed_round(db, session.id, idempotency_key)
        if stored is not None:
            yield stored
            return
        # The whole round in one compute slot, not its computation alone: with eight rounds
        # in flight on two cores, each slot then runs one round to its end while the others
        # wait, instead of eight rounds sharing the cores and all ending late (docs/benchmarks.md,
        # "Eight annotators at once: where a round's time goes").
        with ctx.compute():
            clock.lap("wait")
            submission = _begin(ctx, db, leases.held(ctx, db, principal, session))
            submission.idempotency_key, submission.clock = idempotency_key, clock
            clock.lap("read")
            yield submission


def _begin(ctx: AppContext, db: Session, session: AnnotationSession) -> RoundSubmission:
    """The round's starting point, read under the image lock; commits the renewed lease so
    that no transaction stays open during the computation."""
    image = images.get_image(db, session.image_id)
    project = projects.get_project(db, image.project_id)
    previous = history.active_round(db, image.id)
    db.commit()
    seeds, planes, segmentation = None, set(), None
    if previous is not None:
        seeds = ctx.datastore.read_volume(f"{previous.dir}/{ROUND_FILES['scribble']}").array.astype(np.uint8)
        planes = {(int(a), int(i)) for a, i in previous.planes}
        segmentation = ctx.datastore.read_volume(f"{previous.dir}/{ROUND_FILES['segmentation']}").array
        segmentation = segmentation.astype(np.uint8)
    else:
        # Round 1 corrects the opening prediction the user was shown: kept where they draw
        # nothing, like any later answer, when it shows any structure (an untrained model's
        # empty opening claims nothing, and the strokes are densified on their own).
        opening = ctx.datastore.read_volume(f"{session.dir}/{SESSION_FILES['prediction']}").array.astype(np.uint8)
        segmentation = opening if opening.any() else None
    volume = images.load_volume(ctx.datastore, image)
    return RoundSubmission(session, project, image, volume, previous, seeds, planes, segmentation)


def _round_prediction(ctx: AppContext, submission: RoundSubmission) -> Prediction:
    atlas_file = ctx.datastore.resolve(submission.session.dir) / SESSION_FILES["atlas_probabilities"]
    prediction = round_prediction(ctx, submission.project, submission.image, submission.volume,
                                  submission.session, atlas_file)
    submission.clock.lap("prediction")
    return prediction


def _store(ctx: AppContext, db: Session, principal: Principal, submission: RoundSubmission) -> Round:
    """Compute the round, write its folder, commit its row, queue its training job."""
    seeds, planes, clock = submission.seeds, submission.planes, submission.clock
    clock.lap("merge_seeds")
    compute_phases = dict.fromkeys(ROUND_PHASES, 0.0)  # each stored round counts in each part (0 s: not run)
    result = compute_round(
        submission.volume.array, submission.volume.spacing_zyx, seeds, planes,
        submission.prediction.probabilities, len(submission.project.labels),
        validation_dice=submission.prediction.validation_dice,
        previous_segmentation=submission.previous_segmentation, phase_seconds=compute_phases,
    )
    clock.lap("compute")
    seconds = clock.elapsed()  # the round's server time until its answer exists, waits included
    ctx.metrics.round_seconds.labels(project=str(submission.project.id)).observe(seconds)
    with staged_record(ctx.datastore, db, submission.image, "rounds") as folder:
        _write_round_files(ctx, folder, submission, seeds, result)
        clock.lap("write_files")
        session = leases.held(ctx, db, principal, submission.session)  # still ours?
        if history.round_id(history.active_round(db, submission.image.id)) != history.round_id(submission.previous):
            raise Conflict(f"image {submission.image.id} changed while this round was computed; submit it again")
        row = _insert_round(db, principal, session, submission, folder=ctx.datastore.relative(folder),
                            result=result, planes=planes, seconds=seconds)
        db.commit()
    clock.lap("commit")
    ctx.metrics.rounds.labels(kind=submission.kind).inc()
    if submission.project.learning.get("train_on_rounds", True):
        ctx.training.submit(
            db, principal, submission.project, submission.image, trigger="round", round_id=row.id,
            reference_version=session.model_version,
            files={name: folder / ROUND_FILES[key] for name, key in (
                ("proxy_labels", "proxy"), ("proxy_probabilities", "proxy_probabilities"),
                ("confidence", "confidence"), ("scribble", "scribble"))},
        )
    clock.lap("queue_training")
    clock.observe(ctx.metrics.round_phase_seconds)
    for name, phase_seconds in compute_phases.items():
        ctx.metrics.round_compute_phase_seconds.labels(phase=name).observe(phase_seconds)
    return row


def _write_round_files(
    ctx: AppContext, folder: Path, submission: RoundSubmission, seeds: np.ndarray, result: RoundComputation
) -> None:
    store, volume = ctx.datastore, submission.volume
    store.write_json(folder / ROUND_INPUT_JSON, submission.record)
    store.write_volume(folder / ROUND_FILES["input"], volume, submission.painted.seeds)
    store.write_volume(folder / ROUND_FILES["scribble"], volume, seeds)
    store.write_volume(folder / ROUND_FILES["proxy"], volume, result.proxy_labels)
    write_probabilities(folder / ROUND_FILES["proxy_probabilities"], result.proxy_probabilities)
    store.write_volume(folder / ROUND_FILES["confidence"], volume, result.confidence)
    store.write_volume(folder / ROUND_FILES["segmentation"], volume, result.segmentation)
    store.write_volume(folder / ROUND_FILES["residual"], volume, result.residual)


def _insert_round(
    db: Session, principal: Principal, session: AnnotationSession, submission: RoundSubmission, *,
    folder: str, result: RoundComputation, planes: set[tuple[int, int]], seconds: float,
) -> Round:
    """The round's row and its audit event (flushed, not committed)."""
    project, image, painted = submission.project, submission.image, submission.painted
    effort = schemas.Effort(voxels=painted.voxels, strokes=painted.strokes, clicks=painted.clicks,
                            slices_touched=len(painted.planes))
    row = Round(
        session_id=session.id,
        image_id=image.id,
        number=1 + len(history.list_rounds(db, image.id)),
        kind=submission.kind,
        previous_round_id=history.round_id(submission.previous),
        created_by=principal.owner,
        model_version=submission.prediction.version,
        prediction_source=submission.prediction.source,
        dir=folder,
        label_counts=label_counts(result.segmentation, projects.label_names(project)),
        suggestion=suggestion_json(result.suggestion, submission.volume),
        effort=effort.model_dump(),
        planes=[list(p) for p in sorted(planes)],
        compute_seconds=seconds,
        model_weight=result.model_weight,
        idempotency_key=submission.idempotency_key,
    )
    db.add(row)
    db.flush()
    audit.record(db, principal, "round", project_id=project.id, image_id=image.id,
                 details={"round_id": row.id, "session_id": session.id, "kind": submission.kind,
                          **effort.model_dump()})
    return row


def undo(ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession) -> Round:
    """Mark the image's latest active round undone (its files stay); returns that round."""
    with leases.image_held(ctx, db, principal, session) as session:
        latest = history.active_round(db, session.image_id)
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


def round_file(ctx: AppContext, row: Round, name: str) -> Path:
    if name not in ROUND_FILES or name == "proxy_probabilities":
        raise NotFound(f"rounds have no file {name!r}")
    return ctx.datastore.resolve(f"{row.dir}/{ROUND_FILES[name]}")


def round_input(ctx: AppContext, row: Round) -> dict:
    return json.loads((ctx.datastore.resolve(row.dir) / ROUND_INPUT_JSON).read_text())
