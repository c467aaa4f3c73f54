"""Fusion of proxy and model: never worse than the proxy with an untrusted model, better with a good one."""

from __future__ import annotations

import numpy as np
import pytest

from registration.fusion import fuse_with_model, model_reliability
from registration.io.volume import UNLABELLED
from registration.propagate import SliceAnnotation, propagate_to_volume
from registration.synthetic import synthetic_volume

SHAPE = (24, 40, 32)  # non-cubic on purpose
NUM_CLASSES = 3


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.stack([(labels == c).astype(np.float32) for c in range(num_classes)])


def _mean_foreground_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    scores = []
    for cls in range(1, NUM_CLASSES):
        p, t = prediction == cls, truth == cls
        scores.append(2.0 * np.logical_and(p, t).sum() / max(p.sum() + t.sum(), 1))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def case():
    """A synthetic volume, a poor proxy from two annotated z-slices, and the user's strokes."""
    volume = synthetic_volume(SHAPE, NUM_CLASSES, seed=3)
    first, last = volume.present
    annotated = [first + (last - first) // 3, first + (last - first) // 2]
    annotations = [SliceAnnotation(0, z, volume.labels[z]) for z in annotated]
    proxy = propagate_to_volume(volume.image, annotations, NUM_CLASSES)
    user = np.full(SHAPE, UNLABELLED, dtype=np.uint8)
    for z in annotated:  # strokes: the cores of the classes (eroded masks)
        for cls in range(NUM_CLASSES):
            core = volume.labels[z] == cls
            core[1:-1, 1:-1] &= (volume.labels[z][:-2, 1:-1] == cls) & (volume.labels[z][2:, 1:-1] == cls)
            user[z][core] = cls
    return volume, proxy, user


def test_a_uniform_model_leaves_the_proxy_exactly(case):
    volume, proxy, user = case
    uniform = np.full((NUM_CLASSES,) + SHAPE, 1.0 / NUM_CLASSES, dtype=np.float32)
    weight = model_reliability(uniform, user)
    assert weight == 0.0
    for model_weight in (weight, 1.0):  # even if it were trusted: a flat model says nothing
        fused = fuse_with_model(proxy, uniform, user, model_weight)
        np.testing.assert_array_equal(fused.labels, proxy.labels)
        np.testing.assert_allclose(fused.probabilities, proxy.probabilities, atol=1e-6)


def test_an_untrusted_random_model_leaves_the_proxy(case):
    volume, proxy, user = case
    rng = np.random.default_rng(0)
    random_model = rng.dirichlet(np.ones(NUM_CLASSES), size=SHAPE).transpose(3, 0, 1, 2).astype(np.float32)
    weight = model_reliability(random_model, user)
    assert weight < 0.05
    fused = fuse_with_model(proxy, random_model, user, 0.0)
    np.testing.assert_array_equal(fused.labels, proxy.labels)
    # A random model given weight anyway would make it worse: the weight is what protects the proxy.
    forced = fuse_with_model(proxy, random_model, user, 1.0)
    assert _mean_foreground_dice(forced.labels, volume.labels) < _mean_foreground_dice(proxy.labels, volume.labels)


def test_a_perfect_model_improves_a_poor_proxy(case):
    volume, proxy, user = case
    perfect = _one_hot(volume.labels, NUM_CLASSES)
    weight = model_reliability(perfect, user)
    assert weight > 0.9
    fused = fuse_with_model(proxy, perfect, user, weight)
    proxy_dice = _mean_foreground_dice(proxy.labels, volume.labels)
    fused_dice = _mean_foreground_dice(fused.labels, volume.labels)
    assert proxy_dice < 0.85  # the case is a poor proxy: two slices for the whole structure
    assert fused_dice > proxy_dice + 0.05
    np.testing.assert_allclose(fused.probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_drawn_voxels_keep_their_label_against_a_confident_model(case):
    volume, proxy, user = case
    wrong = _one_hot((volume.labels + 1) % NUM_CLASSES, NUM_CLASSES)  # confidently wrong everywhere
    fused = fuse_with_model(proxy, wrong, user, 1.0)
    drawn = user != UNLABELLED
    np.testing.assert_array_equal(fused.labels[drawn], user[drawn])
    np.testing.assert_allclose(fused.probabilities[:, drawn], _one_hot(user[drawn], NUM_CLASSES))
    assert model_reliability(wrong, user) == 0.0


def test_model_reliability_combines_agreement_and_validation_dice(case):
    volume, proxy, user = case
    perfect = _one_hot(volume.labels, NUM_CLASSES)
    uniform = np.full((NUM_CLASSES,) + SHAPE, 1.0 / NUM_CLASSES, dtype=np.float32)
    nothing_drawn = np.full(SHAPE, UNLABELLED, dtype=np.uint8)
    assert model_reliability(perfect, nothing_drawn) == 0.0  # no evidence at all
    assert model_reliability(perfect, nothing_drawn, validation_dice=0.8) == pytest.approx(0.8)
    agreement = model_reliability(perfect, user)
    assert model_reliability(perfect, user, validation_dice=0.25) == pytest.approx(np.sqrt(agreement * 0.25))
    assert model_reliability(uniform, user, validation_dice=0.9) == 0.0  # disagrees here: not trusted
    # One drawn class cannot tell a model from a constant answer.
    only_background = np.where(user == 0, 0, UNLABELLED).astype(np.uint8)
    assert model_reliability(perfect, only_background) == 0.0
    with pytest.raises(ValueError):
        model_reliability(perfect[:, :-1], user)


def test_fusion_rejects_bad_input(case):
    volume, proxy, user = case
    perfect = _one_hot(volume.labels, NUM_CLASSES)
    with pytest.raises(ValueError):
        fuse_with_model(proxy, perfect[:2], user, 0.5)
    with pytest.raises(ValueError):
        fuse_with_model(proxy, perfect, user, 1.5)
    bad = user.copy()
    bad[0, 0, 0] = NUM_CLASSES
    with pytest.raises(ValueError):
        fuse_with_model(proxy, perfect, bad, 0.5)
