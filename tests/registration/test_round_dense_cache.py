"""Rounds reuse the dense labels of planes whose inputs did not change (registration.round)."""

from __future__ import annotations

import numpy as np

from registration import round as round_computation
from registration.dense2d import densify_slice
from registration.io.volume import UNLABELLED


def slice_and_seeds(seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.normal(0.0, 0.05, (24, 30)).astype(np.float32)
    image[6:18, 8:20] += 1.0
    seeds = np.full(image.shape, UNLABELLED, dtype=np.uint8)
    seeds[12, 10:18] = 1
    seeds[2, 2:28] = 0
    return image, seeds


def test_dense_labels_equal_densify_slice_and_are_reused_only_for_the_same_inputs():
    image, seeds = slice_and_seeds()
    round_computation._dense_cache.clear()  # other tests' rounds may have filled it
    before = 0
    first = round_computation.dense_labels(image, seeds, 2)
    np.testing.assert_array_equal(first, densify_slice(image, seeds, 2))
    assert len(round_computation._dense_cache) == before + 1
    first[:] = 0  # the caller's copy: changing it leaves the cache alone
    again = round_computation.dense_labels(image, seeds, 2)
    np.testing.assert_array_equal(again, densify_slice(image, seeds, 2))
    assert len(round_computation._dense_cache) == before + 1  # a hit

    more = seeds.copy()
    more[20, 2:28] = 0  # a new stroke: the plane is densified again
    np.testing.assert_array_equal(round_computation.dense_labels(image, more, 2), densify_slice(image, more, 2))
    guide = np.stack([np.full(image.shape, 0.5, np.float32)] * 2)
    round_computation.dense_labels(image, seeds, 2, guide)  # a model's guide is an input too
    assert len(round_computation._dense_cache) == before + 3
