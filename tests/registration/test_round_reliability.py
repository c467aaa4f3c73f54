"""The model's weight in a round is judged on the whole drawn planes, not on the corrective
strokes alone (registration.round.compute_round)."""

from __future__ import annotations

import numpy as np

from registration.fusion import model_reliability
from registration.io.volume import UNLABELLED
from registration.labels import one_hot
from registration.round import compute_round

SHAPE = (12, 48, 40)  # non-cubic (z, y, x)
PLANE = 6


def disc_volume() -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    radius = 9 + 0.3 * z  # the structure widens along z
    truth = (((y - 24) ** 2 + (x - 20) ** 2) < radius**2).astype(np.int64)
    rng = np.random.default_rng(0)
    image = (truth + rng.normal(0.0, 0.05, SHAPE)).astype(np.float32)
    return image, truth


def test_corrective_strokes_on_a_models_only_errors_keep_it_trusted():
    image, truth = disc_volume()
    answer = truth.copy()
    answer[PLANE, 24:34, 22:30] = 0  # a missed part of the structure
    answer[PLANE, 2:6, 2:10] = 1  # a false blob in the background
    model = 0.9 * one_hot(answer, 2) + 0.05  # confident, right everywhere else
    strokes = np.full(SHAPE, UNLABELLED, dtype=np.uint8)
    strokes[PLANE, 29, 23:29] = 1  # a person fixes only what is wrong
    strokes[PLANE, 4, 3:9] = 0
    # The strokes alone: the model is wrong on every stroke voxel.
    assert model_reliability(model, strokes) == 0.0

    result = compute_round(image, (1.0, 1.0, 1.0), strokes, [(0, PLANE)], model, 2,
                           previous_segmentation=answer.astype(np.uint8))
    assert result.model_weight > 0.5
    dice = {}
    for name, labels in (("fused", result.segmentation), ("proxy", result.proxy_labels)):
        far = np.r_[0:3, 10:12]  # slices far from the drawn one
        both = np.logical_and(labels[far] == 1, truth[far] == 1).sum()
        dice[name] = 2 * both / ((labels[far] == 1).sum() + (truth[far] == 1).sum())
    assert dice["fused"] >= dice["proxy"] and dice["fused"] > 0.95, dice
