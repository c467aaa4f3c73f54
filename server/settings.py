"""The one settings object of the server, read once at start-up from ``SCRIBBLEFLOW_*``.

Nothing else in the code base reads the environment: the settings are passed down
(``create_app(settings)``, services, executors). Every field can be set with the
environment variable ``SCRIBBLEFLOW_<FIELD NAME IN CAPITALS>``, e.g.
``SCRIBBLEFLOW_DATA_DIR=/srv/scribbleflow``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Seconds embedded training may wait, in all, for requests in flight before it trains on
#: regardless (``server.context.ThreadPolicy``). 30 covers a burst of eight annotators'
#: rounds on two cores (8–11 s); with 10 training resumed in the middle of it: round latency
#: p95 4.02 s against 2.96 s (docs/benchmarks.md, "Eight annotators at once: where a round's
#: time goes"). Under requests that never stop, an accept job may now wait up to 30 s.
TRAINING_PAUSE_SECONDS = 30.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCRIBBLEFLOW_", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Volumes, masks, checkpoints and the SQLite file.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file scribbleflow.db inside data_dir."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    # Distributed mode (issue 13): with a broker, training jobs go to Celery workers
    # (`scribbleflow worker`, which reads the same two variables) instead of the embedded executor.
    broker_url: str | None = Field(None, description="Redis URL of the Celery broker; unset: embedded executor.")
    queue_prefix: str = Field("", description="Prefix of the worker queue names (several sites on one Redis).")

    max_upload_mb: float = Field(1024.0, gt=0, description="Largest accepted request body.")
    lease_seconds: int = Field(900, gt=0, description="An annotation session's lease on its image.")
    compute_threads: int = Field(2, ge=1, description="Threads for predictions and propagation.")
    # The thread policy (server.context.ThreadPolicy): training and interactive requests share the CPU.
    training_threads: int | None = Field(
        None, ge=1, description="Torch threads of a training job when no request is computing (default: half the CPUs)."
    )
    training_threads_during_rounds: int = Field(
        1, ge=1, description="Torch threads of a training job while a round, an opening or an accept computes."
    )
    training_pause_seconds: float = Field(
        TRAINING_PAUSE_SECONDS, ge=0, description="Budget of the waits of embedded training for the requests in flight, shared by all "
                    "jobs of the process (seconds; refills at one second per second; 0: no waits)."
    )
    prediction_cache_mb: float = Field(
        512.0, gt=0, description="Memory for cached model predictions (the rounds of an image reuse them)."
    )
    click_radius: float = Field(2.0, ge=0, description="In-plane radius (voxels) painted by a click.")
    stream_uncertainty_max_images: int = Field(
        16, ge=1, description="Images scored per `next` request when ordering by uncertainty."
    )

    # Defaults of a new project's learning settings (an admin may change them per project;
    # the remaining online-learning knobs take learner.online.OnlineSettings' defaults).
    # Upper bounds: learner.online.ONLINE_UPPER_BOUNDS (tests/server/api/test_bad_input.py checks they match).
    model_size: int = Field(128, ge=16, le=1024, description="Slices are resized to size x size (multiple of 16).")
    model_channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    # Equal to learner.online.DEFAULT_ONLINE_STEPS and OnlineSettings().replay_capacity (tests/test_online.py
    # checks); chosen with learner/bench/online_stream.py (docs/benchmarks.md, "Online learning along a stream").
    online_steps: int = Field(200, ge=1, description="Optimiser steps per online training job.")
    # Equal to learner.online.DEFAULT_CONSOLIDATION_STEPS (tests/learner/test_online.py checks); for new
    # projects (projects stored before the setting existed get the default, as for online settings).
    consolidation_steps: int = Field(
        200, ge=0, le=100_000,
        description="Optimiser steps on the replay buffer alone after each accepted image (0: none).",
    )
    # Equal to learner.online.DEFAULT_CONSOLIDATION_JOBS (tests/learner/test_online.py checks).
    consolidation_jobs: int = Field(
        2, ge=1, le=100, description="Consolidation jobs (of consolidation_steps each) after each accepted image."
    )
    promotion_tolerance: float = Field(0.02, ge=0, description="Allowed validation Dice drop.")
    replay_capacity: int = Field(100, ge=0, le=1000, description="Earlier images kept in the replay buffer.")
    validation_every: int = Field(
        5, ge=0, description="Every n-th uploaded image is held out for validation (0: none)."
    )
    train_on_rounds: bool = Field(True, description="Submit a training job after every round.")
    atlas_beside_model: bool = Field(False, description="Default of the project setting of that name.")
    seed: int = 0

    # MONAI Label-compatible API (server/api/monailabel) and password log-in.
    monailabel_project: str | None = Field(
        None, description="Project (name or id) that the MONAI Label API serves; default: the first project."
    )
    access_token_minutes: int = Field(
        720, ge=1, le=525_600, description="Lifetime of the bearer tokens issued by POST /auth/token."
    )

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'scribbleflow.db'}"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
