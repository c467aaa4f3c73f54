"""The computation of a round and of a session's opening (pure: arrays in, arrays out).

Data flow of a round (ARCHITECTURE.md): cumulative user seeds on annotated planes
 -> ``registration.corrections`` (the previous answer kept where the user did not correct it)
 -> ``registration.dense2d.densify_slice`` per plane, guided by a trusted model's probabilities
 -> ``registration.propagate.propagate_to_volume`` (3D proxy + confidence)
 -> ``registration.fusion.model_reliability`` (the model's weight: its agreement with the
    seeds and the serving version's validation Dice; once the planes are dense, with them)
 -> ``registration.fusion.fuse_with_model`` with the model's probabilities and that weight
 -> ``registration.residual`` (the error estimate, returned as the residual map, and the
    next suggestion on a plane not drawn yet).
All volumes are (z, y, x) on the image's grid; probabilities (C, z, y, x).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from registration.atlas import AtlasProxy, propagate_from_atlas
from registration.corrections import seeds_with_previous_answer
from registration.dense2d import densify_slice
from registration.fusion import fuse_with_model, model_reliability, normalized_entropy
from registration.io.volume import UNLABELLED, Volume
from registration.memo import ArrayMemo, content_digest
from registration.propagate import SliceAnnotation, propagate_to_volume
from registration.residual import Suggestion, round_residual
from registration.residual import opening_suggestion as suggest_opening
from registration.slice_propagation import PropagationSettings

#: Propagation settings of interactive rounds: the defaults, with the registration fields of
#: slice pairs reused from the session's earlier rounds, and two changes to the fade beyond
#: the outermost drawn plane, which the planes of a round (where the answer was worst, not
#: spaced across the structure) made shrink from one round to the next:
#: - no annotator's-gap limit (``gap_limit_from``): a plane drawn between two drawn ones
#:   shrank the mean gap and cut the structure off a few slices beyond them;
#: - the area trend from planes at least 3 apart (``trend_min_gap``): a small correction on
#:   a plane next to the outermost one read as a steep shrink.
#: (Hippocampus val, 10 volumes x 8 rounds, no model: rounds that lowered Dice by > 0.005
#: 12 -> 2, the largest drop 0.257 -> 0.007, final Dice 0.759 -> 0.775; noisy model: 11 -> 8,
#: 0.698 -> 0.729. ACDC val, 10 x 6 rounds: no model 2 -> 3 drops, 0.845 -> 0.844; noisy
#: model 4 -> 1, 0.850 -> 0.853.)
#: The ROI lies on a grid of a sixteenth of the plane (``roi_grid_fraction``), so that a round
#: whose drawn structures reach a few pixels further reuses the session's fields (ACDC val,
#: 20 volumes x 10 rounds, fields registered anew 1642 -> 1239 with a fair model, 1823 -> 1336
#: with none; final Dice 0.923 -> 0.924 and 0.907 -> 0.908; hippocampus val, 10 x 8 rounds,
#: fair model: 0.829 -> 0.831).
ROUND_PROPAGATION = PropagationSettings(
    memoise_fields=True, gap_limit_from=math.inf, trend_min_gap=3, roi_grid_fraction=1 / 16
)


@dataclass
class RoundComputation:
    proxy_labels: np.ndarray  # uint8 (z, y, x)
    proxy_probabilities: np.ndarray  # float32 (C, z, y, x)
    confidence: np.ndarray  # float32 (z, y, x) in [0, 1]
    segmentation: np.ndarray  # uint8 (z, y, x): the fused labels
    residual: np.ndarray  # float32 (z, y, x) in [0, 1]: where the segmentation is probably wrong
    suggestion: Suggestion | None
    model_weight: float  # the model's weight in the fusion, in [0, 1] (0: the proxy stands)


def compute_round(
    image_zyx: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    seeds: np.ndarray,
    planes: Iterable[tuple[int, int]],
    model_probabilities: np.ndarray,
    num_classes: int,
    validation_dice: float | None = None,
    previous_segmentation: np.ndarray | None = None,
    phase_seconds: dict[str, float] | None = None,
) -> RoundComputation:
    """``validation_dice``: the serving version's validation Dice when the project has one.
    ``previous_segmentation``: the answer the user was shown (uint8 (z, y, x)), if it is to
    be kept where they did not correct it (``registration.corrections``). ``phase_seconds``:
    when given, each phase's wall time (s) is added to it under its name in ``ROUND_PHASES``."""
    image = np.asarray(image_zyx, dtype=np.float32)
    timed = _phase_timer(phase_seconds)
    with timed("reliability"):
        model_weight = model_reliability(model_probabilities, seeds, validation_dice)
    # An untrusted model's edges would only add noise to the flooding relief.
    guide = model_probabilities if model_weight > 0.0 else None
    planes = {(int(a), int(i)) for a, i in planes}
    annotations = []
    for axis, index in sorted(planes):
        seeds_2d = np.take(seeds, index, axis=axis)
        if not np.any(seeds_2d != UNLABELLED):
            continue
        if previous_segmentation is not None:
            with timed("seeds"):
                seeds_2d = seeds_with_previous_answer(seeds_2d, np.take(previous_segmentation, index, axis=axis))
        with timed("densify"):
            labels_2d = dense_labels(
                np.take(image, index, axis=axis),
                seeds_2d,
                num_classes,
                probabilities_cyx=None if guide is None else np.take(guide, index, axis=axis + 1),
                spacing_yx=plane_spacing(spacing_zyx, axis),
            )
        annotations.append(SliceAnnotation(axis=axis, index=index, labels=np.asarray(labels_2d)))
    with timed("propagate"):
        proxy = propagate_to_volume(image, annotations, num_classes, spacing_zyx=spacing_zyx,
                                    settings=ROUND_PROPAGATION)
    if annotations:
        # Judged again on the whole drawn planes: corrective strokes lie exactly where the
        # last answer was wrong, so agreement with the strokes alone underrates a model that
        # is right on the rest of those planes (down to 0 when every stroke fixes its error) (ACDC val, 10 volumes x 4 rounds, a fair model:
        # weight 0.45 -> 0.66, fused Dice 0.815 -> 0.819; a perfect one 0.954 -> 0.964).
        with timed("reliability"):
            model_weight = model_reliability(model_probabilities, drawn_planes(image.shape, annotations),
                                             validation_dice)
    with timed("fusion"):
        fused = fuse_with_model(proxy, model_probabilities, seeds, model_weight)
    with timed("residual"):
        residual, suggestion = round_residual(
            fused.probabilities, proxy.confidence, proxy.probabilities, model_probabilities, model_weight,
            planes, spacing_zyx,
        )
    return RoundComputation(
        proxy_labels=np.asarray(proxy.labels).astype(np.uint8),
        proxy_probabilities=np.asarray(proxy.probabilities, dtype=np.float32),
        confidence=np.asarray(proxy.confidence, dtype=np.float32),
        segmentation=np.asarray(fused.labels).astype(np.uint8),
        residual=np.asarray(residual, dtype=np.float32),
        suggestion=suggestion,
        model_weight=model_weight,
    )


#: The phases of ``compute_round`` timed into its ``phase_seconds``: the model's reliability,
#: the previous answer's seeds and the densification of the drawn planes, the propagation to
#: the volume, the fusion with the model, the error estimate with the next suggestion.
ROUND_PHASES = ("reliability", "seeds", "densify", "propagate", "fusion", "residual")


def _phase_timer(phase_seconds: dict[str, float] | None):
    """A context-manager factory ``timed(name)`` adding the block's wall time to
    ``phase_seconds[name]``; timing nothing when ``phase_seconds`` is None."""

    @contextmanager
    def timed(name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            if phase_seconds is not None:
                phase_seconds[name] = phase_seconds.get(name, 0.0) + time.perf_counter() - started

    return timed


def drawn_planes(shape: tuple[int, ...], annotations: Iterable[SliceAnnotation]) -> np.ndarray:
    """uint8 ``shape``: the dense labels of the drawn planes, UNLABELLED elsewhere."""
    labels = np.full(shape, UNLABELLED, dtype=np.uint8)
    for annotation in annotations:
        np.moveaxis(labels, annotation.axis, 0)[annotation.index] = annotation.labels
    return labels


#: Dense labels of recently densified planes, by the digest of their inputs (image, seeds with
#: the kept previous answer, guide). A plane is reused only while all of these are unchanged,
#: e.g. a round retried or re-sent; the previous answer usually moves between rounds.
DENSE_CACHE_ENTRIES = 512
_dense_cache = ArrayMemo(DENSE_CACHE_ENTRIES)


def plane_spacing(spacing_zyx: tuple[float, float, float], axis: int) -> tuple[float, float]:
    """The (row, column) pixel spacing of a plane normal to ``axis`` of a (z, y, x) volume."""
    rows, cols = (float(d) for a, d in enumerate(spacing_zyx) if a != axis)
    return rows, cols


def dense_labels(
    image_yx: np.ndarray, seeds_yx: np.ndarray, num_classes: int, probabilities_cyx: np.ndarray | None = None,
    spacing_yx: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """``registration.dense2d.densify_slice``, memoised on the content of its inputs."""
    key = content_digest(f"{num_classes} {spacing_yx[0]!r} {spacing_yx[1]!r}", image_yx, seeds_yx, probabilities_cyx)
    cached = _dense_cache.get(key)
    if cached is not None:
        return cached.copy()
    labels = densify_slice(image_yx, seeds_yx, num_classes, probabilities_cyx=probabilities_cyx, spacing_yx=spacing_yx)
    _dense_cache.put(key, labels.copy())
    return labels


def uncertainty_map(probabilities: np.ndarray) -> np.ndarray:
    """Normalised entropy of (C, z, y, x) probabilities: float32 (z, y, x) in [0, 1]."""
    return normalized_entropy(probabilities)


def opening_suggestion(
    probabilities: np.ndarray, validation_dice: float | None, spacing_zyx: tuple[float, float, float],
    axis: int = 0,
) -> Suggestion | None:
    """Where to start on a new image: with a validated model, its most uncertain region near
    the structures; otherwise the centre slice along ``axis``."""
    nothing_drawn = np.full(probabilities.shape[1:], UNLABELLED, dtype=np.uint8)
    reliability = model_reliability(probabilities, nothing_drawn, validation_dice)
    return suggest_opening(probabilities, reliability, axis=axis, spacing_zyx=spacing_zyx)


def atlas_opening(atlas: Volume, atlas_labels: np.ndarray, image: Volume, num_classes: int) -> AtlasProxy:
    """The atlas proxy of ``image`` from an accepted earlier volume and its labels (its
    probabilities float32 (C, z, y, x) and the images' similarity after registration)."""
    return propagate_from_atlas(
        atlas.array, atlas_labels, image.array, num_classes,
        atlas_spacing_zyx=atlas.spacing_zyx, spacing_zyx=image.spacing_zyx,
    )
