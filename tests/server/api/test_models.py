"""Model versions, checkpoint import (warm start), learning settings, learning curve, metrics."""

from __future__ import annotations

import io

import torch

from tests.helpers import checkpoint_bytes as _checkpoint_bytes


def test_new_project_serves_version_zero(client, project, annotator_headers):
    models = client.get(f"/api/v1/projects/{project['id']}/models", headers=annotator_headers).json()
    assert models["serving_version"] == 0
    [v0] = models["versions"]
    assert v0["serving"] and v0["source"] == "init"
    serving = client.get(f"/api/v1/projects/{project['id']}/models/serving", headers=annotator_headers).json()
    assert serving["version"] == 0
    assert project["serving_version"] == 0


def test_import_offline_checkpoint_as_starting_version(client, project, admin_headers, tmp_path):
    content = _checkpoint_bytes(tmp_path, num_classes=3, size=48)
    response = client.post(f"/api/v1/projects/{project['id']}/models/import",
                           files={"file": ("offline.pt", io.BytesIO(content))}, headers=admin_headers)
    assert response.status_code == 201, response.text
    imported = response.json()
    assert imported["version"] == 1 and imported["serving"] and imported["source"] == "imported"
    updated = client.get(f"/api/v1/projects/{project['id']}", headers=admin_headers).json()
    assert updated["serving_version"] == 1
    # The project now predicts at the size and with the widths the checkpoint was trained with.
    assert updated["learning"]["online"]["size"] == 48 and updated["learning"]["channels"] == [4, 8]
    versions = client.get(f"/api/v1/projects/{project['id']}/models", headers=admin_headers).json()["versions"]
    assert [(v["version"], v["serving"]) for v in versions] == [(0, False), (1, True)]
    events = client.get(f"/api/v1/projects/{project['id']}/audit", headers=admin_headers).json()
    assert events[-1]["action"] == "model_import" and events[-1]["actor"] == "alice"


def test_import_rejects_checkpoint_of_another_label_count(client, project, admin_headers, tmp_path):
    content = _checkpoint_bytes(tmp_path, num_classes=5)
    response = client.post(f"/api/v1/projects/{project['id']}/models/import",
                           files={"file": ("offline.pt", io.BytesIO(content))}, headers=admin_headers)
    assert response.status_code == 400
    assert "num_classes" in response.json()["detail"]
    response = client.post(f"/api/v1/projects/{project['id']}/models/import",
                           files={"file": ("offline.pt", io.BytesIO(b"garbage"))}, headers=admin_headers)
    assert response.status_code == 400 and "checkpoint" in response.json()["detail"]
    versions = client.get(f"/api/v1/projects/{project['id']}/models", headers=admin_headers).json()["versions"]
    assert len(versions) == 1


def test_learning_settings_change_is_admin_only_and_audited(client, project, admin_headers, annotator_headers):
    path = f"/api/v1/projects/{project['id']}/learning"
    assert client.patch(path, json={"steps": 7}, headers=annotator_headers).status_code == 403
    response = client.patch(path, json={"steps": 7, "online": {"replay_capacity": 2}}, headers=admin_headers)
    assert response.status_code == 200, response.text
    learning = response.json()["learning"]
    assert learning["steps"] == 7 and learning["online"]["replay_capacity"] == 2
    assert learning["online"]["size"] == project["learning"]["online"]["size"]  # untouched keys kept
    [event] = [e for e in client.get(f"/api/v1/projects/{project['id']}/audit", headers=admin_headers).json()
               if e["action"] == "settings_change"]
    assert event["actor"] == "alice"
    assert event["details"]["changed"]["steps"] == {"from": project["learning"]["steps"], "to": 7}


def test_learning_curve_and_metrics(client, project, uploaded_image, annotator_headers):
    curve = client.get(f"/api/v1/projects/{project['id']}/learning-curve", headers=annotator_headers).json()
    assert [v["version"] for v in curve["versions"]] == [0]
    assert [i["image_id"] for i in curve["images"]] == [uploaded_image["id"]]
    assert curve["images"][0]["rounds"] == 0 and curve["queue_depth"] == 0
    metrics = client.get("/metrics", headers=annotator_headers)
    assert metrics.status_code == 200
    assert 'scribbleflow_uploads_total{format="nifti"} 1.0' in metrics.text
    assert 'route="/api/v1/projects/{project_id}/images",status="201"' in metrics.text


def test_import_with_settings_the_project_cannot_take_is_refused_before_serving(
    client, project, admin_headers, tmp_path
):
    # Eight network levels: more than the project's learning settings allow.
    content = _checkpoint_bytes(tmp_path, num_classes=3, size=128, channels=(2,) * 8)
    response = client.post(f"/api/v1/projects/{project['id']}/models/import",
                           files={"file": ("deep.pt", io.BytesIO(content))}, headers=admin_headers)
    assert response.status_code == 400, response.text
    assert "channels" in response.json()["detail"]
    models = client.get(f"/api/v1/projects/{project['id']}/models", headers=admin_headers).json()
    assert models["serving_version"] == 0 and len(models["versions"]) == 1
    updated = client.get(f"/api/v1/projects/{project['id']}", headers=admin_headers).json()
    assert updated["learning"] == project["learning"]


def test_download_checkpoint_of_a_version(client, project, admin_headers, annotator_headers, tmp_path):
    from learner.checkpoints import load_checkpoint

    content = _checkpoint_bytes(tmp_path, num_classes=3, size=48)
    client.post(f"/api/v1/projects/{project['id']}/models/import",
                files={"file": ("offline.pt", io.BytesIO(content))}, headers=admin_headers)
    url = f"/api/v1/projects/{project['id']}/models/1/checkpoint"
    response = client.get(url, headers=admin_headers)
    assert response.status_code == 200
    (tmp_path / "v1.pt").write_bytes(response.content)
    model, config, _metadata = load_checkpoint(tmp_path / "v1.pt", device="cpu")
    assert config.num_classes == 3
    original, _, _ = load_checkpoint(tmp_path / "offline-3.pt", device="cpu")
    for (name, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert client.get(url, headers=annotator_headers).status_code == 403
    missing = client.get(f"/api/v1/projects/{project['id']}/models/7/checkpoint", headers=admin_headers)
    assert missing.status_code == 404 and "version 7" in missing.json()["detail"]
