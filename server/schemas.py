"""Request and response models of the REST API: its single source of truth.

Points arrive either as SimpleITK voxel indices (i, j, k) = (x, y, z) (``space="index"``)
or as physical LPS millimetres (``space="physical"``); the service layer converts them
once to array indices (z, y, x). Label values index the project's ``label_names``
(0 = background). In label volumes, ``registration.io.volume.UNLABELLED`` (255) marks a
voxel without a label.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from learner.online import DEFAULT_CONSOLIDATION_JOBS, DEFAULT_CONSOLIDATION_STEPS

Point3 = tuple[float, float, float]
MAX_CHANNELS = 512  # widest UNet level a project may ask for
PointSpace = Literal["index", "physical"]

#: Where every route of the REST API lives (``GET /health`` and ``/metrics`` also at the root).
API_PREFIX = "/api/v1"


class Message(BaseModel):
    detail: str
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    database: str


# --- tokens -------------------------------------------------------------------------------


class TokenCreate(BaseModel):
    role: Literal["annotator", "admin"]
    owner: str = Field(min_length=1, max_length=200)


class TokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    role: str
    owner: str
    created_at: datetime
    created_by: str | None = None
    revoked_at: datetime | None = None


class TokenCreated(TokenOut):
    token: str = Field(description="The token itself; shown only once.")


# --- projects -----------------------------------------------------------------------------


class LearningSettings(BaseModel):
    """How a project's model learns online. Defaults come from the server settings.

    ``online`` holds ``learner.online.OnlineSettings`` fields (size, batch_size,
    learning_rate, replay_capacity, promotion_tolerance, ...): that dataclass is their
    source of truth and validates them.
    """

    steps: int = Field(ge=1, le=100_000, description="Optimiser steps per training job.")
    # Projects stored before consolidation existed read the default.
    consolidation_steps: int = Field(
        DEFAULT_CONSOLIDATION_STEPS, ge=0, le=100_000,
        description="Optimiser steps of the consolidation job after each accepted image: the model trains on "
                    "the replay buffer alone (every accepted image alike) while no image waits; 0: none.",
    )
    consolidation_jobs: int = Field(
        DEFAULT_CONSOLIDATION_JOBS, ge=1, le=100,
        description="Consolidation jobs after each accepted image, one after the other (each queued when the "
                    "one before has succeeded, each through the promotion gate).",
    )
    channels: list[int] = Field(min_length=2, max_length=7, description="UNet widths (fixed at creation).")
    validation_every: int = Field(
        ge=0, description="Every n-th uploaded image is held out for validation (0: none)."
    )
    train_on_rounds: bool = Field(description="Train after every round (not only on accept).")
    # Projects stored before this setting existed read the default.
    atlas_beside_model: bool = Field(
        False, description="Once a model is trained, also carry the latest accepted image onto each new one "
        "and open with whichever is expected to score higher (registration.opening_choice); one registration "
        "more per open. Off by default: in the benchmarks it gave better openings but no less effort.")
    online: dict[str, Any] = Field(description="learner.online.OnlineSettings fields.")


class LearningSettingsUpdate(BaseModel):
    """A partial change of a project's learning settings; ``online`` is merged key by key."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1, le=100_000)
    consolidation_steps: int | None = Field(None, ge=0, le=100_000)
    consolidation_jobs: int | None = Field(None, ge=1, le=100)
    validation_every: int | None = Field(None, ge=0)
    train_on_rounds: bool | None = None
    atlas_beside_model: bool | None = None
    online: dict[str, Any] | None = None


class ProjectCreateLearning(LearningSettingsUpdate):
    # Bounded: a network of huge widths would exhaust the server's memory at creation.
    channels: list[Annotated[int, Field(ge=1, le=MAX_CHANNELS)]] | None = Field(None, min_length=2, max_length=7)


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    labels: list[str] = Field(
        min_length=1, max_length=254, description="Foreground label names; value 0 is background."
    )
    description: str = ""
    learning: ProjectCreateLearning | None = None

    @field_validator("labels")
    @classmethod
    def _distinct_names(cls, names: list[str]) -> list[str]:
        cleaned = [n.strip() for n in names]
        if any(not n for n in cleaned):
            raise ValueError("label names must not be empty")
        if len(set(cleaned)) != len(cleaned) or "background" in cleaned:
            raise ValueError("label names must be distinct and not 'background'")
        return cleaned


class ProjectOut(BaseModel):
    id: int
    name: str
    description: str
    label_names: list[str] = Field(description="Index = label value; 0 is background.")
    learning: LearningSettings
    created_at: datetime
    created_by: str
    image_count: int
    serving_version: int | None


# --- images -------------------------------------------------------------------------------


class ImageOut(BaseModel):
    id: int
    project_id: int
    name: str
    stream_position: int
    status: Literal["new", "in_progress", "accepted"]
    is_validation: bool
    source_format: str
    pixel_type: str
    shape_zyx: list[int]
    size_ijk: list[int] = Field(description="SimpleITK size (x, y, z).")
    spacing_xyz: list[float]
    origin_xyz: list[float]
    direction: list[float]
    created_at: datetime
    created_by: str
    accepted_at: datetime | None
    accepted_by: str | None
    links: dict[str, str]


class ImageUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    is_validation: bool | None = None


class StreamNext(BaseModel):
    image: ImageOut | None
    order: Literal["stream", "uncertainty"]
    remaining: int = Field(description="Images of the project not accepted yet.")


# --- sessions and rounds ------------------------------------------------------------------


class Suggestion(BaseModel):
    """Where to look next: the worst residual region. Indices in (z, y, x) and (i, j, k)."""

    axis: int = Field(description="Array axis of the suggested slice (0 = z).")
    slice: int
    bbox_zyx: list[int] = Field(description="(z0, y0, x0, z1, y1, x1), end exclusive.")
    centroid_zyx: list[float]
    centroid_ijk: list[float]
    centroid_lps: list[float]
    score: float


class Stroke(BaseModel):
    model_config = ConfigDict(extra="forbid")

    points: list[Point3] = Field(description="Polyline vertices; consecutive points are joined.")
    label: int = Field(description="Label value (index into label_names).")
    radius: float = Field(1.0, ge=0, le=100, description="Brush radius in voxels, in the stroke's plane.")
    space: PointSpace = "index"

    @field_validator("points")
    @classmethod
    def _not_empty(cls, points: list[Point3]) -> list[Point3]:
        if not points:
            raise ValueError("empty stroke: a stroke needs at least one point")
        return points


class Click(BaseModel):
    model_config = ConfigDict(extra="forbid")

    point: Point3
    label: int
    positive: bool = Field(True, description="False: this voxel is NOT `label`.")
    space: PointSpace = "index"


class RoundCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scribbles: list[Stroke] = Field(default_factory=list, max_length=10_000)
    clicks: list[Click] = Field(default_factory=list, max_length=10_000)


class Effort(BaseModel):
    voxels: int = 0
    strokes: int = 0
    clicks: int = 0
    slices_touched: int = 0


class RoundOut(BaseModel):
    id: int
    session_id: int
    image_id: int
    number: int
    kind: Literal["interactions", "labelmap"]
    previous_round_id: int | None
    created_at: datetime
    created_by: str
    undone: bool
    model_version: int | None
    prediction_source: str
    label_counts: dict[str, int] = Field(description="Voxels per label name in the segmentation.")
    suggestion: Suggestion | None
    effort: Effort = Field(description="This round's own input.")
    compute_seconds: float = Field(description="Server time of the round until its answer was computed: waits "
                                   "for the image and a compute slot, reading, propagation, fusion.")
    model_weight: float | None = Field(
        None, description="The model's weight in this round's fusion, 0..1 (0: the registration proxy stands)."
    )
    job_id: int | None = None
    links: dict[str, str]


class SessionOpen(BaseModel):
    model_config = ConfigDict(extra="forbid")

    takeover: bool = Field(False, description="Take the image over from another annotator's lease.")


#: What ``SessionOut.opening_scores`` shows of a session's scored openings.
OPENING_SCORE_KEYS = ("similarity", "model_dice", "atlas_dice")


class SessionOut(BaseModel):
    id: int
    image_id: int
    project_id: int
    holder: str
    state: str
    opened_at: datetime
    lease_expires_at: datetime
    model_version: int | None
    prediction_source: str = Field(description="model | atlas | none")
    opening_scores: dict[str, float] | None = Field(
        None, description="When the image's openings are scored (its first session): the atlas's "
        "registration similarity (-1..1) when the atlas was computed and, once accepted, the mean "
        "foreground Dice against the accepted label of each opening computed (model_dice, atlas_dice).")
    opening_dice: float | None = Field(
        None, description="Once accepted: the mean foreground Dice of the opening shown against the "
        "accepted label.")
    label_counts: dict[str, int]
    suggestion: Suggestion | None
    current_round: RoundOut | None
    links: dict[str, str]


class AcceptOut(BaseModel):
    session: SessionOut
    image: ImageOut
    job_id: int | None


# --- models, jobs, curves -----------------------------------------------------------------


class ModelVersionOut(BaseModel):
    version: int
    created_at: datetime | None = None
    serving: bool
    promoted: bool | None = None
    source: str = ""
    parent: int | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)


class ModelsOut(BaseModel):
    serving_version: int | None
    versions: list[ModelVersionOut]


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    image_id: int | None
    round_id: int | None
    trigger: str
    state: str
    progress: float
    base_version: int | None
    result_version: int | None
    promoted: bool | None
    message: str
    created_at: datetime
    created_by: str
    started_at: datetime | None
    finished_at: datetime | None


class ImageCurve(BaseModel):
    image_id: int
    name: str
    stream_position: int
    status: str
    rounds: int
    effort: Effort
    dice_per_round: list[dict[str, float] | None]
    accepted_at: datetime | None


class LearningCurve(BaseModel):
    versions: list[ModelVersionOut]
    images: list[ImageCurve]
    jobs: list[JobOut]
    annotation_to_model_seconds: list[float] = Field(
        description="Per finished job: from its round (or accept) to its new model version."
    )
    queue_depth: int


class AuditOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    action: str
    project_id: int | None
    image_id: int | None
    details: dict[str, Any]


# --- admin dashboard ----------------------------------------------------------------------


class DashboardJob(JobOut):
    loss: float | None = Field(None, description="Final training loss of the job's model version.")
    run_seconds: float | None = Field(None, description="From the job's start to its end.")
    annotation_to_model_seconds: float | None = Field(
        None, description="From its round (or accept) to its new model version; succeeded jobs only."
    )


class DashboardImage(ImageCurve):
    is_validation: bool
    dice_mean_per_round: list[float | None] = Field(
        description="Per active round: mean Dice over the labels against the accepted label."
    )
    label_url: str | None = Field(None, description="Download of the accepted label (needs the token).")
    opening_source: str | None = Field(
        None, description="What the image's first accepted session opened with: model | atlas.")
    opening_dice: float | None = Field(
        None, description="Mean foreground Dice of that opening against the accepted label: how good the "
        "first answer was before anyone drew.")
    alternative_dice: float | None = Field(
        None, description="The same for the opening not shown, when the model's and the atlas's were "
        "both computed.")


class RoundLatency(BaseModel):
    window_seconds: int
    rounds: int = Field(description="Rounds stored within the window.")
    p50_seconds: float | None
    p95_seconds: float | None


class Dashboard(BaseModel):
    """Everything the /admin page shows of one project, for one refresh."""

    project_id: int
    project_name: str
    generated_at: datetime
    serving_version: int | None
    serving_dice: float | None = Field(description="Validation Dice of the serving version, if measured.")
    images_total: int
    images_accepted: int
    queue_depth: int
    job_states: dict[str, int] = Field(description="Number of jobs per state.")
    round_latency: RoundLatency = Field(description="Percentiles of the rounds' compute_seconds (server time until the answer, waits included).")
    versions: list[ModelVersionOut]
    jobs: list[DashboardJob]
    images: list[DashboardImage]
