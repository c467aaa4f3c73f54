"""Leases: who may change an image's annotation right now.

A session holds a lease on its image: another annotator opening the image gets a
``Conflict`` naming the holder unless they take it over; a lease not renewed within
``Settings.lease_seconds`` has expired and the image is free. Every request of the
holder renews the lease.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.auth import Principal
from server.context import AppContext
from server.errors import Conflict, NotFound
from server.storage.db import utcnow
from server.storage.tables import AnnotationSession


def locked(db: Session, table, row_id: int):
    """The row, re-read and locked for this transaction (a no-op lock on SQLite)."""
    query = select(table).where(table.id == row_id).with_for_update().execution_options(populate_existing=True)
    row = db.scalar(query)
    if row is None:
        raise NotFound(f"{table.__tablename__[:-1]} {row_id} not found")
    return row


def open_sessions(db: Session, image_id: int) -> list[AnnotationSession]:
    return list(
        db.scalars(
            select(AnnotationSession).where(
                AnnotationSession.image_id == image_id, AnnotationSession.state == "open"
            )
        )
    )


def _lease_conflict(holder: AnnotationSession, image_id: int) -> Conflict:
    return Conflict(
        f"image {image_id} is being annotated by {holder.holder!r} (session {holder.id}, lease until "
        f"{holder.lease_expires_at.isoformat(timespec='seconds')}); open it with takeover=true to take it over"
    )


def check_lease(db: Session, image_id: int, principal: Principal, takeover: bool) -> AnnotationSession | None:
    """The caller's own live session on the image, or None; Conflict if someone else holds it."""
    now = utcnow()
    own = None
    for session in open_sessions(db, image_id):
        live = session.lease_expires_at > now
        if live and session.holder != principal.owner and not takeover:
            raise _lease_conflict(session, image_id)
        if live and session.holder == principal.owner:
            own = session
    return own


def close_others(db: Session, image_id: int, keep: int | None) -> list[str]:
    """Close the image's other open sessions (taken over or expired); their holders."""
    now = utcnow()
    closed = []
    for session in open_sessions(db, image_id):
        if session.id == keep:
            continue
        session.state = "taken_over" if session.lease_expires_at > now else "expired"
        session.closed_at = now
        closed.append(session.holder)
    return closed


def renew(session: AnnotationSession, lease_seconds: int) -> None:
    session.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)


def require_holder(
    db: Session, lease_seconds: int, principal: Principal, session: AnnotationSession
) -> None:
    """The session must be open and the caller's; renews its lease (not committed)."""
    if session.state != "open":
        successor = db.scalar(
            select(AnnotationSession)
            .where(AnnotationSession.image_id == session.image_id, AnnotationSession.id > session.id)
            .order_by(AnnotationSession.id.desc())
            .limit(1)
        )
        by = f" by {successor.holder!r} (session {successor.id})" if successor is not None else ""
        raise Conflict(f"session {session.id} is {session.state.replace('_', ' ')}{by}; open a new session")
    if session.holder != principal.owner:
        raise Conflict(f"session {session.id} is held by {session.holder!r}, not by {principal.owner!r}")
    renew(session, lease_seconds)


def held(ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession) -> AnnotationSession:
    """The session re-read and locked, checked to be open and the caller's (lease renewed)."""
    session = locked(db, AnnotationSession, session.id)
    require_holder(db, ctx.settings.lease_seconds, principal, session)
    return session


@contextmanager
def image_locked(ctx: AppContext, db: Session, image_id: int) -> Iterator[None]:
    """Commit → the image's lock. The commit first: a request never waits for the image lock
    while holding a transaction. The block runs under the image lock, so the rounds, undo
    and accept of one image happen one after another."""
    db.commit()
    with ctx.image_locks(image_id):
        yield


@contextmanager
def image_held(
    ctx: AppContext, db: Session, principal: Principal, session: AnnotationSession
) -> Iterator[AnnotationSession]:
    """Commit → the image's lock → the session checked to be the caller's (see ``held``)."""
    with image_locked(ctx, db, session.image_id):
        yield held(ctx, db, principal, session)
