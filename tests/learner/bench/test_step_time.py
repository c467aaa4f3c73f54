import json

import pytest
import torch

from learner.bench.step_time import main, synthetic_batch
from registration.io.volume import UNLABELLED


def test_synthetic_batch_has_every_class_scribbled():
    batch = synthetic_batch(size=32, batch=2, num_classes=3)
    assert batch["image"].shape == (2, 1, 32, 32)
    drawn = set(batch["scribble"].unique().tolist()) - {UNLABELLED}
    assert drawn == {0, 1, 2}


@pytest.fixture
def keep_torch_threads():
    threads = torch.get_num_threads()  # main() sets the process-wide count
    yield
    torch.set_num_threads(threads)


def test_step_time_writes_one_result_per_method_and_layout(tmp_path, keep_torch_threads):
    out = tmp_path / "steps.json"
    assert main(["--methods", "pce,attention", "--layout", "channels_last,contiguous", "--size", "32",
                 "--batch", "2", "--steps", "1", "--warmup", "0", "--precision", "fp32",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    pairs = {(r["method"], r["layout"]) for r in report["results"]}
    assert pairs == {(m, x) for m in ("pce", "attention") for x in ("channels_last", "contiguous")}
    assert all(r["seconds_per_step"] > 0 for r in report["results"])
