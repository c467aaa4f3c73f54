"""Largest-component clean-up of predicted label volumes (non-cubic (z, y, x) volumes)."""

from __future__ import annotations

import numpy as np
import pytest

from learner.postprocess import keep_largest_component, postprocess_labels


def test_each_class_keeps_only_its_largest_3d_component():
    labels = np.zeros((4, 10, 7), dtype=np.int64)
    labels[1:3, 2:6, 1:4] = 1  # the structure, 24 voxels over two slices
    labels[0, 8, 5] = 1  # a stray voxel of class 1
    labels[3, 0:2, 5:7] = 2  # class 2: a 4-voxel piece ...
    labels[0, 0, 0] = 2  # ... and a 1-voxel piece
    out = keep_largest_component(labels, 3)
    expected = labels.copy()
    expected[0, 8, 5] = 0
    expected[0, 0, 0] = 0
    assert (out == expected).all()
    assert (labels[0, 8, 5], labels[0, 0, 0]) == (1, 2)  # the input is not modified


def test_components_connect_across_slices_and_classes_do_not_merge():
    labels = np.zeros((3, 5, 6), dtype=np.int64)
    labels[0, 1, 1] = 1
    labels[1, 1, 1] = 1  # connected to the voxel above through the slice axis
    labels[2, 4, 5] = 1  # alone
    labels[1, 1, 2] = 2  # touching class 1, but another class
    out = keep_largest_component(labels, 3)
    assert out[0, 1, 1] == out[1, 1, 1] == 1 and out[2, 4, 5] == 0 and out[1, 1, 2] == 2


def test_postprocess_none_is_the_identity_and_unknown_names_are_refused():
    labels = np.zeros((2, 3, 4), dtype=np.int64)
    labels[0, 0, 0] = labels[1, 2, 3] = 1
    assert (postprocess_labels(labels, 2, "none") == labels).all()
    assert postprocess_labels(labels, 2, "largest_component").sum() == 1
    with pytest.raises(ValueError, match="post-processing"):
        postprocess_labels(labels, 2, "smooth")


def test_the_cli_offers_exactly_the_postprocessing_choices():
    import argparse

    from learner.commands import add_training_arguments
    from learner.postprocess import POSTPROCESSING

    parser = argparse.ArgumentParser()
    add_training_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "postprocess")
    assert tuple(action.choices) == POSTPROCESSING
    args = parser.parse_args(["--train", "t", "--val", "v", "--method", "pce"])
    assert args.postprocess is None  # TrainSettings' default applies


def test_benchmark_table_has_one_row_per_report_with_its_numbers():
    from learner.bench.table import markdown_table

    split = {"mean_dice": 0.8125, "hd95_unit": "voxels",
             "per_class": {"2": {"dice": 0.75, "hd95": None}, "1": {"dice": 0.875, "hd95": 3.25}}}
    report = {"method": "distill", "minutes": 30, "iterations": 1487, "iterations_per_second": 0.826,
              "precision": "bf16", "postprocess": "largest_component", "best_iteration": 1400,
              "data": {"train": "/data/acdc/train"}, "val": split, "test": split,
              "load_average": {"start": 0.9, "end": 2.03}}
    lines = markdown_table([report]).splitlines()
    assert len(lines) == 3 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    row = lines[2]
    for text in ("distill", "acdc/train", "1487", "0.83", "**0.812**", "0.875 / 0.750", "3.2 / —", "0.9 / 2.0"):
        assert text in row
