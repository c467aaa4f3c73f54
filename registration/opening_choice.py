"""Which opening a new image gets once the project has a trained model: the model's prediction
or the atlas (the latest accepted image's labels carried over by registration).

Neither wins everywhere. The atlas is good when the new image resembles the atlas image (two
frames of one patient: Dice 0.65–0.86 on ACDC) and useless when it does not (two patients:
0.03–0.45), while a young model is poor and a grown one good. So each accepted image scores
both openings against its accepted label (prequentially: the label did not exist when the
choice was made), and a new image's choice compares two estimates:

- the model's: the mean of its opening Dice on the last ``RECENT_IMAGES`` scored images (the
  model changes along the stream, so the latest images speak for it); before any, the serving
  version's validation Dice, or 0 for a model nobody has measured;
- the atlas's: its opening Dice on earlier images, each weighted by how close that image's
  registration similarity was to this one's (Gaussian, ``SIMILARITY_BANDWIDTH``), together
  with a prior that expects the similarity itself (weight ``PRIOR_WEIGHT``; on the first 16
  volumes of ACDC and hippocampus train, the atlas's Dice lay between 0.33 below and 0.1 above
  its similarity, so the history corrects an optimistic prior).

The atlas serves when its estimate is higher. Once the model has beaten the atlas on each of
the last ``RETIRE_AFTER`` scored images, the atlas is no longer computed (a registration costs
0.5–5 s at open).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Scored images whose model Dice make the model's estimate.
RECENT_IMAGES = 3
#: Width of the Gaussian weight over the difference of two registration similarities.
SIMILARITY_BANDWIDTH = 0.1
#: Weight of the prior "the atlas scores its similarity", against one exactly as similar image.
PRIOR_WEIGHT = 1.0
#: The model better on this many scored images in a row: the atlas is retired.
RETIRE_AFTER = 5


@dataclass(frozen=True)
class OpeningScore:
    """One accepted image: its atlas's registration ``similarity`` (−1..1) and the mean
    foreground Dice of the model's and the atlas's openings against its accepted label."""

    similarity: float
    model_dice: float
    atlas_dice: float


def expected_model_dice(history: Sequence[OpeningScore], validation_dice: float | None) -> float:
    recent = history[-RECENT_IMAGES:]
    if recent:
        return sum(s.model_dice for s in recent) / len(recent)
    return float(validation_dice) if validation_dice is not None else 0.0


def expected_atlas_dice(history: Sequence[OpeningScore], similarity: float) -> float:
    prior = min(max(float(similarity), 0.0), 1.0)
    weights = [math.exp(-(((s.similarity - similarity) / SIMILARITY_BANDWIDTH) ** 2)) for s in history]
    total = PRIOR_WEIGHT + sum(weights)
    return (PRIOR_WEIGHT * prior + sum(w * s.atlas_dice for w, s in zip(weights, history, strict=True))) / total


def prefer_atlas(history: Sequence[OpeningScore], similarity: float, validation_dice: float | None) -> bool:
    """Whether the atlas (registration ``similarity`` to the new image) should open it rather
    than the trained model (``validation_dice`` of the serving version, None when unmeasured);
    ``history``: the project's scored images, oldest first."""
    return expected_atlas_dice(history, similarity) > expected_model_dice(history, validation_dice)


def atlas_retired(history: Sequence[OpeningScore]) -> bool:
    """True once the model has scored higher than the atlas on each of the last ``RETIRE_AFTER``
    scored images (oldest first)."""
    recent = history[-RETIRE_AFTER:]
    return len(recent) == RETIRE_AFTER and all(s.model_dice > s.atlas_dice for s in recent)
