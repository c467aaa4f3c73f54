"""Scribble simulator: determinism, strokes inside their structures, effort counts."""

from __future__ import annotations

import numpy as np
import pytest

from learner.scribbles import boundary_effort, simulate_scribbles
from registration.io.volume import UNLABELLED
from tests.helpers import disk_and_ring


@pytest.fixture
def labels():
    return disk_and_ring((6, 48, 40), seed=4, empty_slices=2)[1].astype(np.int64)


def test_same_seed_same_scribbles_other_seed_other_scribbles(labels):
    first = simulate_scribbles(labels, num_classes=3, seed=7)
    again = simulate_scribbles(labels, num_classes=3, seed=7)
    other = simulate_scribbles(labels, num_classes=3, seed=8)
    assert np.array_equal(first.scribble, again.scribble) and first.effort == again.effort
    assert not np.array_equal(first.scribble, other.scribble)


def test_strokes_lie_inside_their_structure_on_foreground_slices(labels):
    result = simulate_scribbles(labels, num_classes=3, seed=0)
    scribble = result.scribble
    assert scribble.dtype == np.uint8 and scribble.shape == labels.shape
    drawn = scribble != UNLABELLED
    assert np.array_equal(scribble[drawn], labels[drawn])  # every stroke pixel has its true class
    assert not drawn[:2].any()  # background-only slices are not touched by default
    for z in range(2, labels.shape[0]):
        assert set(np.unique(scribble[z])) == {0, 1, 2, UNLABELLED}
        # Strokes stay off the structure's border: no foreground stroke pixel touches another class.
        for cls in (1, 2):
            ys, xs = np.nonzero(scribble[z] == cls)
            neighbours = labels[z][np.clip(ys[:, None] + [-1, 1, 0, 0], 0, labels.shape[1] - 1),
                                   np.clip(xs[:, None] + [0, 0, -1, 1], 0, labels.shape[2] - 1)]
            assert (neighbours == cls).all()
    assert drawn.mean() < 0.2  # sparse


def test_effort_counts(labels):
    result = simulate_scribbles(labels, num_classes=3, seed=1)
    effort = result.effort
    assert effort.voxels == int((result.scribble != UNLABELLED).sum())
    assert effort.slices_touched == 4 and effort.slice_indices == (2, 3, 4, 5)
    assert effort.strokes >= 3 * 4  # at least one stroke per class on each touched slice
    assert effort.to_dict()["slice_indices"] == [2, 3, 4, 5]


def test_chosen_slices_and_axis(labels):
    only = simulate_scribbles(labels, num_classes=3, slices=[3], seed=0)
    assert only.effort.slice_indices == (3,)
    assert (only.scribble[[0, 1, 2, 4, 5]] == UNLABELLED).all()
    full = simulate_scribbles(labels, num_classes=3, seed=0)
    assert np.array_equal(only.scribble[3], full.scribble[3])  # a slice's strokes ignore the others
    chosen_background = simulate_scribbles(labels, num_classes=3, slices=[0], seed=0)
    assert set(np.unique(chosen_background.scribble[0])) == {0, UNLABELLED}
    along_x = simulate_scribbles(labels, num_classes=3, axis=2, slices=[20], seed=0)
    assert along_x.scribble.shape == labels.shape
    assert (along_x.scribble[:, :, 20] != UNLABELLED).any()
    assert (np.delete(along_x.scribble, 20, axis=2) == UNLABELLED).all()
    with pytest.raises(IndexError):
        simulate_scribbles(labels, num_classes=3, slices=[6])


def test_boundary_effort_hand_made():
    labels = np.zeros((3, 8, 8), dtype=np.int64)
    labels[0, 2:6, 2:6] = 1  # 4 x 4 square: 12 inner boundary pixels
    labels[2, 1:4, 1:4] = 2  # 3 x 3 square: 8
    assert boundary_effort(labels, [0]) == (12, 20)
    assert boundary_effort(labels, [0, 1, 2]) == (20, 20)
    assert boundary_effort(labels, []) == (0, 20)
