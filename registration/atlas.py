"""Volume-to-volume propagation: an earlier annotated volume proposes a cold-start proxy.

The atlas image is registered to the new image with SimpleITK (centre-of-mass start, then
an affine transform maximising Mattes mutual information, coarse to fine), and the
atlas labels are carried across as one-hot probabilities with linear interpolation.
Its confidence is a constant ``ATLAS_CONFIDENCE``: a guess worth less than any slice the
user annotated (w = 1) or its neighbour (w = 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    method.SetMetricSamplingPercentage(0.25, seed=0)
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


def propagate_from_atlas(
    atlas_image_zyx: np.ndarray,
    atlas_labels_zyx: np.ndarray,
    image_zyx: np.ndarray,
    num_classes: int,
    atlas_spacing_zyx: Sequence[float] | None = None,
    spacing_zyx: Sequence[float] | None = None,
) -> Proxy:
    """A proxy for ``image_zyx`` (z, y, x) from an annotated atlas volume (any shape).

    ``atlas_labels_zyx``: ints 0..C-1 of the atlas image's shape. Spacings (z, y, x) default
    to 1 mm. Returns labels (uint8), probabilities (C, z, y, x) and a constant confidence.
    """
    import SimpleITK as sitk

    atlas_labels = np.asarray(atlas_labels_zyx)
    if atlas_labels.shape != np.shape(atlas_image_zyx):
        raise ValueError(f"atlas labels {atlas_labels.shape} != atlas image {np.shape(atlas_image_zyx)}")
    if atlas_labels.min() < 0 or atlas_labels.max() >= num_classes:
        raise ValueError(f"atlas labels outside 0..{num_classes - 1}")
    transform = register_affine(image_zyx, atlas_image_zyx, spacing_zyx, atlas_spacing_zyx)
    reference = _to_image(np.zeros(np.shape(image_zyx), dtype=np.float32), spacing_zyx)
    atlas_one_hot = one_hot(atlas_labels, num_classes)
    probabilities = np.empty((num_classes,) + tuple(np.shape(image_zyx)), dtype=np.float32)
    for cls in range(num_classes):
        warped = sitk.Resample(
            _to_image(atlas_one_hot[cls], atlas_spacing_zyx),
            reference,
            transform,
            sitk.sitkLinear,
            1.0 if cls == 0 else 0.0,  # outside the atlas: background
        )
        probabilities[cls] = sitk.GetArrayFromImage(warped)
    probabilities /= np.maximum(probabilities.sum(axis=0, keepdims=True), 1e-12)
    labels = labels_from_probabilities(probabilities)
    confidence = np.full(labels.shape, ATLAS_CONFIDENCE, dtype=np.float32)
    return Proxy(labels, probabilities, confidence)
