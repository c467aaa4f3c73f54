"""Which opening a new image gets once the project has a trained model: the model's prediction
or the atlas (the latest accepted image's labels carried over by registration). Used when the
project's learning setting ``atlas_beside_model`` is on (off by default: docs/benchmarks.md).

Neither wins everywhere. The atlas is good when the new image resembles the atlas image (two
frames of one patient: Dice 0.65–0.86 on ACDC) and useless when it does not (two patients:
0.00–0.45), while a young model is poor and a grown one good. So each image's first accept
scores the openings computed for it against its accepted label, and a new image's choice
compares two estimates, each weighting earlier images by how close their registration
similarity was to this one's (Gaussian, ``SIMILARITY_BANDWIDTH``):

- the model's: its opening Dice on the last ``RECENT_PAIRS`` images with a similarity (the
  model changes along the stream, so only recent images speak for it), with a prior of its
  mean Dice on the last ``RECENT_IMAGES`` scored images (before any, the serving version's
  validation Dice, or 0 for a model nobody has measured). The model has trained on the atlas
  image, so an image like it is easy for the model too: on ACDC's second frames of a patient
  the model opened at 0.77–0.88 where the atlas gave 0.67–0.84;
- the atlas's: its opening Dice on earlier images (from the project's first atlas opening on,
  before any model was trained too), with a prior of the similarity less ``PRIOR_OFFSET``.

Each prior weighs ``PRIOR_WEIGHT``, against 1 for an earlier image exactly as similar. On the first 16 volumes of ACDC
  and hippocampus train (``clients.bench_atlas --limit 16``) the atlas's Dice lay 0.32 below to
  0.16 above its similarity, 0.07 below on average, and 0.20 below for two frames of one patient.

The atlas serves when its estimate is higher by ``ATLAS_MARGIN``. The accepted label grows from
the opening that was shown, so that one scores high: on ACDC the shown atlas 0.04–0.08 above
its Dice against the truth, more than the margin (a known bias of these scores). Once the model has beaten the atlas
on each of the last ``RETIRE_AFTER`` images with both scores, each time by more than the best
Dice the atlas has ever scored, the atlas is no longer computed (a registration costs 0.5–5 s
at open).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Scored images whose mean model Dice is the prior of the model's estimate.
RECENT_IMAGES = 3
#: The latest images with a similarity that the model's estimate weighs.
RECENT_PAIRS = 6
#: Width of the Gaussian weight over the difference of two registration similarities.
SIMILARITY_BANDWIDTH = 0.1
#: The atlas's prior expects it to score its similarity less this much.
PRIOR_OFFSET = 0.1
#: Weight of either prior, against 1 for an earlier image exactly as similar.
PRIOR_WEIGHT = 0.5
#: The atlas serves only when its estimate beats the model's by this much.
ATLAS_MARGIN = 0.02
#: The model better on this many images in a row (and than the atlas's best): the atlas retires.
RETIRE_AFTER = 5


@dataclass(frozen=True)
class OpeningScore:
    """One accepted image: its atlas's registration ``similarity`` (−1..1) and the mean
    foreground Dice against its accepted label of the model's and the atlas's openings; None
    for what was not computed (no atlas yet, an untrained model, a retired atlas)."""

    similarity: float | None
    model_dice: float | None
    atlas_dice: float | None

    @property
    def atlas_scored(self) -> bool:
        return self.similarity is not None and self.atlas_dice is not None

    @property
    def both_scored(self) -> bool:
        return self.atlas_scored and self.model_dice is not None


def _kernel_estimate(prior: float, pairs: Sequence[tuple[float, float]], similarity: float) -> float:
    """``prior`` (weight ``PRIOR_WEIGHT``) and each (similarity, Dice) pair weighted by how
    close its similarity is to ``similarity``."""
    weights = [math.exp(-(((s - similarity) / SIMILARITY_BANDWIDTH) ** 2)) for s, _ in pairs]
    weighted = sum(w * dice for w, (_, dice) in zip(weights, pairs, strict=True))
    return (PRIOR_WEIGHT * prior + weighted) / (PRIOR_WEIGHT + sum(weights))


def expected_model_dice(
    history: Sequence[OpeningScore], similarity: float, validation_dice: float | None
) -> float:
    recent = [s.model_dice for s in history if s.model_dice is not None][-RECENT_IMAGES:]
    if recent:
        prior = sum(recent) / len(recent)
    else:
        prior = float(validation_dice) if validation_dice is not None else 0.0
    pairs = [(s.similarity, s.model_dice) for s in history if s.model_dice is not None and s.similarity is not None]
    return _kernel_estimate(prior, pairs[-RECENT_PAIRS:], similarity)


def expected_atlas_dice(history: Sequence[OpeningScore], similarity: float) -> float:
    prior = min(max(float(similarity) - PRIOR_OFFSET, 0.0), 1.0)
    return _kernel_estimate(prior, [(s.similarity, s.atlas_dice) for s in history if s.atlas_scored], similarity)


def prefer_atlas(history: Sequence[OpeningScore], similarity: float, validation_dice: float | None) -> bool:
    """Whether the atlas (registration ``similarity`` to the new image) should open it rather
    than the trained model (``validation_dice`` of the serving version, None when unmeasured);
    ``history``: the project's scored images, oldest first."""
    atlas = expected_atlas_dice(history, similarity)
    return atlas > expected_model_dice(history, similarity, validation_dice) + ATLAS_MARGIN


def atlas_retired(history: Sequence[OpeningScore]) -> bool:
    """True once the model has scored higher than the atlas on each of the last ``RETIRE_AFTER``
    images with both scores, and higher each time than the best the atlas ever scored."""
    both = [s for s in history if s.both_scored][-RETIRE_AFTER:]
    if len(both) < RETIRE_AFTER:
        return False
    best_atlas = max(s.atlas_dice for s in history if s.atlas_scored)
    return all(s.model_dice > max(s.atlas_dice, best_atlas) for s in both)
