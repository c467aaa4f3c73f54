"""The audit trail: who (token owner) did what, when, to which project and image."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.auth import Principal
from server.storage.tables import AuditEvent

ACTIONS = (
    "project_create",
    "upload",
    "image_update",
    "image_delete",
    "session_open",
    "takeover",
    "round",
    "undo",
    "accept",
    "settings_change",
    "model_import",
    "token_create",
    "token_revoke",
    "user_create",
    "login",
    "train_start",
    "train_stop",
)


def record(
    db: Session,
    principal: Principal,
    action: str,
    *,
    project_id: int | None = None,
    image_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an event to the current transaction (committed with the change it describes)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    event = AuditEvent(
        actor=principal.owner,
        token_id=principal.token_id,
        action=action,
        project_id=project_id,
        image_id=image_id,
        details=details or {},
    )
    db.add(event)
    return event


def list_events(
    db: Session, *, project_id: int | None = None, image_id: int | None = None, limit: int = 1000
) -> list[AuditEvent]:
    query = select(AuditEvent)
    if project_id is not None:
        query = query.where(AuditEvent.project_id == project_id)
    if image_id is not None:
        query = query.where(AuditEvent.image_id == image_id)
    return list(db.scalars(query.order_by(AuditEvent.at, AuditEvent.id).limit(limit)))
