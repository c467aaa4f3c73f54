"""Models of every project: their registries, the serving version, and predictions
(model import and the API's view of versions: ``server.services.models``).

Each project's versions live in a ``learner.registry.ModelRegistry`` under
``DATA_DIR/projects/<id>/models``. Loaded models stay in memory (the registry's cache),
and the latest volume predictions are kept too (up to ``prediction_cache_bytes``), so
the rounds of one image do not recompute them: a round uses the prediction of the version
its session opened with, which stays cached while newer versions are trained. Predictions take one of the ``compute_slots`` so that at most
``Settings.compute_threads`` heavy computations run at once; callers run in worker
threads, never on the event loop.
"""

from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from learner.inference import predict_volume
from learner.jobs import registry_at
from learner.networks import NetworkConfig
from learner.registry import CheckpointMismatch, ModelRegistry, VersionRecord
from server.errors import BadInput, NotFound
from server.storage.datastore import DataStore


class ModelHub:
    def __init__(
        self,
        datastore: DataStore,
        compute_slot: Callable[[], AbstractContextManager],
        prediction_cache_bytes: int = 512 * 2**20,
    ):
        self.datastore = datastore
        self._compute_slot = compute_slot
        self._predictions: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._prediction_cache_bytes = int(prediction_cache_bytes)
        self._lock = threading.Lock()

    def registry(self, project_id: int) -> ModelRegistry:
        """The project's registry: the same object the training jobs of this process use."""
        return registry_at(self.datastore.models_dir(project_id))

    def initialise(self, project_id: int, num_classes: int, channels: list[int], seed: int):
        """Version 0 of a new project: a randomly initialised network (files only, no DB)."""
        models_dir = self.datastore.models_dir(project_id)
        if models_dir.exists():
            # Left by a project whose database row was never committed: nobody knows it.
            shutil.rmtree(models_dir)
        config = NetworkConfig(num_classes=num_classes, channels=tuple(channels))
        return self.registry(project_id).create_initial(config, seed=seed)

    def serving_version(self, project_id: int) -> int | None:
        return self.registry(project_id).serving_version()

    def has_useful_model(self, project_id: int) -> bool:
        """False while the serving model is the untrained version 0 (random weights)."""
        record = self.registry(project_id).serving_record()
        return record is not None and not record.untrained

    def validation_dice(self, project_id: int, version: int) -> float | None:
        """``VersionRecord.validation_dice`` of the version (None for the untrained version 0)."""
        return self.registry(project_id).record(version).validation_dice

    def versions(self, project_id: int) -> list[VersionRecord]:
        return self.registry(project_id).versions()

    def predict(
        self, project_id: int, image_key: object, image_zyx: np.ndarray, size: int, version: int | None = None
    ) -> tuple[int, np.ndarray]:
        """(version, probabilities float32 (C, z, y, x)) for an image (z, y, x); ``version``
        None = the serving one. The untrained version 0 gives uniform probabilities."""
        registry = self.registry(project_id)
        if version is None:
            version = registry.serving_version()
        if version is None:
            raise NotFound(f"project {project_id} has no model version")
        key = (project_id, image_key, version, size)
        with self._lock:
            cached = self._predictions.get(key)
            if cached is not None:
                self._predictions.move_to_end(key)
                return version, cached
        record = registry.record(version)
        if record.untrained:
            # Random weights know nothing: every class equally likely (the opening shows no
            # structure instead of one class everywhere, and fusion gives it weight 0).
            num_classes = int(record.network["num_classes"])
            probabilities = np.full((num_classes, *image_zyx.shape), 1.0 / num_classes, np.float32)
        else:
            with self._compute_slot():
                model, _config, _meta = registry.load(version)
                probabilities = predict_volume(model, image_zyx, size=size)
        probabilities.setflags(write=False)
        with self._lock:
            self._predictions[key] = probabilities
            # The newest one always stays, even when it alone is over the budget.
            while len(self._predictions) > 1 and (
                sum(p.nbytes for p in self._predictions.values()) > self._prediction_cache_bytes
            ):
                self._predictions.popitem(last=False)
        return version, probabilities

    def import_checkpoint(self, project_id: int, path: Path, num_classes: int):
        try:
            return self.registry(project_id).import_checkpoint(path, num_classes=num_classes, in_channels=1)
        except CheckpointMismatch as exc:
            raise BadInput(str(exc)) from None
        except FileNotFoundError:
            raise BadInput("the checkpoint upload is missing") from None
