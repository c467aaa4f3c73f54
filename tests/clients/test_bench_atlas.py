"""The atlas benchmark: each volume's truth carried onto the next by registration, scored."""

from __future__ import annotations

import json

import pytest

from clients import bench_atlas
from tests.helpers import write_h5_dataset


def test_atlas_bench_carries_each_volume_onto_the_next(tmp_path):
    data = write_h5_dataset(tmp_path / "data", 3, shape_zyx=(5, 32, 40))
    out = tmp_path / "atlas.json"
    bench_atlas.main(["--data", str(data), "--out", str(out)])
    report = json.loads(out.read_text())
    assert [r["atlas"] for r in report["rows"]] == ["case000", "case001"]
    assert all(0.0 <= r["dice"] <= 1.0 and -1.0 <= r["similarity"] <= 1.0 for r in report["rows"])
    assert report["summary"]["volumes"] == 2
    with pytest.raises(SystemExit, match="two"):
        bench_atlas.main(["--data", str(data), "--limit", "1"])
