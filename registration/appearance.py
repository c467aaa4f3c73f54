"""Per-class intensity models learnt from annotated pixels, used to judge carried labels.

Intensities are those of ``normalize_intensity_sampled`` (0..1). A model is a (C, bins) array of
smoothed, normalised histograms: ``model[c, b]`` = p(intensity in bin b | class c).
"""

from __future__ import annotations

import numpy as np

#: Bins of the intensity histograms.
BINS = 32


def normalize_intensity_sampled(image: np.ndarray) -> np.ndarray:
    """float32 copy of any real array with its 0.5th..99.5th percentiles mapped to 0..1
    (clipped); a constant image becomes all zeros. The percentiles are those of a strided
    sample of at most about 200 000 voxels (fast on large volumes); the learner's
    ``learner.preprocess.normalize_intensity`` uses every finite voxel instead."""
    image = np.asarray(image, dtype=np.float32)
    sample = image.ravel()[:: max(1, image.size // 200_000)]
    low, high = np.percentile(sample, [0.5, 99.5])
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros_like(image)
    out = image - np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)


def _bin_index(images: np.ndarray, bins: int) -> np.ndarray:
    return np.minimum((images * bins).astype(np.int32), bins - 1)


def class_intensity_model(images: np.ndarray, probabilities: np.ndarray, bins: int = BINS) -> np.ndarray:
    """(C, bins) histograms of ``images`` (...) in [0, 1], each pixel counted for class c with
    weight ``probabilities[c]`` ((C, ...)); smoothed over neighbouring bins, never zero."""
    index = _bin_index(images, bins).ravel()
    hist = np.stack(
        [np.bincount(index, weights=p.ravel(), minlength=bins) for p in probabilities]
    ).astype(np.float64)
    kernel = (0.25, 0.5, 0.25)
    for _ in range(2):
        padded = np.pad(hist, ((0, 0), (1, 1)), mode="edge")
        hist = kernel[0] * padded[:, :-2] + kernel[1] * padded[:, 1:-1] + kernel[2] * padded[:, 2:]
    hist += 1e-3 * hist.sum(axis=1, keepdims=True) / bins + 1e-9
    return (hist / hist.sum(axis=1, keepdims=True)).astype(np.float32)


def reweight_by_intensity(
    probabilities: np.ndarray, image: np.ndarray, model: np.ndarray, exponent: float
) -> np.ndarray:
    """Posterior ∝ prior × p(intensity | class)^exponent, per pixel: ``probabilities`` (C, ...),
    ``image`` (...) in [0, 1]. Returns float32 (C, ...) summing to one over C."""
    weighted = probabilities * np.power(model[:, _bin_index(image, model.shape[1])], exponent)
    total = weighted.sum(axis=0, keepdims=True)
    return np.where(total > 0, weighted / np.maximum(total, 1e-12), probabilities).astype(np.float32)
