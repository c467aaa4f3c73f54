"""The first-slice benchmark: the annotator's first drawing, densified and scored."""

from __future__ import annotations

import json

import pytest

from clients.bench_first_slice import main
from tests.helpers import write_h5_dataset


@pytest.mark.parametrize("mode", ["strokes", "clicks"])
def test_scores_every_labelled_slice_with_and_without_the_background_stroke(tmp_path, mode):
    data = write_h5_dataset(tmp_path / "data", 1, shape_zyx=(5, 32, 40))
    summaries, drawn = {}, {}
    for without in (False, True):
        out = tmp_path / f"first_{without}.json"
        main(["--data", str(data), "--mode", mode, "--out", str(out)] + (["--without-background"] if without else []))
        report = json.loads(out.read_text())
        assert report["summary"]["slices"] == len(report["rows"]) > 0
        assert all(0.0 <= r["dice"] <= 1.0 and r["flooded_pixels"] >= 0 for r in report["rows"])
        summaries[without] = report["summary"]
        drawn[without] = [r["drawn_pixels"] for r in report["rows"]]
    assert summaries[True]["without_background"] and not summaries[False]["without_background"]
    assert summaries[True]["mode"] == summaries[False]["mode"] == mode
    assert summaries[True]["skipped_slices"] == summaries[False]["skipped_slices"]
    # the same slices, each drawn with fewer pixels once the background stroke is left out
    assert all(a < b for a, b in zip(drawn[True], drawn[False], strict=True))


def test_a_directory_without_volumes_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=str(tmp_path)):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "x.json")])

