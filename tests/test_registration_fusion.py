"""Fusion of proxy and model, residual maps and the next-interaction suggestion."""

from __future__ import annotations

import numpy as np
import pytest

from registration.fusion import fuse_with_model
from registration.propagate import Proxy
from registration.residual import residual_map, suggest_next_interaction
from registration.volume import UNLABELLED


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.stack([(labels == c).astype(np.float32) for c in range(num_classes)])


def test_user_input_wins_and_confidence_mixes_elsewhere():
    shape = (4, 6, 6)
    proxy_labels = np.zeros(shape, dtype=np.uint8)
    proxy_labels[:, 2:4, 2:4] = 1
    confidence = np.full(shape, 0.8, dtype=np.float32)
    confidence[3] = 0.2
    proxy = Proxy(proxy_labels, _one_hot(proxy_labels, 3), confidence)
    model = _one_hot(np.full(shape, 2, dtype=np.uint8), 3)  # the model says class 2 everywhere
    user = np.full(shape, UNLABELLED, dtype=np.uint8)
    user[0, 0, 0] = 1
    fused = fuse_with_model(proxy, model, user)
    assert fused.labels[0, 0, 0] == 1  # user input wins over both
    np.testing.assert_allclose(fused.probabilities[:, 0, 0, 0], [0, 1, 0])
    np.testing.assert_allclose(fused.probabilities[:, 1, 0, 0], [0.8, 0, 0.2], atol=1e-6)
    assert fused.labels[1, 0, 0] == 0  # confident proxy (w = 0.8) beats the model
    assert fused.labels[3, 0, 0] == 2  # unconfident proxy (w = 0.2) loses
    np.testing.assert_allclose(fused.probabilities.sum(axis=0), 1.0, atol=1e-6)
    with pytest.raises(ValueError):
        fuse_with_model(proxy, model[:2], user)


def test_residual_and_suggestion_find_the_disagreement():
    shape = (10, 20, 30)
    model = np.zeros(shape, dtype=np.uint8)
    fused = model.copy()
    fused[2:5, 4:14, 6:26] = 1  # a region 3 slices thin along z, the model misses it
    fused[8, 1, 1] = 1  # a single stray voxel: a smaller region
    residual = residual_map(_one_hot(fused, 2), _one_hot(model, 2))
    assert residual.dtype == np.float32 and residual.shape == shape
    assert residual.max() == 1.0 and residual[0, 0, 0] == 0.0
    suggestion = suggest_next_interaction(residual, threshold=0.5)
    assert suggestion is not None
    assert suggestion.bbox_zyx == (2, 4, 6, 5, 14, 26)
    assert suggestion.centroid_zyx == pytest.approx((3.0, 8.5, 15.5))
    assert suggestion.axis == 0 and 2 <= suggestion.slice <= 4
    assert suggestion.score == pytest.approx(3 * 10 * 20)
    assert suggest_next_interaction(residual * 0.4, threshold=0.5) is None
