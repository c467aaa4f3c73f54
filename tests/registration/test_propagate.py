"""Slice propagation on synthetic volumes with a known answer (real SimpleITK, real arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from learner.bench.propagate import choose_slices
from registration.class_borders import hold_invisible_borders, invisible_border_groups
from registration.io.volume import UNLABELLED
from registration.propagate import SliceAnnotation, labels_from_probabilities, propagate_to_volume
from registration.resample import warp_bilinear
from registration.slice_propagation import PropagationSettings, demons_for_distance, roi_box
from registration.slice_registration import (
    DemonsSettings,
    field_cache_counts,
    register_slice_pairs,
    register_slice_pairs_memoised,
)
from registration.synthetic import synthetic_volume


def dice(a: np.ndarray, b: np.ndarray, cls: int) -> float:
    pa, pb = a == cls, b == cls
    return 2.0 * np.count_nonzero(pa & pb) / max(1, np.count_nonzero(pa) + np.count_nonzero(pb))


def annotate(labels: np.ndarray, axis: int, slices) -> list[SliceAnnotation]:
    return [SliceAnnotation(axis, i, np.take(labels, i, axis=axis).astype(np.uint8)) for i in slices]


@pytest.fixture(scope="module")
def moving_shape():
    return synthetic_volume((30, 64, 56), num_classes=4, seed=0)


def test_moving_deforming_shape_is_recovered(moving_shape):
    slices = choose_slices(moving_shape.labels, 3, axis=0)
    proxy = propagate_to_volume(moving_shape.image, annotate(moving_shape.labels, 0, slices), 4)
    assert proxy.labels.shape == moving_shape.labels.shape and proxy.labels.dtype == np.uint8
    assert proxy.probabilities.shape == (4,) + moving_shape.labels.shape
    np.testing.assert_allclose(proxy.probabilities.sum(axis=0), 1.0, atol=1e-4)
    for cls in (1, 2, 3):
        assert dice(proxy.labels, moving_shape.labels, cls) >= 0.95
    # Registration matters: copying the nearest annotation is clearly worse.
    nearest = np.stack([moving_shape.labels[min(slices, key=lambda s: abs(s - z))] for z in range(30)])
    assert np.mean([dice(nearest, moving_shape.labels, c) for c in (1, 2, 3)]) < np.mean(
        [dice(proxy.labels, moving_shape.labels, c) for c in (1, 2, 3)]
    ) - 0.05


def test_confidence_is_one_over_one_plus_distance(moving_shape):
    proxy = propagate_to_volume(moving_shape.image, annotate(moving_shape.labels, 0, [10, 16]), 4)
    per_slice = proxy.confidence.reshape(30, -1)
    assert np.all(per_slice.min(axis=1) == per_slice.max(axis=1))
    expected = [1.0 / (1.0 + min(abs(z - 10), abs(z - 16))) for z in range(30)]
    np.testing.assert_allclose(per_slice[:, 0], expected, rtol=1e-6)


def test_structure_absent_from_end_slices_stays_absent():
    volume = synthetic_volume((40, 48, 48), num_classes=3, seed=3, extent=0.3)
    first, last = volume.present
    slices = choose_slices(volume.labels, 3, axis=0)
    proxy = propagate_to_volume(volume.image, annotate(volume.labels, 0, slices), 3)
    assert not proxy.labels[: max(0, first - 2)].any()
    assert not proxy.labels[last + 3 :].any()
    # An end slice annotated as background stops the structure there and beyond.
    with_end = annotate(volume.labels, 0, slices) + [SliceAnnotation(0, last + 1, np.zeros((48, 48), np.uint8))]
    proxy = propagate_to_volume(volume.image, with_end, 3)
    assert not proxy.labels[last + 1 :].any()
    assert dice(proxy.labels, volume.labels, 1) > 0.9


def test_axis_convention_on_a_non_cubic_volume():
    """A box in a (12, 20, 28) volume, annotated along each axis, lands on the right voxels."""
    shape = (12, 20, 28)
    truth = np.zeros(shape, dtype=np.uint8)
    truth[3:9, 5:12, 8:22] = 1
    image = np.where(truth > 0, 0.9, 0.2).astype(np.float32)
    image += np.random.default_rng(0).normal(0, 0.01, shape).astype(np.float32)
    for axis, index in ((0, 5), (1, 8), (2, 15)):
        labels = np.take(truth, index, axis=axis)
        assert labels.shape == tuple(s for i, s in enumerate(shape) if i != axis)
        proxy = propagate_to_volume(image, [SliceAnnotation(axis, index, labels)], 2)
        np.testing.assert_array_equal(np.take(proxy.labels, index, axis=axis), labels)
        np.testing.assert_array_equal(np.take(proxy.confidence, index, axis=axis), 1.0)
        predicted = proxy.labels > 0
        assert np.count_nonzero(predicted & (truth > 0)) / np.count_nonzero(predicted) > 0.95, axis
        near = [slice(None)] * 3
        near[axis] = slice(index - 2, index + 3)
        assert dice(proxy.labels[tuple(near)], truth[tuple(near)], 1) > 0.95, axis
        # Confidence varies only along the annotated axis.
        assert np.ptp(np.take(proxy.confidence, 0, axis=(axis + 1) % 3)) > 0
    with pytest.raises(ValueError):  # a (y, x)-shaped slice given for axis 1
        propagate_to_volume(image, [SliceAnnotation(1, 3, np.zeros((20, 28), np.uint8))], 2)


def test_annotations_on_two_axes_combine():
    shape = (16, 24, 20)
    truth = np.zeros(shape, dtype=np.uint8)
    truth[4:12, 6:18, 5:15] = 1
    image = np.where(truth > 0, 0.8, 0.3).astype(np.float32)
    annotations = [SliceAnnotation(0, 8, truth[8]), SliceAnnotation(2, 10, truth[:, :, 10])]
    proxy = propagate_to_volume(image, annotations, 2)
    np.testing.assert_array_equal(proxy.labels[8], truth[8])
    np.testing.assert_array_equal(proxy.labels[:, :, 10], truth[:, :, 10])
    assert dice(proxy.labels, truth, 1) > 0.9
    # Confidence: the larger of the two axes' 1 / (1 + distance).
    assert proxy.confidence[0, 0, 0] == pytest.approx(max(1 / (1 + 8), 1 / (1 + 10)))
    assert proxy.confidence[7, 3, 9] == pytest.approx(max(1 / 2, 1 / 2))


def test_partial_annotation_user_input_wins_and_no_input_is_background():
    shape = (10, 16, 16)
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    empty = propagate_to_volume(image, [], 3)
    assert not empty.labels.any() and not empty.confidence.any()
    labels = np.full((16, 16), UNLABELLED, dtype=np.uint8)
    labels[4:8, 4:8] = 2
    labels[0, :] = 0
    proxy = propagate_to_volume(image, [SliceAnnotation(0, 5, labels)], 3)
    assert (proxy.labels[5, 4:8, 4:8] == 2).all() and (proxy.labels[5, 0] == 0).all()
    np.testing.assert_array_equal(proxy.probabilities[:, 5, 4, 4], [0, 0, 1])


def test_labels_keep_thin_structures_between_two_others():
    probabilities = np.array([[0.4, 0.6], [0.35, 0.1], [0.25, 0.3]], dtype=np.float32)  # (C=3, 2 voxels)
    np.testing.assert_array_equal(labels_from_probabilities(probabilities), [1, 0])


@pytest.mark.parametrize("backend", ["numpy", "simpleitk"])
def test_slice_registration_recovers_a_shift(backend):
    yy, xx = np.mgrid[:48, :48]
    moving = (((yy - 22) ** 2 + (xx - 22) ** 2) < 10**2).astype(np.float32)
    fixed = (((yy - 25) ** 2 + (xx - 26) ** 2) < 10**2).astype(np.float32)
    from scipy import ndimage

    moving, fixed = ndimage.gaussian_filter(moving, 1.5), ndimage.gaussian_filter(fixed, 1.5)
    field = register_slice_pairs(fixed[None], moving[None], DemonsSettings(backend=backend, iterations=(30, 20)))[0]
    # Inside the disc the field points from the fixed disc back to the moving one.
    assert field[0, 25, 26] == pytest.approx(-3.0, abs=1.0)
    assert field[1, 25, 26] == pytest.approx(-4.0, abs=1.0)
    warped = warp_bilinear(moving[None], field)[0]
    assert np.abs(warped - fixed).mean() < 0.25 * np.abs(moving - fixed).mean()


def test_memoised_registration_gives_each_pair_its_own_field_and_registers_it_once(moving_shape):
    images = moving_shape.image.astype(np.float32) / float(moving_shape.image.max())
    fixed, moving = images[1:9], images[0:8]
    reference = register_slice_pairs(fixed, moving)
    before = field_cache_counts()
    first = register_slice_pairs_memoised(fixed[:5], moving[:5])  # 5 new pairs
    again = register_slice_pairs_memoised(fixed, moving)  # 5 known, 3 new
    after = field_cache_counts()
    np.testing.assert_array_equal(first, reference[:5])
    np.testing.assert_array_equal(again, reference)  # a pair's field does not depend on its batch
    assert after["misses"] - before["misses"] == 8 and after["hits"] - before["hits"] == 5
    # Other settings are other fields.
    other = register_slice_pairs_memoised(fixed[:1], moving[:1], DemonsSettings(iterations=(5, 5)))
    assert field_cache_counts()["misses"] - after["misses"] == 1
    assert not np.array_equal(other[0], reference[0])


def test_round_propagation_with_memoised_fields_equals_the_plain_one(moving_shape):
    annotations = annotate(moving_shape.labels, 0, [6, 15, 24])
    plain = propagate_to_volume(moving_shape.image, annotations, 4)
    memo = PropagationSettings(memoise_fields=True)
    for _ in range(2):  # the second call reuses every field
        memoised = propagate_to_volume(moving_shape.image, annotations, 4, settings=memo)
        np.testing.assert_array_equal(memoised.probabilities, plain.probabilities)


def test_class_whose_region_stops_looking_like_the_annotation_fades_sooner():
    # A bright disc on slices 0..11 of 20 that vanishes abruptly (a valve plane, not a taper);
    # annotated on slices 4 and 10: past slice 11 the carried disc no longer matches the image.
    z, y, x = np.mgrid[:20, :48, :40]
    disc = ((y - 24) ** 2 + (x - 20) ** 2 <= 10**2) & (z < 12)
    rng = np.random.default_rng(0)
    image = np.where(disc, 0.8, 0.2) + 0.02 * rng.standard_normal(disc.shape)
    labels = disc.astype(np.uint8)
    annotations = annotate(labels, 0, [4, 10])
    beyond = {}
    default = PropagationSettings().presence_exponent
    for exponent in (0.0, default):
        # without the intensity model, which would also reject the vanished disc here, and
        # with a fade as slow as the annotator's gap, so that slices 0..3 stay
        settings = PropagationSettings(presence_exponent=exponent, intensity_weight=0.0, gap_factor=1.0)
        proxy = propagate_to_volume(image, annotations, 2, settings=settings)
        beyond[exponent] = int(np.count_nonzero(proxy.labels[12:]))
        assert dice(proxy.labels[:12], labels[:12], 1) > 0.95  # where it is, it stays
    assert default > 0 and beyond[default] < beyond[0.0]


def test_coarse_registration_levels_only_for_slices_far_apart():
    settings = PropagationSettings(demons=DemonsSettings(iterations=(20, 10)), coarse_min_step=1.5)
    assert demons_for_distance(settings, 3.0).iterations == (20, 10)  # 10-mm cardiac slices
    assert demons_for_distance(settings, 1.05).iterations == (0, 10)  # 1-mm slices


def _tube_cut_by_a_plane():
    """A striped bright tube running along z that drifts 1 pixel per slice in x (stripes and
    all, so registration follows it), labelled 1 left of column 30 and 2 from it on (alike on
    both sides: the cut is a convention, not an edge)."""
    z, y, x = np.mgrid[:15, :40, :64]
    shift = z - 7
    tube = (np.abs(y - 20) <= 5) & (np.abs(x - 32 - shift) <= 20)
    labels = np.where(tube, np.where(x < 30, 1, 2), 0).astype(np.uint8)
    rng = np.random.default_rng(1)
    stripes = 0.65 + 0.2 * np.sin(2 * np.pi * (x - shift) / 8.0)
    image = np.where(tube, stripes, 0.1) + 0.02 * rng.standard_normal(tube.shape)
    return image.astype(np.float32), labels


def test_a_border_the_image_does_not_show_stays_where_it_was_drawn():
    image, labels = _tube_cut_by_a_plane()
    annotations = annotate(labels, 0, [7])
    held = propagate_to_volume(image, annotations, 3).labels
    carried = propagate_to_volume(image, annotations, 3, settings=PropagationSettings(invisible_border_similarity=2.0)).labels
    for z in (4, 10):  # 3 slices from the annotation, the tube has drifted 3 pixels
        row = labels[z, 20]
        assert held[z, 20][row > 0].tolist() == row[row > 0].tolist()  # the cut stays at column 30
        assert (carried[z, 20] != row).sum() >= 2  # registration drags the cut along with the tube
    assert dice(held, labels, 1) > dice(carried, labels, 1) and dice(held, labels, 2) > dice(carried, labels, 2)


def test_only_alike_touching_classes_share_a_held_border():
    bins = 8
    bright, dark = np.zeros(bins), np.zeros(bins)
    bright[6], dark[1] = 1.0, 1.0
    model = np.stack([dark, bright, bright, dark, bright])  # classes 1, 2, 4 alike; 3 differs
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[2:8, 1:4], labels[2:8, 4:7], labels[2:8, 7:9] = 1, 2, 3  # 1|2 touch, 2|3 touch
    labels[0, 0] = 4  # alike but touching nothing
    groups = invisible_border_groups(model, [labels], similarity=0.9)
    assert [g.tolist() for g in groups] == [[1, 2]]


def test_between_two_annotations_the_held_split_mixes_them_by_distance_and_the_carried_split():
    first, second = np.full((1, 1), 1), np.full((1, 1), 2)  # one pixel: class 1 at 0, 2 at 4
    probabilities = np.full((3, 6, 1, 1), 1.0 / 3.0, dtype=np.float32)
    probabilities[:, 5, 0, 0] = (0.3, 0.6, 0.1)  # beyond the last annotation only it counts ...
    hold_invisible_borders(probabilities, {0: first, 4: second}, [np.array([1, 2])])
    np.testing.assert_allclose(probabilities[:, 1, 0, 0], [1 / 3, 0.5, 1 / 6], atol=1e-5)  # 3/4 : 1/4
    np.testing.assert_allclose(probabilities[:, 3, 0, 0], [1 / 3, 1 / 6, 0.5], atol=1e-5)
    np.testing.assert_allclose(probabilities[:, 5, 0, 0], [0.3, 0.0, 0.7], atol=1e-5)  # ... as class 2
    assert probabilities.dtype == np.float32


def test_adjacent_annotated_slices_do_not_cut_a_structure_off():
    # A long bright cylinder (slices 2..27 of 30) annotated on two neighbouring slices, as a
    # corrective annotator does: the mean gap (1 slice) says nothing about where it ends, so
    # the proxy must still reach well beyond them.
    z, y, x = np.mgrid[:30, :40, :36]
    tube = ((y - 20) ** 2 + (x - 18) ** 2 <= 8**2) & (z >= 2) & (z < 28)
    rng = np.random.default_rng(1)
    image = np.where(tube, 0.8, 0.2) + 0.02 * rng.standard_normal(tube.shape)
    labels = tube.astype(np.uint8)
    proxy = propagate_to_volume(image, annotate(labels, 0, [14, 15]), 2)
    reached = [int(s) for s in np.flatnonzero(proxy.labels.reshape(30, -1).any(axis=1))]
    assert reached[0] <= 11 and reached[-1] >= 18
    limited = propagate_to_volume(
        image, annotate(labels, 0, [14, 15]), 2, settings=PropagationSettings(gap_limit_from=0.0)
    )
    assert np.count_nonzero(limited.labels) < np.count_nonzero(proxy.labels)


def test_a_snapped_roi_lets_a_slightly_moved_annotation_reuse_every_field(moving_shape):
    """Rounds whose annotations differ by a pixel at the structure's edge: with the ROI on a
    grid they register the same crops (no new field), without it every pair anew."""
    annotations = annotate(moving_shape.labels, 0, [8, 20])
    moved = [SliceAnnotation(a.axis, a.index, a.labels.copy()) for a in annotations]
    rows, cols = np.nonzero(moved[0].labels)
    moved[0].labels[rows.max() + 1, cols[rows.argmax()]] = moved[0].labels[rows.max(), cols[rows.argmax()]]

    def misses(settings: PropagationSettings) -> int:
        propagate_to_volume(moving_shape.image, annotations, 4, settings=settings)
        before = field_cache_counts()["misses"]
        propagate_to_volume(moving_shape.image, moved, 4, settings=settings)
        return field_cache_counts()["misses"] - before

    assert misses(PropagationSettings(memoise_fields=True)) > 0
    assert misses(PropagationSettings(memoise_fields=True, roi_grid_fraction=0.25)) == 0


def test_the_roi_snaps_outwards_to_the_grid_within_the_plane():
    settings = PropagationSettings(roi_margin_fraction=0.0, roi_margin_min=0, roi_grid_fraction=0.25)
    # plane 40 x 72: grid round(0.25 * 40) = 10 pixels
    assert roi_box((13, 21, 27, 66), (40, 72), settings) == (10, 20, 30, 70)
    assert roi_box((3, 65, 38, 71), (40, 72), settings) == (0, 60, 40, 72)  # clipped to the plane
    assert roi_box((13, 21, 27, 66), (40, 72), PropagationSettings(roi_margin_fraction=0.0, roi_margin_min=0)) == (
        13, 21, 27, 66
    )
