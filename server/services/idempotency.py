"""Idempotent round submission: ``POST`` of a round with an ``Idempotency-Key`` header stores
the key with the round, in the same transaction; a retry with the key (after a timeout or a
server crash) gets the stored round back instead of a second round. Keys are per session."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.storage.tables import Round


def keyed_round(db: Session, session_id: int, key: str | None) -> Round | None:
    """The round stored for ``key`` in the session, or None (also when no key was given).
    Called with the image's lock held, so a retry waits for the request it repeats."""
    if key is None:
        return None
    row = db.scalar(select(Round).where(Round.session_id == session_id, Round.idempotency_key == key))
    db.commit()  # no transaction stays open during the round's computation
    return row
