"""A small annotation stream driven through the real API (typed client), for the dashboard tests.

Synthetic volumes (``registration.synthetic``) with known labels:
- one image held out for validation, annotated with its full label and accepted;
- ``annotated`` images, each with two rounds (labels on the middle slice, then on three
  slices) and accepted: the job of each accept makes a promoted version (rounds train
  nothing until then, which keeps the stream short);
- one image whose only round labels everything background, with training after rounds
  switched on: the model trained on it forgets the structure, so the promotion gate
  (validation Dice) rejects its version;
- one image nobody opened.
Every version is gated against the validation image, so every version has a validation Dice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.client import ScribbleflowClient
from registration.synthetic import synthetic_volume
from registration.volume import UNLABELLED, Volume, write_volume_atomic

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
    rejected_image: int  # the image whose job's version the gate rejects
    new_image: int


def _write(folder: Path, name: str, array: np.ndarray) -> Path:
    return write_volume_atomic(Volume(array, SPACING_XYZ), folder / f"{name}.nii.gz")


def _labelmap_round(client: ScribbleflowClient, folder: Path, session_id: int, name: str, labelmap: np.ndarray):
    return client.submit_labelmap(session_id, _write(folder, name, labelmap.astype(np.uint8)))


def build_stream(
    client: ScribbleflowClient, folder: Path, *, annotated: int = 1, name: str = "demo",
    job_timeout: float = JOB_TIMEOUT_SECONDS,
) -> Stream:
    folder.mkdir(parents=True, exist_ok=True)
    project = client.create_project(name, LABELS, learning=LEARNING)
    cases = [synthetic_volume(SHAPE_ZYX, num_classes=len(LABELS) + 1, seed=seed, extent=EXTENT) for seed in range(annotated + 3)]
    ids = [client.upload_image(project.id, _write(folder, f"case{k}", case.image)).id for k, case in enumerate(cases)]
    validation, *good, bad, new = ids

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

    client.update_learning(project.id, train_on_rounds=True)
    session = client.open_session(bad)
    _labelmap_round(client, folder, session.id, "all-background", np.zeros(SHAPE_ZYX, dtype=np.uint8))
    client.wait_for_jobs(project.id, timeout=job_timeout, poll=0.5)
    return Stream(project_id=project.id, validation_image=validation, accepted_images=[validation, *good],
                  rejected_image=bad, new_image=new)
