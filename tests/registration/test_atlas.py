"""Volume-to-volume (atlas) propagation with real SimpleITK registration."""

from __future__ import annotations

import numpy as np

from registration.atlas import ATLAS_CONFIDENCE, propagate_from_atlas
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
