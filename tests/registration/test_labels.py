"""Label helpers: the class argmax of probability volumes."""

from __future__ import annotations

import numpy as np
import pytest

from registration.labels import class_argmax


@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_class_argmax_is_numpys_argmax_ties_included(num_classes):
    rng = np.random.default_rng(num_classes)
    probabilities = rng.random((num_classes, 3, 7, 5)).astype(np.float32)
    probabilities[:, 0, 0, 0] = 0.5  # a tie of every class: the first wins
    if num_classes > 2:
        probabilities[1:3, 1, 2, 3] = 2.0  # a tie of two: the lower
    labels = class_argmax(probabilities)
    assert labels.dtype == np.uint8 and labels.shape == (3, 7, 5)
    np.testing.assert_array_equal(labels, probabilities.argmax(axis=0))
    if num_classes > 2:
        assert labels[1, 2, 3] == 1


def test_class_argmax_of_one_dimensional_probabilities_and_too_many_classes():
    assert class_argmax(np.array([0.2, 0.5, 0.3])) == 1
    with pytest.raises(ValueError, match="256 classes"):
        class_argmax(np.zeros((257, 2)))
