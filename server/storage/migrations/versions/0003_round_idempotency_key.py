"""The Idempotency-Key of the request that made a round (unique per session).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    # skipped when a database created without Alembic by later code has them already
    if "idempotency_key" not in {c["name"] for c in inspector.get_columns("rounds")}:
        with op.batch_alter_table("rounds") as batch:
            batch.add_column(sa.Column("idempotency_key", sa.String(200)))
    if "ix_rounds_session_idempotency_key" not in {i["name"] for i in inspector.get_indexes("rounds")}:
        op.create_index("ix_rounds_session_idempotency_key", "rounds", ["session_id", "idempotency_key"],
                        unique=True)


def downgrade() -> None:
    op.drop_index("ix_rounds_session_idempotency_key", table_name="rounds")
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("idempotency_key")
