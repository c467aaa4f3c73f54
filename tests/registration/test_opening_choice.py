"""The choice between a trained model's opening and the atlas's (``registration.opening_choice``)."""

from __future__ import annotations

import pytest

from registration.opening_choice import (
    ATLAS_MARGIN,
    PRIOR_OFFSET,
    RETIRE_AFTER,
    OpeningScore,
    atlas_retired,
    expected_atlas_dice,
    expected_model_dice,
    prefer_atlas,
)

# Two frames of one patient register well (similarity ~0.97) and the atlas scores ~0.8; two
# patients do not (~0.3) and it scores ~0.1; the young model scores 0.5 on either.
ONE_PATIENT = OpeningScore(similarity=0.97, model_dice=0.5, atlas_dice=0.8)
TWO_PATIENTS = OpeningScore(similarity=0.3, model_dice=0.5, atlas_dice=0.1)


def test_without_history_the_atlas_competes_with_the_models_validation_dice():
    expected = 0.8 - PRIOR_OFFSET
    assert expected_atlas_dice([], 0.8) == pytest.approx(expected)
    assert prefer_atlas([], similarity=0.8, validation_dice=None)  # an unmeasured model counts 0
    assert prefer_atlas([], similarity=0.8, validation_dice=expected - ATLAS_MARGIN - 0.01)
    assert not prefer_atlas([], similarity=0.8, validation_dice=expected - ATLAS_MARGIN + 0.01)
    assert not prefer_atlas([], similarity=-0.2, validation_dice=None)  # 0 against 0: the model


def test_the_atlas_is_judged_by_images_as_similar_and_the_model_by_recent_ones():
    history = [TWO_PATIENTS, ONE_PATIENT, TWO_PATIENTS, ONE_PATIENT]
    assert prefer_atlas(history, similarity=0.96, validation_dice=None)
    assert not prefer_atlas(history, similarity=0.32, validation_dice=None)
    # Close to the similar images the estimate follows them, not the prior.
    assert expected_atlas_dice(history, 0.3) == pytest.approx(0.1, abs=0.05)
    assert expected_atlas_dice(history, 0.97) == pytest.approx(0.8, abs=0.05)


def test_atlas_scores_from_before_the_first_model_count_and_missing_model_scores_do_not():
    before_training = [OpeningScore(0.97, None, 0.6), OpeningScore(0.96, None, 0.62)]
    assert expected_atlas_dice(before_training, 0.97) == pytest.approx(0.63, abs=0.04)
    assert expected_model_dice(before_training, 0.97, validation_dice=0.7) == 0.7
    assert not prefer_atlas(before_training, similarity=0.97, validation_dice=0.7)
    model_only = [OpeningScore(None, 0.4, None), OpeningScore(None, 0.45, None)]
    assert expected_model_dice(before_training + model_only, 0.97, validation_dice=0.7) == pytest.approx(0.425)
    assert prefer_atlas(before_training + model_only, similarity=0.97, validation_dice=0.7)


def test_a_model_that_has_grown_wins_even_where_the_atlas_is_good():
    grown = [OpeningScore(0.97, 0.9, 0.8), OpeningScore(0.3, 0.88, 0.1), OpeningScore(0.96, 0.91, 0.78)]
    history = [ONE_PATIENT, ONE_PATIENT, *grown, *grown]  # the young model's scores fall out of RECENT_PAIRS
    assert expected_model_dice(history, 0.6, None) == pytest.approx((0.9 + 0.88 + 0.91) / 3, abs=0.01)
    assert not prefer_atlas(history, similarity=0.97, validation_dice=None)
    assert prefer_atlas(history[:-3], similarity=0.97, validation_dice=None)


def test_the_model_too_is_judged_by_images_as_similar():
    """The model has trained on the atlas image: on a look-alike it scores high as well (ACDC's
    second frames), while on other images it is poorer."""
    other_patient = OpeningScore(0.3, 0.4, 0.1)
    second_frame = OpeningScore(0.97, 0.9, 0.75)
    history = [other_patient, second_frame, other_patient, second_frame, other_patient]
    assert expected_model_dice(history, 0.97, None) > expected_atlas_dice(history, 0.97) + ATLAS_MARGIN
    assert expected_model_dice(history, 0.3, None) < 0.45
    assert not prefer_atlas(history, similarity=0.97, validation_dice=None)


def test_the_atlas_retires_only_after_the_model_beats_its_best_on_each_of_the_last_images():
    lost = OpeningScore(0.7, 0.8, 0.6)
    won = OpeningScore(0.7, 0.6, 0.7)
    assert not atlas_retired([lost] * (RETIRE_AFTER - 1))
    assert atlas_retired([won] + [lost] * RETIRE_AFTER)
    assert not atlas_retired([lost] * RETIRE_AFTER + [won])
    assert not atlas_retired([lost] * (RETIRE_AFTER - 1) + [won] + [lost] * (RETIRE_AFTER - 1))
    # Losses where the atlas never had a chance do not retire it while it once scored more.
    best = OpeningScore(0.97, 0.5, 0.85)
    assert not atlas_retired([best] + [TWO_PATIENTS] * RETIRE_AFTER)
    assert atlas_retired([best] + [OpeningScore(0.3, 0.9, 0.1)] * RETIRE_AFTER)
    # Images scored for one source only do not count as pairs.
    assert not atlas_retired([OpeningScore(None, 0.9, None)] * RETIRE_AFTER)
