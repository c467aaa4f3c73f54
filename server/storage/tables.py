"""Database tables. Volumes live as files in the data store; rows hold their relative paths.

Geometry columns follow SimpleITK's (x, y, z) order (``spacing_xyz``, ``origin_xyz``,
row-major 3x3 ``direction``); ``shape_zyx`` is the array shape (z, y, x).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.storage.db import Base, UTCDateTime, utcnow


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public part of the token
    salt: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(128))  # sha256(salt + secret), hex
    role: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class User(Base):
    """A person who logs in with a password (``POST /auth/token``); the hash is argon2id."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(200))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class UserToken(Base):
    """A bearer token issued to a user at log-in: the user's role at that time, an expiry."""

    __tablename__ = "user_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public part of the token
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    salt: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(128))  # sha256(salt + secret), hex
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    labels: Mapped[list[str]] = mapped_column(JSON)  # index = label value; 0 is background
    learning: Mapped[dict[str, Any]] = mapped_column(JSON)
    next_stream_position: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))

    images: Mapped[list[Image]] = relationship(back_populates="project", cascade="all, delete-orphan")


class Image(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(300))
    stream_position: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="new")  # new | in_progress | accepted
    is_validation: Mapped[bool] = mapped_column(Boolean, default=False)
    source_format: Mapped[str] = mapped_column(String(16))
    pixel_type: Mapped[str] = mapped_column(String(32))
    shape_zyx: Mapped[list[int]] = mapped_column(JSON)
    spacing_xyz: Mapped[list[float]] = mapped_column(JSON)
    origin_xyz: Mapped[list[float]] = mapped_column(JSON)
    direction: Mapped[list[float]] = mapped_column(JSON)
    path: Mapped[str] = mapped_column(String(500))  # relative to the data directory
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    accepted_round_id: Mapped[int | None] = mapped_column(Integer)
    accepted_path: Mapped[str | None] = mapped_column(String(500))
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_by: Mapped[str | None] = mapped_column(String(200))
    # Cache for ordering the stream by model uncertainty.
    uncertainty_version: Mapped[int | None] = mapped_column(Integer)
    uncertainty_score: Mapped[float | None] = mapped_column(Float)

    project: Mapped[Project] = relationship(back_populates="images")

    __table_args__ = (UniqueConstraint("project_id", "stream_position"),)


class AnnotationSession(Base):
    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    holder: Mapped[str] = mapped_column(String(200))
    token_id: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | accepted | taken_over | closed
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    model_version: Mapped[int | None] = mapped_column(Integer)
    prediction_source: Mapped[str] = mapped_column(String(16))  # model | atlas | none
    dir: Mapped[str] = mapped_column(String(500))  # prediction + uncertainty files at open
    label_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    suggestion: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # When the openings are to be scored (``predictions.Opening.record``): the sources, the
    # alternative's, the atlas's registration similarity; at accept, each scored opening's mean
    # foreground Dice against the accepted label (model_dice, atlas_dice).
    opening_scores: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # At accept: the mean foreground Dice of the opening shown against the accepted label.
    opening_dice: Mapped[float | None] = mapped_column(Float)


class Round(Base):
    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... within the image
    kind: Mapped[str] = mapped_column(String(16))  # interactions | labelmap
    previous_round_id: Mapped[int | None] = mapped_column(Integer)  # the round it builds on
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    undone_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    undone_by: Mapped[str | None] = mapped_column(String(200))
    model_version: Mapped[int | None] = mapped_column(Integer)
    prediction_source: Mapped[str] = mapped_column(String(16))
    dir: Mapped[str] = mapped_column(String(500))
    label_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    suggestion: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    effort: Mapped[dict[str, int]] = mapped_column(JSON)
    planes: Mapped[list[list[int]]] = mapped_column(JSON)  # cumulative [axis, index] annotated
    compute_seconds: Mapped[float] = mapped_column(Float)
    model_weight: Mapped[float | None] = mapped_column(Float)  # the model's weight in the fusion
    # The client's Idempotency-Key of the request that made the round (a retry gets this round).
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    dice: Mapped[dict[str, float] | None] = mapped_column(JSON)  # against the accepted label


Index("ix_rounds_session_idempotency_key", Round.session_id, Round.idempotency_key, unique=True)


class TrainingJob(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int | None] = mapped_column(Integer, index=True)
    round_id: Mapped[int | None] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))  # round | accept | train | consolidate
    executor_id: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    base_version: Mapped[int | None] = mapped_column(Integer)
    result_version: Mapped[int | None] = mapped_column(Integer)
    promoted: Mapped[bool | None] = mapped_column(Boolean)
    message: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)  # learner.jobs.TrainJob.to_dict()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """Who did what when. Ids are plain integers so the trail outlives deleted images."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    token_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(32))
    project_id: Mapped[int | None] = mapped_column(Integer, index=True)
    image_id: Mapped[int | None] = mapped_column(Integer, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
