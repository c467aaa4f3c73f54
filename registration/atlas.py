"""Volume-to-volume propagation: an earlier annotated volume proposes a cold-start proxy.

The atlas image is registered to the new image with SimpleITK (centre-of-mass start, then
an affine transform maximising Mattes mutual information, coarse to fine), and the
atlas labels are carried across as one-hot probabilities with linear interpolation.
Its confidence is a constant ``ATLAS_CONFIDENCE``: a guess worth less than any slice the
user annotated (w = 1) or its neighbour (w = 0.5). The proxy also carries how alike the new
image and the registered atlas image are (``AtlasProxy.similarity``), which tells a good
atlas from a useless one before anyone draws (``registration.opening_choice``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from registration.appearance import normalize_intensity_sampled
from registration.labels import one_hot
from registration.propagate import Proxy, labels_from_probabilities

#: Confidence of every voxel of an atlas proxy.
ATLAS_CONFIDENCE = 0.25
#: Shrink factors and smoothing (voxels) of the affine registration's pyramid.
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS = (2.0, 1.0, 0.0)
ITERATIONS = 100
#: Seed of the metric's random voxel sample, so that one image and atlas register alike on every
#: call. Not 0: SimpleITK reads seed 0 as ``sitkWallClock`` (a new sample each call).
SAMPLING_SEED = 1


@dataclass
class AtlasProxy(Proxy):
    """A ``Proxy`` carried from an atlas, with ``similarity``: the correlation (−1..1) of the new
    image with the registered atlas image over the voxels the atlas covers (0 when they share
    fewer than ``MIN_OVERLAP_VOXELS``)."""

    similarity: float = 0.0


#: Fewer voxels in common than this: the images are not alike at all.
MIN_OVERLAP_VOXELS = 64


def _to_image(array: np.ndarray, spacing_zyx: Sequence[float] | None):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    if spacing_zyx is not None:
        image.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing_zyx))))
    return image


def register_affine(
    fixed_zyx: np.ndarray,
    moving_zyx: np.ndarray,
    fixed_spacing_zyx: Sequence[float] | None = None,
    moving_spacing_zyx: Sequence[float] | None = None,
):
    """SimpleITK affine transform mapping fixed physical points onto the moving volume."""
    import SimpleITK as sitk

    fixed = _to_image(normalize_intensity_sampled(fixed_zyx), fixed_spacing_zyx)
    moving = _to_image(normalize_intensity_sampled(moving_zyx), moving_spacing_zyx)
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.AffineTransform(3), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed=SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=ITERATIONS, gradientMagnitudeTolerance=1e-6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    usable = [f for f in SHRINK_FACTORS if min(fixed.GetSize()) // f >= 4] or [1]
    method.SetShrinkFactorsPerLevel(usable)
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS[-len(usable) :]))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def registered_correlation(fixed_zyx: np.ndarray, warped_zyx: np.ndarray, covered_zyx: np.ndarray) -> float:
    """Pearson correlation of two (z, y, x) images of one grid over the ``covered`` voxels."""
    if int(covered_zyx.sum()) < MIN_OVERLAP_VOXELS:
        return 0.0
    a = fixed_zyx[covered_zyx].astype(np.float64)
    b = warped_zyx[covered_zyx].astype(np.float64)
    a -= a.mean()
    b -= b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def propagate_from_atlas(
    atlas_image_zyx: np.ndarray,
    atlas_labels_zyx: np.ndarray,
    image_zyx: np.ndarray,
    num_classes: int,
    atlas_spacing_zyx: Sequence[float] | None = None,
    spacing_zyx: Sequence[float] | None = None,
) -> AtlasProxy:
    """A proxy for ``image_zyx`` (z, y, x) from an annotated atlas volume (any shape).

    ``atlas_labels_zyx``: ints 0..C-1 of the atlas image's shape. Spacings (z, y, x) default
    to 1 mm. Returns labels (uint8), probabilities (C, z, y, x), a constant confidence and the
    images' similarity after registration.
    """
    import SimpleITK as sitk

    atlas_labels = np.asarray(atlas_labels_zyx)
    if atlas_labels.shape != np.shape(atlas_image_zyx):
        raise ValueError(f"atlas labels {atlas_labels.shape} != atlas image {np.shape(atlas_image_zyx)}")
    if atlas_labels.min() < 0 or atlas_labels.max() >= num_classes:
        raise ValueError(f"atlas labels outside 0..{num_classes - 1}")
    transform = register_affine(image_zyx, atlas_image_zyx, spacing_zyx, atlas_spacing_zyx)
    reference = _to_image(np.zeros(np.shape(image_zyx), dtype=np.float32), spacing_zyx)

    def warp(array: np.ndarray, interpolator, outside: float) -> np.ndarray:
        moved = sitk.Resample(_to_image(array, atlas_spacing_zyx), reference, transform, interpolator, outside)
        return sitk.GetArrayFromImage(moved)

    moving = normalize_intensity_sampled(atlas_image_zyx)
    covered = warp(np.ones_like(moving), sitk.sitkNearestNeighbor, 0.0) > 0
    similarity = registered_correlation(
        normalize_intensity_sampled(image_zyx), warp(moving, sitk.sitkLinear, 0.0), covered
    )
    atlas_one_hot = one_hot(atlas_labels, num_classes)
    probabilities = np.empty((num_classes,) + tuple(np.shape(image_zyx)), dtype=np.float32)
    for cls in range(num_classes):
        # outside the atlas: background
        probabilities[cls] = warp(atlas_one_hot[cls], sitk.sitkLinear, 1.0 if cls == 0 else 0.0)
    probabilities /= np.maximum(probabilities.sum(axis=0, keepdims=True), 1e-12)
    labels = labels_from_probabilities(probabilities)
    confidence = np.full(labels.shape, ATLAS_CONFIDENCE, dtype=np.float32)
    return AtlasProxy(labels, probabilities, confidence, similarity)
