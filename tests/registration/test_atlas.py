"""Volume-to-volume (atlas) propagation with real SimpleITK registration."""

from __future__ import annotations

import numpy as np

from registration.atlas import (
    ATLAS_CONFIDENCE,
    propagate_from_atlas,
    register_affine,
    registered_correlation,
)
from registration.synthetic import synthetic_volume


def test_atlas_labels_follow_a_shifted_copy():
    atlas = synthetic_volume((20, 48, 40), num_classes=3, seed=1)
    shift = (1, 4, -3)
    image = np.roll(atlas.image, shift, axis=(0, 1, 2))
    truth = np.roll(atlas.labels, shift, axis=(0, 1, 2))
    proxy = propagate_from_atlas(atlas.image, atlas.labels, image, 3)
    assert proxy.labels.shape == truth.shape and proxy.probabilities.shape == (3,) + truth.shape
    for cls in (1, 2):
        p, t = proxy.labels == cls, truth == cls
        unregistered = 2.0 * np.count_nonzero((atlas.labels == cls) & t) / (np.count_nonzero(atlas.labels == cls) + t.sum())
        score = 2.0 * np.count_nonzero(p & t) / (p.sum() + t.sum())
        assert score > 0.9 and score > unregistered + 0.2
    np.testing.assert_allclose(proxy.confidence, ATLAS_CONFIDENCE)


def test_similarity_tells_a_registered_copy_from_another_image():
    """Non-cubic volumes; the copy is shifted, the other image is smooth noise."""
    from scipy.ndimage import gaussian_filter

    atlas = synthetic_volume((20, 48, 40), num_classes=3, seed=1)
    copy = np.roll(atlas.image, (1, 4, -3), axis=(0, 1, 2))
    other = gaussian_filter(np.random.default_rng(7).random((20, 48, 40)), 2.0).astype(np.float32)
    alike = propagate_from_atlas(atlas.image, atlas.labels, copy, 3).similarity
    unlike = propagate_from_atlas(atlas.image, atlas.labels, other, 3).similarity
    assert alike > 0.8 and unlike < alike - 0.2, (alike, unlike)


def test_atlas_registration_is_the_same_on_every_call():
    """The metric's random sample is seeded (SimpleITK's seed 0 would mean the wall clock)."""
    atlas = synthetic_volume((20, 48, 40), num_classes=3, seed=1)
    image = np.roll(atlas.image, (1, 4, -3), axis=(0, 1, 2))
    first, second = (np.array(register_affine(image, atlas.image).GetParameters()) for _ in range(2))
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-4)  # seed 0: about 5e-3 apart


def test_registered_correlation_needs_an_overlap():
    rng = np.random.default_rng(0)
    image = rng.random((4, 16, 12))
    covered = np.zeros(image.shape, dtype=bool)
    covered[0, :4, :4] = True  # 16 voxels: fewer than MIN_OVERLAP_VOXELS
    assert registered_correlation(image, image, covered) == 0.0
    covered[:] = True
    assert abs(registered_correlation(image, image, covered) - 1.0) < 1e-9
    assert registered_correlation(image, -image, covered) < -0.999
