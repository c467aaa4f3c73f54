"""How a session's two openings (model and atlas) scored: ``sessions.opening_scores``.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    # skipped when a database created without Alembic by later code has it already
    if "opening_scores" not in {c["name"] for c in inspector.get_columns("sessions")}:
        with op.batch_alter_table("sessions") as batch:
            batch.add_column(sa.Column("opening_scores", sa.JSON))


def downgrade() -> None:
    # Not in batch mode: on SQLite that rebuilds the table, and dropping the old one would
    # delete every round through their ON DELETE CASCADE. SQLite drops a column since 3.35.
    op.execute("ALTER TABLE sessions DROP COLUMN opening_scores")
