"""The typed client (over the in-process app) and the simulated annotator."""

from __future__ import annotations

import numpy as np
import pytest

from clients.annotator import SimulatedAnnotator, strokes_from_scribble
from clients.bench_stream import StreamOptions, run_stream_benchmark
from clients.cli import build_parser, upload_files
from clients.client import ApiError, ScribbleflowClient
from registration.io.volume import UNLABELLED, read_volume, write_volume_atomic
from server import schemas
from server.services import interactions
from tests.helpers import make_token, synthetic_volume


@pytest.fixture
def admin_client(app, client):
    return ScribbleflowClient(token=make_token(app, "admin", "alice"), http=client)


def test_client_covers_projects_images_and_admin(admin_client, tmp_path):
    volume, _ = synthetic_volume(seed=2)
    path = write_volume_atomic(volume, tmp_path / "case.nii.gz")
    assert admin_client.health().status == "ok"
    project = admin_client.create_project("p", ["inner", "ring"], learning={"steps": 3})
    assert isinstance(project, schemas.ProjectOut) and project.learning.steps == 3
    sent = []
    image = admin_client.upload_image(project.id, path, name="first", progress=sent.append)
    assert image.name == "first" and sum(sent) == path.stat().st_size
    assert [i.id for i in admin_client.list_images(project.id)] == [image.id]
    assert admin_client.get_image(image.id).shape_zyx == [6, 32, 32]
    downloaded = read_volume(admin_client.download_image(image.id, tmp_path / "back.nii.gz"))
    np.testing.assert_array_equal(downloaded.array, volume.array)
    assert admin_client.next_image(project.id).image.id == image.id
    assert admin_client.list_models(project.id).serving_version == 0
    assert admin_client.serving_model(project.id).version == 0
    assert admin_client.update_learning(project.id, steps=4).learning.steps == 4
    created = admin_client.create_token("annotator", "bob")
    assert created.token.startswith("sf_") and {t.owner for t in admin_client.list_tokens()} == {"alice", "bob"}
    assert admin_client.revoke_token(created.id).revoked_at is not None
    assert [e.action for e in admin_client.audit(project_id=project.id)] == [
        "project_create", "upload", "settings_change"]
    assert admin_client.learning_curve(project.id).images[0].image_id == image.id
    assert "scribbleflow_uploads_total" in admin_client.metrics()
    admin_client.delete_image(image.id)
    with pytest.raises(ApiError) as error:
        admin_client.get_image(image.id)
    assert error.value.status == 404 and "not found" in error.value.detail


def test_client_sessions_with_the_simulated_annotator(admin_client, tmp_path):
    volume, label = synthetic_volume(seed=4)
    project = admin_client.create_project("s", ["inner", "ring"])
    image = admin_client.upload_image(project.id, write_volume_atomic(volume, tmp_path / "c.nii.gz"))
    annotator = SimulatedAnnotator(admin_client, num_classes=3, seed=1, mode="labelmap")
    record = annotator.annotate(image, label, max_rounds=2, accept=True)
    assert [r.round.number for r in record.rounds] == [1, 2]
    assert len({(r.axis, r.slice) for r in record.rounds}) == 2  # never the same slice twice
    assert all(set(r.dice) == {1, 2} and set(r.proxy_dice) == {1, 2} for r in record.rounds)
    assert record.rounds[0].model_version == 0 and record.rounds[0].model_weight == 0.0  # untrained: proxy only
    assert record.rounds[1].mean_dice >= record.rounds[0].mean_dice - 0.02  # a correction does not hurt
    assert record.accepted.image.status == "accepted"
    final = read_volume(admin_client.download_label(image.id, tmp_path / "label.nii.gz"))
    assert final.spacing_xyz == pytest.approx(volume.spacing_xyz)
    rounds = admin_client.image_rounds(image.id)
    assert all(r.created_by == "alice" for r in rounds)
    seg = admin_client.download_round_file(rounds[-1].id, "segmentation", tmp_path / "s.nii.gz")
    np.testing.assert_array_equal(read_volume(seg).array, final.array)


def test_stroke_mode_paints_exactly_the_simulated_scribble(admin_client, tmp_path):
    from learner.scribbles import simulate_scribbles

    volume, label = synthetic_volume(seed=5)
    scribble = simulate_scribbles(label, num_classes=3, slices=[3], seed=2).scribble
    strokes = strokes_from_scribble(scribble)
    checked = interactions.check_round(schemas.RoundCreate(scribbles=strokes), volume, 3)
    painted = interactions.paint_round(checked, volume, 3, 0, None)
    np.testing.assert_array_equal(painted.seeds, scribble)

    project = admin_client.create_project("k", ["inner", "ring"])
    image = admin_client.upload_image(project.id, write_volume_atomic(volume, tmp_path / "k.nii.gz"))
    annotator = SimulatedAnnotator(admin_client, num_classes=3, seed=2, mode="strokes")
    record = annotator.annotate(image, label, max_rounds=1, accept=False)
    sent = read_volume(admin_client.download_round_file(record.rounds[0].round.id, "input", tmp_path / "i.nii.gz"))
    assert record.rounds[0].round.effort.voxels == int((sent.array != UNLABELLED).sum()) > 0


def test_annotator_pauses_before_each_round_as_a_person_draws(admin_client, tmp_path):
    volume, label = synthetic_volume(seed=6)
    project = admin_client.create_project("think", ["inner", "ring"])
    image = admin_client.upload_image(project.id, write_volume_atomic(volume, tmp_path / "t.nii.gz"))
    pauses: list[float] = []
    annotator = SimulatedAnnotator(admin_client, num_classes=3, seed=3, think_seconds=4.0, sleep=pauses.append)
    record = annotator.annotate(image, label, max_rounds=2, target_dice=None, accept=False)
    assert len(record.rounds) == 2 and len(pauses) == 2
    assert all(2.0 <= p <= 6.0 for p in pauses) and pauses[0] != pauses[1]  # 0.5-1.5 x the mean, drawn anew
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="think_seconds"):
            SimulatedAnnotator(admin_client, num_classes=3, think_seconds=bad)


def test_bench_stream_refuses_a_pause_longer_than_a_lease_allows(tmp_path):
    for seconds in (-1.0, 121.0):
        with pytest.raises(ValueError, match="--think-seconds"):
            run_stream_benchmark(StreamOptions(data=str(tmp_path), holdout=str(tmp_path), out=str(tmp_path / "o.json"),
                                               think_seconds=seconds))


def test_cli_finds_upload_files_and_parses_commands(tmp_path):
    for name in ("b.nii.gz", "a.nrrd", "notes.txt", "c.zip"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in upload_files([str(tmp_path)])] == ["a.nrrd", "b.nii.gz", "c.zip"]
    args = build_parser().parse_args(["--token", "t", "upload", "--project", "3", str(tmp_path)])
    assert args.project == 3 and args.paths == [str(tmp_path)]
    with pytest.raises(FileNotFoundError):
        upload_files([str(tmp_path / "missing")])
