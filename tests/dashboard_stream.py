"""A small annotation stream driven through the real API (typed client), for the dashboard tests.

Synthetic volumes (``registration.synthetic``) with known labels:
- one image held out for validation, annotated with its full label and accepted;
- ``annotated`` images, each with two rounds (labels on the middle slice, then on three
  slices) and accepted: the job of each accept trains a new version, which the promotion
  gate measures on the validation image (rounds train nothing here: a short stream);
- one image with one round, left in progress, and one image nobody opened;
- then a candidate that predicts background everywhere goes through the project's real
  model registry and promotion gate (``reject_blank_candidate``), which rejects it: a
  rejected version that does not depend on how well the learner learns.
Every version is gated against the validation image, so every version has a validation Dice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clients.client import ScribbleflowClient
from learner.jobs import load_array, registry_at
from learner.registry import ValidationCase
from registration.io.volume import UNLABELLED, Volume, write_volume_atomic
from registration.synthetic import synthetic_volume

LABELS = ["ring", "core"]
SHAPE_ZYX = (8, 32, 32)
SPACING_XYZ = (1.25, 1.25, 3.0)
EXTENT = 0.9  # the structure is on 90% of the slices
LEARNING = {
    "steps": 60,
    "channels": [8, 16, 32],
    "validation_every": 0,
    "train_on_rounds": False,
    "online": {"size": 32, "batch_size": 4, "learning_rate": 0.01, "promotion_tolerance": 0.02},
}
JOB_TIMEOUT_SECONDS = 600  # a bound, for a machine busy with other work


@dataclass
class Stream:
    project_id: int
    validation_image: int
    accepted_images: list[int]  # validation image included
    in_progress_image: int
    new_image: int
    rejected_version: int


def _write(folder: Path, name: str, array: np.ndarray) -> Path:
    return write_volume_atomic(Volume(array, SPACING_XYZ), folder / f"{name}.nii.gz")


def _labelmap_round(client: ScribbleflowClient, folder: Path, session_id: int, name: str, labelmap: np.ndarray):
    return client.submit_labelmap(session_id, _write(folder, name, labelmap.astype(np.uint8)))


def build_stream(
    client: ScribbleflowClient,
    folder: Path,
    models_dir: Callable[[int], Path],
    *,
    annotated: int = 1,
    name: str = "demo",
    job_timeout: float = JOB_TIMEOUT_SECONDS,
) -> Stream:
    """``models_dir(project_id)``: the folder of the project's model registry on the server."""
    folder.mkdir(parents=True, exist_ok=True)
    project = client.create_project(name, LABELS, learning=LEARNING)
    cases = [synthetic_volume(SHAPE_ZYX, num_classes=len(LABELS) + 1, seed=seed, extent=EXTENT)
             for seed in range(annotated + 3)]
    ids = [client.upload_image(project.id, _write(folder, f"case{k}", case.image)).id for k, case in enumerate(cases)]
    validation, *good, in_progress, new = ids

    client.set_validation(validation, True)
    session = client.open_session(validation)
    _labelmap_round(client, folder, session.id, "validation-label", cases[0].labels)
    client.accept(session.id)

    middle = SHAPE_ZYX[0] // 2
    for k, image_id in enumerate(good, start=1):
        truth = cases[k].labels
        session = client.open_session(image_id)
        for number, slices in enumerate(([middle], [middle - 2, middle, middle + 2]), start=1):
            labelmap = np.full(SHAPE_ZYX, UNLABELLED, dtype=np.uint8)
            labelmap[slices] = truth[slices]
            _labelmap_round(client, folder, session.id, f"case{k}-round{number}", labelmap)
        client.accept(session.id)

    session = client.open_session(in_progress)
    labelmap = np.full(SHAPE_ZYX, UNLABELLED, dtype=np.uint8)
    labelmap[middle] = cases[-2].labels[middle]
    _labelmap_round(client, folder, session.id, "in-progress", labelmap)
    client.wait_for_jobs(project.id, timeout=job_timeout, poll=0.5)

    rejected = reject_blank_candidate(client, folder, models_dir(project.id), validation)
    return Stream(project_id=project.id, validation_image=validation, accepted_images=[validation, *good],
                  in_progress_image=in_progress, new_image=new, rejected_version=rejected)


def reject_blank_candidate(client: ScribbleflowClient, folder: Path, models_dir: Path, validation_image: int) -> int:
    """A copy of the serving model whose output layer says background everywhere (validation
    Dice 0), stored as a candidate and gated like a training job's; returns its version."""
    registry = registry_at(models_dir)
    serving = registry.serving_version()
    model, config, _ = registry.load(serving, fresh=True)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([1.0] + [0.0] * len(LABELS)))
    candidate = registry.add_candidate(
        model, config, parent=serving, source={"kind": "test", "note": "predicts background everywhere"},
        metadata={"size": LEARNING["online"]["size"]},
    )
    # The validation case as the server's jobs read it (same name, files and size), so the
    # serving version's stored Dice is reused.
    case = ValidationCase(
        name=str(validation_image),
        image=load_array(client.download_image(validation_image, folder / "validation-image.nii.gz")),
        label=load_array(client.download_label(validation_image, folder / "validation-label.nii.gz")).astype(np.int64),
    )
    decision = registry.promote_or_reject(
        candidate.version, [case], LEARNING["online"]["promotion_tolerance"], size=LEARNING["online"]["size"]
    )
    if decision.promoted:
        raise AssertionError(f"the gate promoted a model that predicts background only: {decision}")
    return candidate.version
