"""An image's round history.

The state of an image's annotation is its latest round that was not undone; rounds of
all sessions of the image form one history, so a takeover continues where the previous
annotator stopped.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.errors import NotFound
from server.storage.tables import Round


def get_round(db: Session, round_id: int) -> Round:
    row = db.get(Round, round_id)
    if row is None:
        raise NotFound(f"round {round_id} not found")
    return row


def active_round(db: Session, image_id: int) -> Round | None:
    """The image's latest round that was not undone: the current state of its annotation."""
    return db.scalar(
        select(Round).where(Round.image_id == image_id, Round.undone_at.is_(None)).order_by(Round.id.desc()).limit(1)
    )


def list_rounds(db: Session, image_id: int) -> list[Round]:
    return list(db.scalars(select(Round).where(Round.image_id == image_id).order_by(Round.id)))


def round_id(row: Round | None) -> int | None:
    return row.id if row is not None else None
