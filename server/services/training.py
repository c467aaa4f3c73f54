"""Online learning jobs: built from stored rounds, run by an executor, tracked in the database.

A job is submitted after each round (unless the project turned that off) and on accept.
When an accept job has succeeded, consolidation jobs follow (``consolidation_jobs`` of
``consolidation_steps`` each, from the project's learning settings; 0 steps: none): each
trains on the replay buffer alone, every accepted image alike, and goes through the gate;
the next one is queued when the one before has succeeded, so jobs submitted meanwhile (round
jobs, other projects' jobs in the embedded executor's single queue) wait for at most one of
them. The project's next accept job stops a running one and cancels a queued one (the
executors' rule), so consolidation never delays that image's new model, and the chain starts
again after it. Their rows have no image (trigger ``consolidate``). Each is queued from the
executor's state callback just before the success of the job before it is recorded: a server
stopped between the two queues it again when that job runs again at the next start, and none
is queued for a success that arrives while the server is stopping.
Its ``learner.jobs.TrainJob`` payload names the round's files, the promotion gate's images
(the held-out ones; the latest accepted training images until there is one) and settings;
it is stored in the job's row before it goes to the executor, so jobs that were queued or
running when the server stopped are submitted again at the next start. Images held out for
validation never train the model.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from learner.executors import Executor, ExecutorFactory, JobStatus, QueueFull, UnknownJob
from learner.jobs import CONSOLIDATION_IMAGE_ID, TrainJob, ValidationImage, gate_images
from learner.online import DEFAULT_CONSOLIDATION_JOBS, DEFAULT_CONSOLIDATION_STEPS, OnlineSettings
from server.auth import Principal
from server.errors import NotFound
from server.metrics import Metrics
from server.storage.datastore import DataStore
from server.storage.tables import Image, Project, TrainingJob

log = logging.getLogger(__name__)

ACTIVE_STATES = ("queued", "running")
#: Jobs on an accepted label: once one succeeds, the project's consolidation job follows.
ACCEPTED_TRIGGERS = ("accept", "train")
CONSOLIDATION_TRIGGER = "consolidate"


class TrainingService:
    """Jobs of every project: submitted to the executor that ``make_executor`` builds at each
    start (``server.context`` picks it from the settings), their state kept in the database."""

    def __init__(
        self, session_factory: sessionmaker, datastore: DataStore, metrics: Metrics, make_executor: ExecutorFactory
    ):
        self._session_factory = session_factory
        self._datastore = datastore
        self._metrics = metrics
        self._make_executor = make_executor
        self._executor: Executor | None = None
        self._stopping = threading.Event()

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._executor = self._make_executor(on_change=self._on_change)
        self._resubmit_unfinished()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the executor; unfinished jobs stay queued in the database for the next start."""
        if self._executor is None:
            return
        self._stopping.set()
        self._executor.shutdown(wait=True, timeout=timeout)
        self._executor = None

    def cancel_image_jobs(self, image_id: int) -> None:
        """Cancel the queued and running jobs of an image (e.g. it was deleted)."""
        self._cancel_where(TrainingJob.image_id == image_id, "image deleted")

    def cancel_project_jobs(self, project_id: int, reason: str = "cancelled") -> None:
        """Cancel every queued and running job of a project, consolidation jobs included."""
        self._cancel_where(TrainingJob.project_id == project_id, reason)

    def _cancel_where(self, condition, reason: str) -> None:
        with self._session_factory() as db:
            ids = list(db.scalars(select(TrainingJob.executor_id).where(
                condition, TrainingJob.state.in_(ACTIVE_STATES))))
        for executor_id in ids:
            if self._executor is None:
                self._record(executor_id, {"state": "cancelled", "message": reason})
                continue
            try:
                self._executor.cancel(executor_id)
            except UnknownJob:
                self._record(executor_id, {"state": "cancelled", "message": reason})

    def queue_depth(self) -> int:
        return self._executor.queue_depth() if self._executor is not None else 0

    # --- submission -----------------------------------------------------------------------

    def submit(
        self,
        db: Session,
        principal: Principal,
        project: Project,
        image: Image,
        *,
        trigger: str,
        round_id: int | None,
        files: dict[str, Path],
        reference_version: int | None,
    ) -> TrainingJob | None:
        """Queue a job for ``image`` (None for validation images); commits its row first."""
        if image.is_validation:
            return None
        job = self._train_job(db, project, image, round_id=round_id, files=files,
                              reference_version=reference_version)
        row = TrainingJob(
            project_id=project.id,
            image_id=image.id,
            round_id=round_id,
            trigger=trigger,
            executor_id=job.job_id,
            state="queued",
            payload=job.to_dict(),
            created_by=principal.owner,
        )
        db.add(row)
        db.commit()
        self._metrics.jobs.labels(state="queued").inc()
        self._send(job)
        return row

    def _train_job(
        self, db: Session, project: Project, image: Image, *, round_id: int | None, files: dict[str, Path],
        reference_version: int | None,
    ) -> TrainJob:
        """The job's payload: the round's files, the promotion gate's images, settings."""
        learning = project.learning
        store = self._datastore
        return TrainJob(
            project_id=str(project.id),
            image_id=str(image.id),
            round_id=str(round_id) if round_id is not None else f"accept-{image.id}",
            image_path=str(store.resolve(image.path)),
            num_classes=len(project.labels),
            reference_version=reference_version,
            proxy_labels_path=_optional(files.get("proxy_labels")),
            proxy_probabilities_path=_optional(files.get("proxy_probabilities")),
            confidence_path=_optional(files.get("confidence")),
            scribble_path=_optional(files.get("scribble")),
            accepted_label_path=_optional(files.get("accepted_label")),
            **self._gate_images(db, project),
            images_seen=_accepted_images(db, project, excluding=image.id),
            steps=int(learning["steps"]),
            settings=dict(learning["online"]),
            registry_root=str(store.models_dir(project.id)),
            replay_root=str(store.replay_dir(project.id)),
        )

    def _gate_images(self, db: Session, project: Project) -> dict[str, Any]:
        """``learner.jobs.gate_images`` of the project's accepted images (held out, training)."""
        store = self._datastore

        def accepted(held_out: bool) -> list[ValidationImage]:
            return [
                ValidationImage(name=str(v.id), image_path=str(store.resolve(v.path)),
                                label_path=str(store.resolve(v.accepted_path)))
                for v in db.scalars(
                    select(Image).where(
                        Image.project_id == project.id, Image.is_validation.is_(held_out),
                        Image.accepted_path.is_not(None),
                    ).order_by(Image.accepted_at, Image.id)
                )
            ]

        held_out = accepted(True)
        return gate_images(held_out, [] if held_out else accepted(False))

    def submit_consolidation(
        self, project_id: int, created_by: str, after_job: str | None = None
    ) -> TrainingJob | None:
        """Queue a consolidation job of the project; a queued one of the project is superseded.

        None when its settings ask for none, no image has been accepted for training yet,
        another accept job of the project (not ``after_job``, the one that just succeeded) is
        still queued or running (that one starts the chain again when it succeeds), or the
        project's latest accepted image has had its ``consolidation_jobs`` already (counted
        from the rows since its accept job, ``after_job`` included).
        """
        with self._session_factory() as db:
            project = db.get(Project, project_id)
            if project is None:
                return None
            learning = project.learning
            # Projects stored before consolidation existed hold no value: the default (as for online settings).
            steps = int(learning.get("consolidation_steps", DEFAULT_CONSOLIDATION_STEPS))
            chain = int(learning.get("consolidation_jobs", DEFAULT_CONSOLIDATION_JOBS))
            accepted = _accepted_images(db, project)
            replay_capacity = OnlineSettings.from_dict(learning["online"]).replay_capacity
            if steps < 1 or accepted < 1 or replay_capacity < 1:
                return None
            pending_accept = select(func.count(TrainingJob.id)).where(
                TrainingJob.project_id == project.id, TrainingJob.trigger.in_(ACCEPTED_TRIGGERS),
                TrainingJob.state.in_(ACTIVE_STATES))
            if after_job is not None:
                pending_accept = pending_accept.where(TrainingJob.executor_id != after_job)
            if db.scalar(pending_accept):
                return None
            done = _consolidations_since_accept(db, project)
            if done >= chain:
                return None
            store = self._datastore
            job = TrainJob.consolidation(
                str(project.id),
                f"consolidate-{accepted}-{done + 1}",
                len(project.labels),
                **self._gate_images(db, project),
                images_seen=accepted,
                steps=steps,
                settings=dict(learning["online"]),
                registry_root=str(store.models_dir(project.id)),
                replay_root=str(store.replay_dir(project.id)),
            )
            row = TrainingJob(project_id=project.id, image_id=None, round_id=None, trigger=CONSOLIDATION_TRIGGER,
                              executor_id=job.job_id, state="queued", payload=job.to_dict(), created_by=created_by)
            db.add(row)
            db.commit()
            db.refresh(row)
        self._metrics.jobs.labels(state="queued").inc()
        self._send(job)
        return row

    def _send(self, job: TrainJob) -> None:
        if self._executor is None:
            return  # not started (e.g. a command-line use): stays queued for the next start
        try:
            self._executor.submit(job)
        except (QueueFull, RuntimeError, ValueError) as exc:
            self._record(job.job_id, {"state": "failed", "message": f"not queued: {exc}"})

    def _resubmit_unfinished(self) -> None:
        with self._session_factory() as db:
            rows = list(
                db.scalars(
                    select(TrainingJob).where(TrainingJob.state.in_(ACTIVE_STATES)).order_by(TrainingJob.id)
                )
            )
            payloads = []
            for row in rows:
                row.state, row.progress, row.started_at = "queued", 0.0, None
                payloads.append((row.id, row.payload))
            db.commit()
        for row_id, payload in payloads:
            try:
                self._send(TrainJob.from_dict(payload))
            except (TypeError, ValueError) as exc:
                log.warning("job %d could not be resubmitted: %s", row_id, exc)
                with self._session_factory() as db:
                    row = db.get(TrainingJob, row_id)
                    row.state, row.message = "failed", f"could not be resubmitted: {exc}"
                    db.commit()
        if payloads:
            log.info("resubmitted %d unfinished training job(s)", len(payloads))

    # --- executor events (notifier thread) ------------------------------------------------

    def _on_change(self, status: JobStatus) -> None:
        state = str(status.state)
        if self._stopping.is_set() and state in ("cancelled", "running"):
            return  # shut down with the server: stays queued and is resubmitted at the next start
        changes: dict[str, Any] = {"state": state}
        if status.total:
            changes["progress"] = min(1.0, status.step / status.total)
        if status.started_at:
            changes["started_at"] = datetime.fromtimestamp(status.started_at, UTC)
        if status.finished_at and status.state.finished:
            changes["finished_at"] = datetime.fromtimestamp(status.finished_at, UTC)
        if status.result:
            result = dict(status.result)
            changes.update(
                result_version=result.get("version"),
                promoted=result.get("promoted"),
                message=result.get("reason", ""),
                result=result,
                progress=1.0,
            )
        elif status.error:
            changes["message"] = status.error
        elif status.superseded_by:
            changes["message"] = ("superseded by the project's newer consolidation job"
                                  if status.image_id == CONSOLIDATION_IMAGE_ID
                                  else "superseded by a newer round of the same image")
        if state == "succeeded" and not self._stopping.is_set():
            try:
                self._consolidate_after(status.job_id)
            except Exception:  # the accept job's own result must be recorded whatever happens here
                log.exception("no consolidation job could be queued after job %s", status.job_id)
        trigger = self._record(status.job_id, changes)
        if trigger is not None and status.state.finished:
            self._metrics.jobs.labels(state=state).inc()
            if status.started_at and status.finished_at:
                self._metrics.job_seconds.labels(state=state, trigger=trigger).observe(
                    status.finished_at - status.started_at)
        self._metrics.queue_depth.set(self.queue_depth())

    def _consolidate_after(self, executor_id: str) -> None:
        """Queue the project's next consolidation job when ``executor_id`` is an accept job or a
        consolidation job. Called before its success is recorded, so whoever waits for the
        project's jobs to finish sees the next job queued, never a gap between the two."""
        with self._session_factory() as db:
            row = db.scalar(select(TrainingJob).where(TrainingJob.executor_id == executor_id))
            chained = (*ACCEPTED_TRIGGERS, CONSOLIDATION_TRIGGER)
            if row is None or row.trigger not in chained or row.state == "succeeded":
                return
            project_id, created_by = row.project_id, row.created_by
        self.submit_consolidation(project_id, created_by, after_job=executor_id)

    def _record(self, executor_id: str, changes: dict[str, Any]) -> str | None:
        """Apply ``changes`` to the job's row; its trigger, or None when there is no such row."""
        with self._session_factory() as db:
            row = db.scalar(select(TrainingJob).where(TrainingJob.executor_id == executor_id))
            if row is None:
                return None
            for key, value in changes.items():
                setattr(row, key, value)
            trigger = row.trigger
            db.commit()
            return trigger


def _consolidations_since_accept(db: Session, project: Project) -> int:
    """Consolidation jobs of the project queued since its latest accept job (any state)."""
    latest_accept = db.scalar(select(func.max(TrainingJob.id)).where(
        TrainingJob.project_id == project.id, TrainingJob.trigger.in_(ACCEPTED_TRIGGERS)))
    return db.scalar(select(func.count(TrainingJob.id)).where(
        TrainingJob.project_id == project.id, TrainingJob.trigger == CONSOLIDATION_TRIGGER,
        TrainingJob.id > (latest_accept or 0))) or 0


def _accepted_images(db: Session, project: Project, excluding: int | None = None) -> int:
    """Images of the project accepted for training (validation images do not train)."""
    query = select(func.count(Image.id)).where(
        Image.project_id == project.id, Image.status == "accepted", Image.is_validation.is_(False))
    if excluding is not None:
        query = query.where(Image.id != excluding)
    return int(db.scalar(query) or 0)


def _optional(path: Path | None) -> str | None:
    return None if path is None else str(path)


def get_job(db: Session, job_id: int) -> TrainingJob:
    job = db.get(TrainingJob, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def list_jobs(db: Session, project_id: int, limit: int = 1000) -> list[TrainingJob]:
    return list(
        db.scalars(
            select(TrainingJob).where(TrainingJob.project_id == project_id).order_by(TrainingJob.id).limit(limit)
        )
    )
