"""The schema before Alembic (scribbleflow 0.1.0 as of issue 13): tokens, projects, images,
sessions, rounds, jobs, audit events. A database created without Alembic is stamped with
this revision and upgraded from here.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UTC = sa.DateTime(timezone=True)


def upgrade() -> None:
    _create_token_and_project_tables()
    _create_image_and_session_tables()
    _create_round_tables()
    _create_job_and_audit_tables()


def _create_token_and_project_tables() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("digest", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("created_by", sa.String(200)),
        sa.Column("revoked_at", UTC),
    )
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("learning", sa.JSON, nullable=False),
        sa.Column("next_stream_position", sa.Integer, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
    )


def _create_image_and_session_tables() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("stream_position", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("is_validation", sa.Boolean, nullable=False),
        sa.Column("source_format", sa.String(16), nullable=False),
        sa.Column("pixel_type", sa.String(32), nullable=False),
        sa.Column("shape_zyx", sa.JSON, nullable=False),
        sa.Column("spacing_xyz", sa.JSON, nullable=False),
        sa.Column("origin_xyz", sa.JSON, nullable=False),
        sa.Column("direction", sa.JSON, nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("accepted_round_id", sa.Integer),
        sa.Column("accepted_path", sa.String(500)),
        sa.Column("accepted_at", UTC),
        sa.Column("accepted_by", sa.String(200)),
        sa.Column("uncertainty_version", sa.Integer),
        sa.Column("uncertainty_score", sa.Float),
        sa.UniqueConstraint("project_id", "stream_position"),
    )
    op.create_index("ix_images_project_id", "images", ["project_id"])
    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("token_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("opened_at", UTC, nullable=False),
        sa.Column("lease_expires_at", UTC, nullable=False),
        sa.Column("closed_at", UTC),
        sa.Column("model_version", sa.Integer),
        sa.Column("prediction_source", sa.String(16), nullable=False),
        sa.Column("dir", sa.String(500), nullable=False),
        sa.Column("label_counts", sa.JSON, nullable=False),
        sa.Column("suggestion", sa.JSON),
    )
    op.create_index("ix_sessions_image_id", "sessions", ["image_id"])


def _create_round_tables() -> None:
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.Integer, sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("previous_round_id", sa.Integer),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("undone_at", UTC),
        sa.Column("undone_by", sa.String(200)),
        sa.Column("model_version", sa.Integer),
        sa.Column("prediction_source", sa.String(16), nullable=False),
        sa.Column("dir", sa.String(500), nullable=False),
        sa.Column("label_counts", sa.JSON, nullable=False),
        sa.Column("suggestion", sa.JSON),
        sa.Column("effort", sa.JSON, nullable=False),
        sa.Column("planes", sa.JSON, nullable=False),
        sa.Column("compute_seconds", sa.Float, nullable=False),
        sa.Column("dice", sa.JSON),
    )
    op.create_index("ix_rounds_session_id", "rounds", ["session_id"])
    op.create_index("ix_rounds_image_id", "rounds", ["image_id"])


def _create_job_and_audit_tables() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_id", sa.Integer),
        sa.Column("round_id", sa.Integer),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("executor_id", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("base_version", sa.Integer),
        sa.Column("result_version", sa.Integer),
        sa.Column("promoted", sa.Boolean),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("result", sa.JSON),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("started_at", UTC),
        sa.Column("finished_at", UTC),
    )
    op.create_index("ix_jobs_project_id", "jobs", ["project_id"])
    op.create_index("ix_jobs_image_id", "jobs", ["image_id"])
    op.create_index("ix_jobs_executor_id", "jobs", ["executor_id"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", UTC, nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("token_id", sa.String(32)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("project_id", sa.Integer),
        sa.Column("image_id", sa.Integer),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_project_id", "audit_events", ["project_id"])
    op.create_index("ix_audit_events_image_id", "audit_events", ["image_id"])


def downgrade() -> None:
    for table in ("audit_events", "jobs", "rounds", "sessions", "images", "projects", "api_tokens"):
        op.drop_table(table)
