"""End to end over real HTTP: ``scribbleflow serve`` (uvicorn) as a subprocess on loopback.

Create a project, upload three ACDC validation volumes as NIfTI (with geometry set), hold
the third out for validation and accept its full label, open a session on the first,
submit rounds of simulated scribbles through the typed client, download the segmentation
(same geometry as the upload), accept; the training job runs, the promotion gate measures
the candidate on the held-out image and serves it, and its Dice on the next image clears a
floor; then the server process restarts and everything is still there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.annotator import SimulatedAnnotator
from clients.client import ScribbleflowClient
from clients.server_process import ServerProcess
from registration.io.volume import Volume, read_volume, write_volume_atomic
from tests.helpers import ACDC_VAL

SPACING_XYZ = (1.5, 1.5, 10.0)
ORIGIN_XYZ = (-120.0, -95.5, 30.0)
TRAINING_SECONDS = 420
# One accepted image of three rounds teaches the size-64 network enough to clear these on an
# unseen image; the untrained version 0 opens with no structure (Dice 0). Measured 2026-11-29 at load 4-7 (600 steps,
# five runs): next image 0.24-0.47, gate on the held-out image 0.28-0.39. The run-to-run
# spread (bf16 and thread counts that change with the load) is why the floors sit well
# below the typical values; a model that labels everything background or LV stays under.
NEW_MODEL_DICE_FLOOR = 0.15
GATE_MARGIN = 0.1

pytestmark = pytest.mark.slow


def acdc_cases(count: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from learner.data import case_paths, load_case

    paths = case_paths(ACDC_VAL)[:count]
    cases = []
    for image_path, label_path in paths:
        case = load_case(image_path, label_path)
        cases.append((case.name, case.image.array.astype(np.float32), case.label.astype(np.int64)))
    return cases


def dice_mean(prediction: np.ndarray, truth: np.ndarray, num_classes: int) -> float:
    from learner.metrics import dice_per_class

    return float(np.mean(list(dice_per_class(prediction.astype(np.int64), truth, num_classes).values())))


@pytest.fixture(params=["sqlite", "postgresql"])
def server_env(request, tmp_path):
    env = dict(os.environ)
    env.update(
        SCRIBBLEFLOW_DATA_DIR=str(tmp_path / "data"),
        # Size 64 and 600 steps: one accepted ACDC image then teaches the small network
        # enough that the next image's Dice clears the floor below whatever the thread count
        # (100 steps at 128 sometimes left it all background under load: 0.0 vs 0.0).
        SCRIBBLEFLOW_MODEL_SIZE="64",
        SCRIBBLEFLOW_ONLINE_STEPS="600",
        SCRIBBLEFLOW_MODEL_CHANNELS="[8, 16, 32, 64, 128]",
        SCRIBBLEFLOW_VALIDATION_EVERY="0",  # the test holds its validation image out itself
        # Only the accept job trains: round jobs finish or are superseded depending on the
        # machine's load, and the replay slices they leave changed the new model's Dice on the
        # next image from 0.11 to 0.36 between runs. (Round jobs: tests/e2e/test_distributed.py.)
        SCRIBBLEFLOW_TRAIN_ON_ROUNDS="false",
        SCRIBBLEFLOW_COMPUTE_THREADS="1",
        SCRIBBLEFLOW_LOG_LEVEL="warning",
    )
    if request.param == "postgresql":
        env["SCRIBBLEFLOW_DATABASE_URL"] = request.getfixturevalue("database_url_postgresql")
    return env


@pytest.fixture
def database_url_postgresql(request):
    from tests.helpers import postgres_schema

    user, database = request.getfixturevalue("postgres_database")
    with postgres_schema(user, database, prefix="e2e") as url:
        yield url


def test_end_to_end_over_http_with_restart(server_env, tmp_path):
    if not ACDC_VAL.is_dir():
        pytest.skip(f"ACDC validation data not found at {ACDC_VAL}")
    cases = acdc_cases(3)
    num_classes = 4
    upload_dir = tmp_path / "upload"
    for name, image, _ in cases:
        write_volume_atomic(Volume(image, SPACING_XYZ, ORIGIN_XYZ), upload_dir / f"{name}.nii.gz")

    token = subprocess.run(
        [sys.executable, "-m", "server.cli", "token", "create", "--role", "admin", "--owner", "alice"],
        env=server_env, capture_output=True, encoding="utf-8", errors="replace", check=True, timeout=120,
    ).stdout.strip()
    server = ServerProcess(server_env, tmp_path / "server.log")
    server.start()
    try:
        with ScribbleflowClient(server.url, token, timeout=300) as client:
            project = client.create_project("acdc", ["RV", "Myo", "LV"])
            # Uploads through the client CLI (a directory, with a progress bar on stderr).
            uploaded = subprocess.run(
                [sys.executable, "-m", "clients.cli", "--url", server.url, "--token", token,
                 "upload", "--project", str(project.id), str(upload_dir)],
                capture_output=True, encoding="utf-8", errors="replace", check=True, timeout=300,
            )
            assert "uploading 3 file(s)" in uploaded.stderr
            listed = {Path(u["file"]).name: u["image_id"] for u in json.loads(uploaded.stdout)}
            images = [client.get_image(listed[f"{name}.nii.gz"]) for name, _, _ in cases]
            truths = {img.id: truth for img, (_, _, truth) in zip(images, cases, strict=True)}
            assert [i.spacing_xyz for i in images] == [list(SPACING_XYZ)] * 3

            # Version 0 on the image that comes after the first one (before any image is accepted,
            # which would make the opening an atlas proxy).
            following = images[1]
            probe = client.open_session(following.id)
            assert probe.model_version == 0 and probe.prediction_source == "model"
            v0_path = client.download_session_file(probe.id, "prediction", tmp_path / "v0.nii.gz")
            dice_v0 = dice_mean(read_volume(v0_path).array, truths[following.id], num_classes)
            client.close_session(probe.id)

            # The third image is held out for the promotion gate with its full label, as a team
            # would annotate a validation image completely; accepting it trains nothing.
            held_out = client.set_validation(images[2].id, True)
            assert held_out.is_validation
            validation_session = client.open_session(held_out.id)
            full_label = tmp_path / "validation_label.nii.gz"
            write_volume_atomic(Volume(truths[held_out.id].astype(np.uint8), SPACING_XYZ, ORIGIN_XYZ), full_label)
            client.submit_labelmap(validation_session.id, full_label)
            assert client.accept(validation_session.id).job_id is None

            first = client.next_image(project.id).image
            assert first.id == images[0].id
            annotator = SimulatedAnnotator(client, num_classes, seed=7, evaluate=True)
            record = annotator.annotate(first, truths[first.id], max_rounds=3, accept=False)
            assert [r.round.number for r in record.rounds] == [1, 2, 3]
            last = record.rounds[-1].round
            segmentation = read_volume(client.download_round_file(last.id, "segmentation", tmp_path / "seg.nii.gz"))
            assert segmentation.shape_zyx == tuple(first.shape_zyx)
            assert segmentation.spacing_xyz == pytest.approx(SPACING_XYZ)
            assert segmentation.origin_xyz == pytest.approx(ORIGIN_XYZ)
            assert segmentation.direction == pytest.approx(first.direction)
            residual = read_volume(client.download_round_file(last.id, "residual", tmp_path / "res.nii.gz"))
            assert residual.shape_zyx == tuple(first.shape_zyx)
            accepted = client.accept(record.session_id)
            assert accepted.image.status == "accepted" and accepted.job_id is not None

            jobs = client.wait_for_jobs(project.id, timeout=TRAINING_SECONDS)
            assert any(j.state == "succeeded" for j in jobs), [(j.id, j.state, j.message) for j in jobs]
            models = client.list_models(project.id)
            assert models.serving_version is not None and models.serving_version > 0
            # The gate decided on the held-out image: both versions measured on it, and the
            # candidate served because it beat version 0 there by a margin.
            versions = {v.version: v for v in models.versions}
            candidate, initial = versions[models.serving_version], versions[0]
            assert candidate.promoted and candidate.metrics["val_cases"] == 1, candidate
            assert candidate.metrics["val_dice"] >= initial.metrics["val_dice"] + GATE_MARGIN, (candidate, initial)
            assert client.next_image(project.id).image.id == following.id

            # A trained model opens the next image (the atlas beside it is a project setting, off).
            session = client.open_session(following.id)
            assert session.model_version == models.serving_version and session.prediction_source == "model"
            assert "alternative" not in session.links
            new_path = client.download_session_file(session.id, "prediction", tmp_path / "vn.nii.gz")
            dice_new = dice_mean(read_volume(new_path).array, truths[following.id], num_classes)
            print(f"e2e Dice on the next image: version 0 {dice_v0:.3f}, version {models.serving_version} "
                  f"{dice_new:.3f}; gate {initial.metrics['val_dice']:.3f} -> {candidate.metrics['val_dice']:.3f}")
            assert dice_new >= NEW_MODEL_DICE_FLOOR and dice_new > dice_v0, (dice_new, dice_v0)

            before = {
                "projects": [p.model_dump() for p in client.list_projects()],
                "images": [i.model_dump() for i in client.list_images(project.id)],
                "rounds": [r.model_dump() for r in client.image_rounds(first.id)],
                "models": client.list_models(project.id).model_dump(),
                "audit": [e.model_dump() for e in client.project_audit(project.id)],
            }
    finally:
        server.stop()

    server.start()
    try:
        with ScribbleflowClient(server.url, token, timeout=300) as client:
            after = {
                "projects": [p.model_dump() for p in client.list_projects()],
                "images": [i.model_dump() for i in client.list_images(project.id)],
                "rounds": [r.model_dump() for r in client.image_rounds(first.id)],
                "models": client.list_models(project.id).model_dump(),
                "audit": [e.model_dump() for e in client.project_audit(project.id)],
            }
            assert after == before
            again = read_volume(client.download_round_file(last.id, "segmentation", tmp_path / "again.nii.gz"))
            np.testing.assert_array_equal(again.array, segmentation.array)
            label = read_volume(client.download_label(first.id, tmp_path / "label.nii.gz"))
            assert label.spacing_xyz == pytest.approx(SPACING_XYZ)
            # The lease survived the restart too: alice's session on the next image is still hers.
            assert client.open_session(following.id).id == session.id
    finally:
        server.stop()
