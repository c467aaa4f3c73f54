"""How a session's openings scored: ``sessions.opening_scores`` (model and atlas, when both
were computed) and ``sessions.opening_dice`` (the one shown).

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
    columns = {c["name"] for c in inspector.get_columns("sessions")}
    # each skipped when a database created without Alembic by later code has it already
    with op.batch_alter_table("sessions") as batch:
        if "opening_scores" not in columns:
            batch.add_column(sa.Column("opening_scores", sa.JSON))
        if "opening_dice" not in columns:
            batch.add_column(sa.Column("opening_dice", sa.Float))


def downgrade() -> None:
    # Not in batch mode: on SQLite that rebuilds the table, and dropping the old one would
    # delete every round through their ON DELETE CASCADE. SQLite drops a column since 3.35.
    op.execute("ALTER TABLE sessions DROP COLUMN opening_dice")
    op.execute("ALTER TABLE sessions DROP COLUMN opening_scores")
