"""``/train``: the online learner's jobs as MONAI Label training tasks."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from server.api.deps import Ctx
from server.api.monailabel.deps import ServedProject
from server.api.monailabel.schemas import Empty, TrainTask
from server.auth import AdminUser, CurrentUser, Db
from server.services import audit, monailabel

router = APIRouter(prefix="/train", tags=["MONAI Label: train"])


@router.get("/", response_model=TrainTask | list[TrainTask],
            summary="The latest training job (all: every job; check_if_running: 404 unless one runs)")
def train_status(
    db: Db, project: ServedProject, _user: CurrentUser, all: bool = False, check_if_running: bool = False,
) -> TrainTask | list[TrainTask]:
    answer = monailabel.train_status(db, project, all, check_if_running)
    if isinstance(answer, list):
        return [TrainTask.model_validate(task) for task in answer]
    return TrainTask.model_validate(answer)


def _start(ctx: Ctx, db: Db, project: ServedProject, user: CurrentUser, model: str | None) -> TrainTask:
    task = monailabel.train_start(ctx, db, user, project, model)
    audit.record(db, user, "train_start", project_id=project.id, details={"job_id": task["scribbleflow_job_id"]})
    db.commit()
    return TrainTask.model_validate(task)


@router.post("/", response_model=TrainTask, summary="Start training (every trainer: there is one)")
def train_start_all(
    ctx: Ctx, db: Db, project: ServedProject, user: CurrentUser,
    params: dict[str, Any] | None = Body(None, description="Accepted and unused."),
) -> TrainTask:
    return _start(ctx, db, project, user, None)


@router.post("/{model}", response_model=TrainTask,
             summary="Start a training job on the latest accepted image (or the one already running)")
def train_start(
    model: str, ctx: Ctx, db: Db, project: ServedProject, user: CurrentUser,
    params: dict[str, Any] | None = Body(None, description="Accepted and unused."),
) -> TrainTask:
    return _start(ctx, db, project, user, model)


@router.delete("/", response_model=TrainTask | Empty, summary="Stop the running training jobs (admin)")
def train_stop(ctx: Ctx, db: Db, project: ServedProject, user: AdminUser) -> TrainTask | Empty:
    task = monailabel.train_stop(ctx, db, project)
    if not task:
        return Empty()
    audit.record(db, user, "train_stop", project_id=project.id, details={"job_id": task["scribbleflow_job_id"]})
    db.commit()
    return TrainTask.model_validate(task)
