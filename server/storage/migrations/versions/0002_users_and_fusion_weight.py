"""Password users and their expiring tokens (MONAI Label API, issue 14); the model's weight
in a round's fusion (``rounds.model_weight``). Each step is skipped when the database
already has it (a database created without Alembic by a later version of the code).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    if "users" not in tables:
        op.create_table(
            "users",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(200), nullable=False, unique=True),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("password_hash", sa.String(200), nullable=False),
            sa.Column("created_at", UTC, nullable=False),
            sa.Column("created_by", sa.String(200)),
            sa.Column("disabled_at", UTC),
        )
    if "user_tokens" not in tables:
        op.create_table(
            "user_tokens",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
            sa.Column("salt", sa.String(64), nullable=False),
            sa.Column("digest", sa.String(128), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("created_at", UTC, nullable=False),
            sa.Column("expires_at", UTC, nullable=False),
        )
        op.create_index("ix_user_tokens_user_id", "user_tokens", ["user_id"])
    if "model_weight" not in {c["name"] for c in inspector.get_columns("rounds")}:
        with op.batch_alter_table("rounds") as batch:
            batch.add_column(sa.Column("model_weight", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("model_weight")
    op.drop_table("user_tokens")
    op.drop_table("users")
