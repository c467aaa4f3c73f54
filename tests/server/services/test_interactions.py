"""Round input -> seed volumes: coordinates, strokes, clicks, labelmaps (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from registration.io.volume import UNLABELLED, Volume
from server import schemas
from server.errors import BadInput
from server.services import interactions


@pytest.fixture
def geometry() -> Volume:
    # Non-trivial geometry: anisotropic spacing, an offset origin and a flipped y axis.
    return Volume(
        np.zeros((5, 12, 16), dtype=np.float32),
        spacing_xyz=(0.5, 2.0, 3.0),
        origin_xyz=(10.0, -4.0, 7.0),
        direction=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    )


def test_index_points_are_ijk_and_become_zyx(geometry):
    assert interactions.to_zyx((3, 7, 2), "index", geometry, "p") == (2, 7, 3)


def test_physical_points_follow_the_geometry(geometry):
    # voxel (i, j, k) = (4, 5, 1) -> x = 10 + 0.5*4, y = -4 - 2*5 (flipped), z = 7 + 3*1
    assert interactions.to_zyx((12.0, -14.0, 10.0), "physical", geometry, "p") == (1, 5, 4)


@pytest.mark.parametrize("point", [(16, 0, 0), (0, 12, 0), (0, 0, 5), (-1, 0, 0)])
def test_points_outside_the_volume_are_rejected(geometry, point):
    with pytest.raises(BadInput, match="outside the volume"):
        interactions.to_zyx(point, "index", geometry, "stroke 0")


def test_stroke_is_painted_in_its_plane_with_the_brush_radius(geometry):
    request = schemas.RoundCreate(
        scribbles=[schemas.Stroke(points=[(2, 6, 3), (10, 6, 3)], label=1, radius=1.0)]
    )
    checked = interactions.check_round(request, geometry, 3)
    painted = interactions.paint_round(checked, geometry, 3, click_radius=0, probabilities=None)
    drawn = painted.seeds != UNLABELLED
    assert painted.planes == {(0, 3)}
    assert drawn.sum(axis=(1, 2)).nonzero()[0].tolist() == [3]  # only slice z = 3
    # a 9-voxel line thickened by a radius-1 cross: 9*3 + 2 end caps
    assert drawn[3].sum() == 9 * 3 + 2
    assert set(np.unique(painted.seeds[drawn])) == {1}
    assert painted.strokes == 1 and painted.voxels == 29


def test_stroke_on_a_sagittal_plane_stays_on_it(geometry):
    request = schemas.RoundCreate(scribbles=[schemas.Stroke(points=[(5, 1, 0), (5, 9, 4)], label=2, radius=0)])
    checked = interactions.check_round(request, geometry, 3)
    painted = interactions.paint_round(checked, geometry, 3, click_radius=0, probabilities=None)
    assert painted.planes == {(2, 5)}
    assert np.all(np.argwhere(painted.seeds != UNLABELLED)[:, 2] == 5)


def test_negative_click_takes_the_most_probable_other_label(geometry):
    probabilities = np.zeros((3, 5, 12, 16), dtype=np.float32)
    probabilities[1] = 0.6
    probabilities[2] = 0.3
    probabilities[0] = 0.1
    request = schemas.RoundCreate(clicks=[schemas.Click(point=(4, 4, 2), label=1, positive=False)])
    checked = interactions.check_round(request, geometry, 3)
    painted = interactions.paint_round(checked, geometry, 3, click_radius=0, probabilities=probabilities)
    assert painted.seeds[2, 4, 4] == 2
    assert painted.clicks == 1 and painted.voxels == 1


def test_label_out_of_range_is_rejected(geometry):
    request = schemas.RoundCreate(scribbles=[schemas.Stroke(points=[(1, 1, 1)], label=3)])
    with pytest.raises(BadInput, match="label 3 is out of range"):
        interactions.check_round(request, geometry, 3)


def test_empty_round_is_rejected(geometry):
    with pytest.raises(BadInput, match="empty round"):
        interactions.check_round(schemas.RoundCreate(), geometry, 3)


def test_empty_stroke_fails_validation():
    with pytest.raises(ValueError, match="empty stroke"):
        schemas.Stroke(points=[], label=1)


def test_later_input_overrides_earlier_seeds():
    earlier = np.full((1, 2, 2), UNLABELLED, dtype=np.uint8)
    earlier[0, 0, 0] = 1
    earlier[0, 1, 1] = 2
    later = np.full((1, 2, 2), UNLABELLED, dtype=np.uint8)
    later[0, 0, 0] = 0
    merged = interactions.merge(earlier, later)
    assert merged[0, 0, 0] == 0 and merged[0, 1, 1] == 2 and merged[0, 0, 1] == UNLABELLED


def test_labelmap_checks_shape_values_and_emptiness(geometry):
    good = np.full(geometry.shape_zyx, UNLABELLED, dtype=np.int16)
    good[1, 2:4, 2:4] = 1
    good[3, 5, 5:9] = 0
    painted = interactions.labelmap_input(good, geometry, 3)
    assert painted.planes == {(0, 1), (0, 3)}
    assert painted.voxels == 8 and painted.strokes == 2
    with pytest.raises(BadInput, match="has size"):
        interactions.labelmap_input(good[:, :, :-1], geometry, 3)
    bad = good.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(BadInput, match=r"\[7\] out of range"):
        interactions.labelmap_input(bad, geometry, 3)
    with pytest.raises(BadInput, match="empty"):
        interactions.labelmap_input(np.full(geometry.shape_zyx, UNLABELLED), geometry, 3)
