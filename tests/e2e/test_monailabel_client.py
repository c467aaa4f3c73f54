"""The real MONAI Label client (``monailabel.client.MONAILabelClient``, in its own venv) drives
``scribbleflow serve`` over HTTP on loopback, as 3D Slicer's MONAI Label module does: log in,
info, next sample, upload, infer (segmentation, scribbles, clicks), save the final label,
training start/status, label download. The answers are checked in the client's process
(``tests/e2e/monailabel/client_script.py``) and here (volumes, geometry, the stored label).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.server_process import ServerProcess
from registration.io.volume import read_volume, write_volume_atomic
from tests.e2e.monailabel.venv import monailabel_python
from tests.helpers import synthetic_volume

SCRIPT = Path(__file__).resolve().parent / "monailabel" / "client_script.py"
LABELS = ["inner", "ring"]
PASSWORD = "bob-has-a-long-password"


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], env=env, input=stdin, capture_output=True,
        encoding="utf-8", check=True, timeout=120,
    ).stdout.strip()


def test_monailabel_client_against_the_server(tmp_path):
    python = monailabel_python()
    env = dict(os.environ)
    env.update(
        SCRIBBLEFLOW_DATA_DIR=str(tmp_path / "data"), SCRIBBLEFLOW_MODEL_SIZE="32",
        SCRIBBLEFLOW_MODEL_CHANNELS="[4, 8, 16]", SCRIBBLEFLOW_ONLINE_STEPS="2",
        SCRIBBLEFLOW_VALIDATION_EVERY="0", SCRIBBLEFLOW_COMPUTE_THREADS="1", SCRIBBLEFLOW_LOG_LEVEL="warning",
    )
    admin = _cli(env, "token", "create", "--role", "admin", "--owner", "alice")
    _cli(env, "user", "create", "--name", "bob", "--role", "annotator", "--password-stdin", stdin=PASSWORD + "\n")

    volume, truth = synthetic_volume((6, 32, 40))
    files = tmp_path / "files"
    write_volume_atomic(volume, files / "case1.nii.gz")
    # The viewer's scribble labelmap: segments in 3D Slicer's order, scribble layers last.
    scribbles = np.zeros(truth.shape, dtype=np.uint8)
    scribbles[3][truth[3] == 1] = 4  # foreground_scribbles
    scribbles[3][:, :3] = 3  # background_scribbles
    write_volume_atomic(volume, files / "scribbles.nii.gz", scribbles)
    # The final label as 3D Slicer exports it: segment values in its own order (ring first).
    final = np.select([truth == 1, truth == 2], [2, 1], 0).astype(np.uint8)
    write_volume_atomic(volume, files / "label.nii.gz", final)
    inputs = {
        "tmpdir": str(tmp_path / "client"), "username": "bob", "password": PASSWORD, "labels": LABELS,
        "image": str(files / "case1.nii.gz"), "scribbles": str(files / "scribbles.nii.gz"),
        "label": str(files / "label.nii.gz"),
        "label_info": [{"name": "inner", "id": 1}, {"name": "ring", "id": 2},
                       {"name": "background_scribbles", "id": 3}, {"name": "foreground_scribbles", "id": 4}],
        "final_label_info": [{"name": "ring", "idx": 1}, {"name": "inner", "idx": 2}],
        "foreground": [[20, 16, 2]], "background": [[1, 1, 2]],  # (i, j, k)
    }
    (tmp_path / "client").mkdir()
    (tmp_path / "inputs.json").write_text(json.dumps(inputs))

    server = ServerProcess(env, tmp_path / "server.log")
    server.start()
    try:
        import httpx

        created = httpx.post(f"{server.url}/api/v1/projects", json={"name": "heart", "labels": LABELS},
                             headers={"Authorization": f"Bearer {admin}"}, timeout=60)
        assert created.status_code == 201, created.text
        ran = subprocess.run(
            [str(python), str(SCRIPT), server.url, str(tmp_path / "inputs.json"), str(tmp_path / "out.json")],
            capture_output=True, encoding="utf-8", timeout=300,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr + (tmp_path / "server.log").read_text()[-3000:]
        out = json.loads((tmp_path / "out.json").read_text())
        images = httpx.get(f"{server.url}/api/v1/projects/{created.json()['id']}/images",
                           headers={"Authorization": f"Bearer {admin}"}, timeout=60).json()
    finally:
        server.stop()

    assert out["info"]["models"]["scribbles"]["labels"] == {"inner": 1, "ring": 2}
    assert out["segmentation"]["params"]["label_names"] == {"background": 0, "inner": 1, "ring": 2}
    segmentation = read_volume(out["segmentation"]["file"])
    assert segmentation.shape_zyx == volume.shape_zyx
    assert segmentation.spacing_xyz == pytest.approx(volume.spacing_xyz)
    assert segmentation.origin_xyz == pytest.approx(volume.origin_xyz)
    # Scribbles and clicks named one label: the result is that label's mask, as the viewers import it.
    for name in ("scribbles", "clicks"):
        result = read_volume(out[name]["file"])
        assert out[name]["params"]["label_names"] == {"background": 0, "inner": 1}
        assert result.shape_zyx == volume.shape_zyx and set(np.unique(result.array)) <= {0, 1}
    scribbled = read_volume(out["scribbles"]["file"]).array
    assert scribbled[3][truth[3] == 1].all(), "foreground scribbles are kept as drawn"
    assert not scribbled[3][:, :3].any(), "background scribbles are kept as drawn"
    # The saved final label is the image's accepted label, in project values, and trains the model.
    downloaded = read_volume(out["label_file"])
    np.testing.assert_array_equal(downloaded.array, truth)
    assert downloaded.spacing_xyz == pytest.approx(volume.spacing_xyz)
    assert out["saved"]["job_id"] is not None
    assert out["train"]["start"]["request"]["image"] == "case1"
    assert [i["status"] for i in images] == ["accepted"]
