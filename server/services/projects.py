"""Projects: label names, learning settings, and the model every project starts with."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from learner.online import OnlineSettings, check_setting_change
from server import schemas
from server.auth import Principal
from server.errors import BadInput, Conflict, NotFound
from server.services import audit
from server.services.model_hub import ModelHub
from server.settings import Settings
from server.storage.tables import Image, Project

BACKGROUND = "background"


def default_learning(settings: Settings) -> dict[str, Any]:
    online = OnlineSettings(
        size=settings.model_size,
        promotion_tolerance=settings.promotion_tolerance,
        replay_capacity=settings.replay_capacity,
        seed=settings.seed,
    )
    return {
        "steps": settings.online_steps,
        "consolidation_steps": settings.consolidation_steps,
        "consolidation_jobs": settings.consolidation_jobs,
        "channels": list(settings.model_channels),
        "validation_every": settings.validation_every,
        "train_on_rounds": settings.train_on_rounds,
        "atlas_beside_model": settings.atlas_beside_model,
        "online": online.to_dict(),
    }


def merged_learning(current: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``current`` with the fields of ``change`` (``online`` merged per key), validated."""
    merged = copy.deepcopy(current)
    for key, value in change.items():
        if value is None:
            continue
        if key == "online":
            merged["online"].update(value)
        else:
            merged[key] = value
    try:
        check_setting_change(change.get("online") or {})
        merged["online"] = OnlineSettings.from_dict(merged["online"]).to_dict()
    except (TypeError, ValueError) as exc:
        raise BadInput(f"invalid online learning settings: {exc}") from None
    channels = merged["channels"]
    if any(int(c) < 1 for c in channels):
        raise BadInput(f"channels must be positive, got {channels}")
    multiple = 2 ** (len(channels) - 1)
    if merged["online"]["size"] % multiple:
        raise BadInput(f"online.size must be a multiple of {multiple} for {len(channels)} network levels")
    try:
        return schemas.LearningSettings(**merged).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadInput(f"invalid learning settings: {problems}") from None


def label_names(project: Project) -> list[str]:
    return list(project.labels)


def num_classes(project: Project) -> int:
    return len(project.labels)


def model_size(project: Project) -> int:
    return int(project.learning["online"]["size"])


def get_project(db: Session, project_id: int) -> Project:
    project = db.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    return project


def list_projects(db: Session) -> list[Project]:
    return list(db.scalars(select(Project).order_by(Project.id)))


def create_project(
    db: Session, settings: Settings, hub: ModelHub, principal: Principal, request: schemas.ProjectCreate
) -> Project:
    if db.scalar(select(Project.id).where(Project.name == request.name)) is not None:
        raise Conflict(f"a project named {request.name!r} exists already")
    change = request.learning.model_dump(exclude_none=True) if request.learning else {}
    learning = merged_learning(default_learning(settings), change)
    project = Project(
        name=request.name,
        description=request.description,
        labels=[BACKGROUND, *request.labels],
        learning=learning,
        created_by=principal.owner,
    )
    db.add(project)
    try:
        db.flush()  # the id names the project's model folder
    except IntegrityError:
        db.rollback()
        raise Conflict(f"a project named {request.name!r} exists already") from None
    # Version 0 is on disk before the project row is committed.
    hub.initialise(project.id, len(project.labels), learning["channels"], learning["online"]["seed"])
    audit.record(
        db, principal, "project_create", project_id=project.id,
        details={"name": project.name, "labels": project.labels},
    )
    try:
        db.commit()
    except IntegrityError:
        db.rollback()
        raise Conflict(f"a project named {request.name!r} exists already") from None
    return project


def update_learning(
    db: Session, principal: Principal, project: Project, change: schemas.LearningSettingsUpdate
) -> Project:
    before = project.learning
    after = merged_learning(before, change.model_dump(exclude_none=True))
    project.learning = after
    changed = {
        key: {"from": before.get(key), "to": after.get(key)}
        for key in after
        if before.get(key) != after.get(key)
    }
    audit.record(db, principal, "settings_change", project_id=project.id, details={"changed": changed})
    db.commit()
    return project


def project_out(db: Session, hub: ModelHub, project: Project) -> schemas.ProjectOut:
    count = db.scalar(select(func.count(Image.id)).where(Image.project_id == project.id)) or 0
    return schemas.ProjectOut(
        id=project.id,
        name=project.name,
        description=project.description,
        label_names=label_names(project),
        learning=schemas.LearningSettings(**project.learning),
        created_at=project.created_at,
        created_by=project.created_by,
        image_count=int(count),
        serving_version=hub.serving_version(project.id),
    )
