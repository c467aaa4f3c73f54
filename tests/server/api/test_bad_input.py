"""Bad input: each case is a 4xx naming the problem, never a 500, and nothing is half-stored."""

from __future__ import annotations

import gzip
import io
import zipfile

import numpy as np
import pytest
from sqlalchemy import func, select

from tests.helpers import synthetic_volume, volume_bytes


def _upload(client, project_id, headers, name, content):
    return client.post(f"/api/v1/projects/{project_id}/images", files={"file": (name, io.BytesIO(content))},
                       headers=headers)


def assert_nothing_stored(app):
    """No image rows, no image folders, no temporary upload files."""
    from server.storage.tables import Image

    ctx = app.state.context
    with ctx.session_factory() as db:
        assert db.scalar(select(func.count(Image.id))) == 0
    images_dirs = list(ctx.datastore.root.glob("projects/*/images/*"))
    assert images_dirs == []
    assert [p.name for p in ctx.datastore.tmp_dir.iterdir()] == []


def assert_problem(response, status: int, *words: str):
    assert response.status_code == status, response.text
    detail = response.json()["detail"].lower()
    for word in words:
        assert word.lower() in detail, detail


def test_wrong_file_type(app, client, project, annotator_headers):
    response = _upload(client, project["id"], annotator_headers, "photo.png", b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    assert_problem(response, 415, "unsupported file type", ".png")
    assert_nothing_stored(app)


def test_corrupt_nifti(app, client, project, annotator_headers):
    response = _upload(client, project["id"], annotator_headers, "scan.nii.gz", gzip.compress(b"not a nifti" * 50))
    assert_problem(response, 400, "nifti")
    response = _upload(client, project["id"], annotator_headers, "scan.nii.gz", b"\x1f\x8b" + b"\x00" * 64)
    assert_problem(response, 400, "nifti", "gzip")
    assert_nothing_stored(app)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_nifti(app, client, project, annotator_headers, suffix):
    volume, _ = synthetic_volume((6, 32, 32))
    content = volume_bytes(volume, suffix)
    response = _upload(client, project["id"], annotator_headers, f"scan{suffix}", content[: len(content) * 2 // 3])
    assert_problem(response, 400, "truncated")
    assert_nothing_stored(app)


def test_zip_that_is_not_a_dicom_series(app, client, project, annotator_headers):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
        archive.writestr("folder/report.pdf", b"%PDF-1.4 nothing")
    response = _upload(client, project["id"], annotator_headers, "study.zip", buffer.getvalue())
    assert_problem(response, 400, "zip", "dicom series")
    response = _upload(client, project["id"], annotator_headers, "study.zip", b"PK\x03\x04 broken archive")
    assert_problem(response, 400, "zip")
    assert_nothing_stored(app)


def test_upload_over_the_size_limit(app, client, project, annotator_headers):
    limit = app.state.context.settings.max_upload_bytes
    content = b"\x00" * (limit + 1024)
    response = _upload(client, project["id"], annotator_headers, "huge.nii", content)
    assert_problem(response, 413, "larger than", "limit")
    assert_nothing_stored(app)


def test_not_a_3d_volume(app, client, project, annotator_headers):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.zeros((8, 8), dtype=np.float32))
    buffer = io.BytesIO()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flat.nii.gz"
        sitk.WriteImage(image, str(path))
        buffer.write(path.read_bytes())
    response = _upload(client, project["id"], annotator_headers, "flat.nii.gz", buffer.getvalue())
    assert_problem(response, 400, "3d")
    assert_nothing_stored(app)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/projects/999",
        "/api/v1/projects/999/images",
        "/api/v1/projects/999/models",
        "/api/v1/projects/999/jobs",
        "/api/v1/projects/999/stream/next",
        "/api/v1/images/999",
        "/api/v1/images/999/volume",
        "/api/v1/sessions/999",
        "/api/v1/rounds/999",
        "/api/v1/rounds/999/segmentation",
        "/api/v1/jobs/999",
    ],
)
def test_unknown_ids_are_404(client, annotator_headers, path):
    response = client.get(path, headers=annotator_headers)
    assert_problem(response, 404, "999", "not found")


def test_unknown_model_version_and_file_names_are_404(client, project, uploaded_image, annotator_headers):
    response = client.get(f"/api/v1/projects/{project['id']}/models/42", headers=annotator_headers)
    assert_problem(response, 404, "version 42")
    response = client.get(f"/api/v1/images/{uploaded_image['id']}/label", headers=annotator_headers)
    assert_problem(response, 404, "no accepted label")
    response = client.post("/api/v1/images/999/sessions", json={}, headers=annotator_headers)
    assert_problem(response, 404, "image 999")


def test_invalid_project_requests(client, admin_headers, project):
    response = client.post("/api/v1/projects", json={"name": "heart", "labels": ["a"]}, headers=admin_headers)
    assert_problem(response, 409, "exists")
    response = client.post("/api/v1/projects", json={"name": "x", "labels": []}, headers=admin_headers)
    assert_problem(response, 422, "labels")
    response = client.post("/api/v1/projects", json={"name": "y", "labels": ["a", "a"]}, headers=admin_headers)
    assert_problem(response, 422, "distinct")
    for online, message in (({"size": 33}, "size"), ({"no_such_knob": 1}, "no_such_knob"),
                            ({"batch_size": 10_000}, "batch_size must be at most"),
                            ({"size": 64.0}, "size must be a whole number")):
        response = client.patch(f"/api/v1/projects/{project['id']}/learning", json={"online": online},
                                headers=admin_headers)
        assert_problem(response, 400, message)
    assert client.get(f"/api/v1/projects/{project['id']}", headers=admin_headers).json()["learning"] == project["learning"]



def test_nrrd_or_mha_pointing_at_another_server_file_is_rejected(app, client, project, annotator_headers, tmp_path):
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"TOPSECRET" * 16)
    nrrd = (b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 9\nencoding: raw\n"
            + f"data file: {secret}\n\n".encode())
    response = _upload(client, project["id"], annotator_headers, "scan.nrrd", nrrd)
    assert_problem(response, 400, "data file")
    mha = ("ObjectType = Image\nNDims = 3\nComment = ElementDataFile = LOCAL\nDimSize = 4 4 9\n"
           f"ElementType = MET_UCHAR\nElementDataFile = {secret}\n").encode()
    response = _upload(client, project["id"], annotator_headers, "scan.mha", mha)
    assert_problem(response, 400, "ElementDataFile = LOCAL")
    assert_nothing_stored(app)


def test_nifti_with_an_invalid_data_offset_is_rejected(app, client, project, annotator_headers):
    import struct

    volume, _ = synthetic_volume((6, 32, 32))
    content = bytearray(volume_bytes(volume, ".nii"))
    content[108:112] = struct.pack("<f", float("nan"))
    response = _upload(client, project["id"], annotator_headers, "scan.nii", bytes(content))
    assert_problem(response, 400, "nifti")
    assert_nothing_stored(app)


def test_streamed_upload_over_the_size_limit_without_content_length(app, client, project, annotator_headers):
    limit = app.state.context.settings.max_upload_bytes
    boundary = "scribbleflowboundary"

    def body():  # a generator: httpx sends it chunked, with no Content-Length header
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"huge.nii\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode()
        for _ in range(limit // 65536 + 2):
            yield b"\x00" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {**annotator_headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = client.post(f"/api/v1/projects/{project['id']}/images", content=body(), headers=headers)
    assert_problem(response, 413, "larger than", "limit")
    assert_nothing_stored(app)


def test_physical_point_mapping_to_an_infinite_index_is_outside_the_volume():
    from registration.io.volume import Volume
    from server.errors import BadInput
    from server.services.interactions import to_zyx

    geometry = Volume(np.zeros((4, 5, 6), dtype=np.float32), spacing_xyz=(0.5, 0.5, 0.5))
    with pytest.raises(BadInput, match="outside the volume"):
        to_zyx((1.7e308, 0.0, 0.0), "physical", geometry, "click 1")


def test_online_bounds_apply_to_changes_not_to_stored_settings():
    from learner.online import ONLINE_UPPER_BOUNDS, OnlineSettings, check_setting_change
    from server.settings import Settings

    # settings stored before the bounds existed still load (jobs, deletions, other PATCHes)
    assert OnlineSettings.from_dict({"batch_size": 200}).batch_size == 200
    with pytest.raises(ValueError, match="batch_size must be at most 64"):
        check_setting_change({"batch_size": 200})
    check_setting_change({"batch_size": 64, "learning_rate": 0.5})
    # the server's defaults for new projects use the same bounds
    limits = {name: field.metadata for name, field in Settings.model_fields.items()}
    for setting, online_name in (("model_size", "size"), ("replay_capacity", "replay_capacity")):
        upper = [m.le for m in limits[setting] if getattr(m, "le", None) is not None]
        assert upper == [ONLINE_UPPER_BOUNDS[online_name]]
