"""Image upload in every format, geometry kept, DICOM de-identified, download, stream, delete."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from registration.io.volume import read_volume
from tests.helpers import nifti_file, synthetic_volume, volume_bytes

PATIENT_NAME = "DOE^JOHNATHAN"
PATIENT_ID = "PID-99887766"


def dicom_series_zip(volume, folder: Path) -> bytes:
    """A DICOM series of ``volume`` (int16) with patient tags set, zipped."""
    image = volume.to_sitk(np.rint(volume.array * 1000).astype(np.int16))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(image.GetSize()[2]):
        plane = image[:, :, k]
        tags = {
            "0010|0010": PATIENT_NAME,
            "0010|0020": PATIENT_ID,
            "0010|0030": "19700101",
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.77.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.77.2",
            "0020|0013": str(k),
            "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(str(v) for v in (*direction[0:7:3], *direction[1:8:3])),
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"series/{path.name}")
    return buffer.getvalue()


def _upload(client, project, headers, name, content):
    return client.post(f"/api/v1/projects/{project['id']}/images", files={"file": (name, io.BytesIO(content))},
                       headers=headers)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_upload_keeps_array_and_geometry(client, project, annotator_headers, tmp_path, suffix):
    volume, _ = synthetic_volume((5, 24, 20), seed=3)
    response = _upload(client, project, annotator_headers, f"scan{suffix}", volume_bytes(volume, suffix))
    assert response.status_code == 201, response.text
    image = response.json()
    assert image["name"] == "scan" and image["shape_zyx"] == [5, 24, 20] and image["size_ijk"] == [20, 24, 5]
    assert image["spacing_xyz"] == pytest.approx(volume.spacing_xyz)
    assert image["origin_xyz"] == pytest.approx(volume.origin_xyz)
    assert image["direction"] == pytest.approx(volume.direction)
    download = client.get(image["links"]["volume"], headers=annotator_headers)
    assert download.status_code == 200
    path = tmp_path / "download.nii.gz"
    path.write_bytes(download.content)
    stored = read_volume(path)
    np.testing.assert_array_equal(stored.array, volume.array)
    assert stored.spacing_xyz == pytest.approx(volume.spacing_xyz)
    assert stored.origin_xyz == pytest.approx(volume.origin_xyz)
    assert stored.direction == pytest.approx(volume.direction)


def test_dicom_series_is_converted_without_patient_data(
    app, client, project, annotator_headers, admin_headers, tmp_path, caplog
):
    volume, _ = synthetic_volume((4, 16, 16), seed=1)
    # DICOM stores a right-handed frame (the slice normal is row x column): rotate, not mirror.
    volume.direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    content = dicom_series_zip(volume, tmp_path / "dicom")
    assert PATIENT_NAME.encode() in (tmp_path / "dicom" / "slice000.dcm").read_bytes()  # the test is meaningful
    with caplog.at_level(logging.DEBUG):
        response = _upload(client, project, annotator_headers, "study.zip", content)
    assert response.status_code == 201, response.text
    image = response.json()
    assert image["source_format"] == "dicom-zip" and image["shape_zyx"] == [4, 16, 16]
    assert image["spacing_xyz"] == pytest.approx(volume.spacing_xyz, abs=1e-4)
    assert image["origin_xyz"] == pytest.approx(volume.origin_xyz, abs=1e-4)
    assert image["direction"] == pytest.approx(volume.direction, abs=1e-6)
    # Neither stored (files, database) nor logged nor returned.
    for needle in (PATIENT_NAME, PATIENT_ID, "DOE", "19700101", "1.2.826.0.1.3680043.2.1125.77"):
        assert needle not in response.text
        assert needle not in caplog.text
        for path in app.state.context.settings.resolved_data_dir.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                if path.suffix == ".gz":
                    import gzip

                    data = gzip.decompress(data)
                assert needle.encode() not in data, path
    audit = client.get(f"/api/v1/images/{image['id']}/audit", headers=admin_headers)
    assert audit.status_code == 200 and [e["action"] for e in audit.json()] == ["upload"]
    assert PATIENT_NAME not in audit.text and PATIENT_ID not in audit.text


def test_uploads_join_the_stream_in_order(client, project, annotator_headers, admin_headers):
    ids = []
    for seed in range(3):
        volume, _ = synthetic_volume(seed=seed)
        response = client.post(f"/api/v1/projects/{project['id']}/images",
                               files=nifti_file(volume, f"case{seed}.nii.gz"), headers=annotator_headers)
        ids.append(response.json()["id"])
    listed = client.get(f"/api/v1/projects/{project['id']}/images", headers=annotator_headers).json()
    assert [i["id"] for i in listed] == ids
    assert [i["stream_position"] for i in listed] == [0, 1, 2]
    following = client.get(f"/api/v1/projects/{project['id']}/stream/next", headers=annotator_headers).json()
    assert following["image"]["id"] == ids[0] and following["remaining"] == 3
    by_uncertainty = client.get(f"/api/v1/projects/{project['id']}/stream/next?order=uncertainty",
                                headers=annotator_headers)
    assert by_uncertainty.status_code == 200 and by_uncertainty.json()["image"]["id"] in ids
    assert client.get(f"/api/v1/projects/{project['id']}", headers=admin_headers).json()["image_count"] == 3


def test_validation_images_are_held_out_every_nth_upload(client, admin_headers):
    response = client.post("/api/v1/projects", json={"name": "v", "labels": ["a"], "learning": {"validation_every": 2}},
                           headers=admin_headers)
    project = response.json()
    flags = []
    for seed in range(4):
        volume, _ = synthetic_volume(seed=seed)
        image = client.post(f"/api/v1/projects/{project['id']}/images", files=nifti_file(volume),
                            headers=admin_headers).json()
        flags.append(image["is_validation"])
    assert flags == [False, True, False, True]


def test_admin_deletes_image_and_its_files(app, client, uploaded_image, admin_headers):
    folder = app.state.context.datastore.resolve(f"projects/{uploaded_image['project_id']}/images")
    assert any(folder.iterdir())
    assert client.delete(f"/api/v1/images/{uploaded_image['id']}", headers=admin_headers).status_code == 204
    assert client.get(f"/api/v1/images/{uploaded_image['id']}", headers=admin_headers).status_code == 404
    assert not any(folder.iterdir())
    events = client.get(f"/api/v1/admin/audit?image_id={uploaded_image['id']}", headers=admin_headers).json()
    assert [e["action"] for e in events] == ["upload", "image_delete"]
    assert events[0]["actor"] == "bob" and events[1]["actor"] == "alice"
