"""Request and response models of the MONAI Label-compatible API (the shapes its clients read).

Kept apart from ``server/schemas.py`` (the ``/api/v1`` API): these follow MONAI Label's field
names, and open-ended parts (image and label info, task details) stay open dictionaries as
they are in MONAI Label.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AuthStatus(BaseModel):
    enabled: bool = Field(description="Always true: every endpoint but /auth/ and /auth/token needs a token.")
    client_id: str | None = None
    realm: str | None = None


class AccessToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")
    expires_at: datetime


class TokenUser(BaseModel):
    username: str
    email: str | None = None
    name: str | None = None
    roles: list[str]


class ModelInfo(BaseModel):
    type: str = Field(description="segmentation | scribbles | deepgrow (the viewers' tool groups)")
    labels: dict[str, int] = Field(description="Label name -> value in the result volume.")
    dimension: int
    description: str
    config: dict[str, Any]


class DatastoreStats(BaseModel):
    total: int
    completed: int = Field(description="Images with a final (accepted) label.")
    label_tags: dict[str, int]


class AppInfo(BaseModel):
    name: str
    description: str
    version: str
    labels: list[str] = Field(description="The served project's label names (background excluded).")
    models: dict[str, ModelInfo]
    trainers: dict[str, dict[str, Any]]
    strategies: dict[str, dict[str, Any]]
    scoring: dict[str, Any]
    train_stats: dict[str, dict[str, Any]]
    datastore: DatastoreStats
    scribbleflow: dict[str, Any] | None = Field(None, description="The served project (id, name, label names).")


class StoredFile(BaseModel):
    ext: str
    info: dict[str, Any]


class DatastoreObject(BaseModel):
    image: StoredFile
    labels: dict[str, StoredFile] = Field(description="Tag -> label; `final` is the accepted label.")


class DatastoreAll(BaseModel):
    name: str
    description: str
    images_dir: str
    labels_dir: str
    objects: dict[str, DatastoreObject] = Field(description="Image id -> image and labels.")


class DatalistItem(BaseModel):
    image: str = Field(description="Download path of the image (this API).")
    label: str = Field(description="Download path of its final label (this API).")


class ImageAdded(BaseModel):
    image: str = Field(description="The new image's id.")


class LabelSaved(BaseModel):
    image: str
    label: str
    tag: str
    version: int = Field(description="How many final labels the image has had (never overwritten).")
    job_id: int | None = Field(description="The online-learning job it queued (none for validation images).")


class NextSample(BaseModel):
    """The next image (every field absent when no image is left: `{}`)."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    name: str | None = None
    path: str | None = Field(None, description="Empty: the image is not on the viewer's file system.")
    url: str | None = None
    checksum: str | None = None
    ts: int | None = None


class TrainTask(BaseModel):
    id: str
    status: str = Field(description="SUBMITTED | RUNNING | DONE | ERROR | STOPPED")
    request: dict[str, Any]
    start_ts: str | None
    end_ts: str | None = None
    details: list[str]
    progress: float
    result: dict[str, Any]
    scribbleflow_job_id: int


class Empty(BaseModel):
    """`{}`"""

    model_config = ConfigDict(extra="forbid")
