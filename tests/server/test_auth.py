"""Tokens and roles: /health is open, everything else needs a valid token, admin-only stays admin-only."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import select

from tests.helpers import make_token


def test_health_needs_no_token(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert client.get("/api/v1/health").status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/projects", "/metrics", "/api/v1/images/1", "/api/v1/jobs/1"])
def test_missing_token_is_401(client, path):
    response = client.get(path)
    assert response.status_code == 401
    assert "missing API token" in response.json()["detail"]


def test_wrong_token_is_401(client, admin_headers):
    token = admin_headers["Authorization"].removeprefix("Bearer ")
    prefix, token_id, secret = token.split("_", 2)
    forged = f"{prefix}_{token_id}_{'x' * len(secret)}"
    for bad in (forged, "not-a-token", f"{prefix}_unknownid_{secret}"):
        response = client.get("/api/v1/projects", headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401, bad
        assert "token" in response.json()["detail"]


def test_wrong_role_is_403(client, annotator_headers, uploaded_image):
    response = client.post("/api/v1/projects", json={"name": "x", "labels": ["a"]}, headers=annotator_headers)
    assert response.status_code == 403
    assert "admin role" in response.json()["detail"]
    assert client.delete(f"/api/v1/images/{uploaded_image['id']}", headers=annotator_headers).status_code == 403
    assert client.get("/api/v1/admin/tokens", headers=annotator_headers).status_code == 403
    assert client.patch(f"/api/v1/projects/{uploaded_image['project_id']}/learning", json={"steps": 3},
                        headers=annotator_headers).status_code == 403
    assert client.get(f"/api/v1/images/{uploaded_image['id']}/audit", headers=annotator_headers).status_code == 403
    # nothing was deleted
    assert client.get(f"/api/v1/images/{uploaded_image['id']}", headers=annotator_headers).status_code == 200


def test_tokens_are_stored_hashed_and_can_be_revoked(app, client, admin_headers):
    from server.storage.tables import ApiToken

    response = client.post("/api/v1/admin/tokens", json={"role": "annotator", "owner": "dave"},
                           headers=admin_headers)
    assert response.status_code == 201
    created = response.json()
    token = created["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/projects", headers=headers).status_code == 200
    with app.state.context.session_factory() as db:
        rows = list(db.scalars(select(ApiToken)))
    secret = token.split("_", 2)[2]
    assert all(secret not in (r.digest, r.salt) and token not in (r.digest, r.salt) for r in rows)
    listed = client.get("/api/v1/admin/tokens", headers=admin_headers).json()
    assert {t["owner"] for t in listed} == {"alice", "dave"} and all("token" not in t for t in listed)
    assert client.delete(f"/api/v1/admin/tokens/{created['id']}", headers=admin_headers).status_code == 200
    response = client.get("/api/v1/projects", headers=headers)
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_token_command_prints_only_the_token(tmp_path, app, client):
    data_dir = app.state.context.settings.resolved_data_dir
    url = app.state.context.settings.resolved_database_url
    env = {"SCRIBBLEFLOW_DATA_DIR": str(data_dir), "SCRIBBLEFLOW_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "token", "create", "--role", "admin", "--owner", "erin"],
        capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=120, check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sf_")
    response = client.get("/api/v1/admin/tokens", headers={"Authorization": f"Bearer {lines[0]}"})
    assert response.status_code == 200
    assert "erin" in {t["owner"] for t in response.json()}


def test_annotator_token_works_for_annotation_endpoints(app, client, project):
    headers = {"Authorization": f"Bearer {make_token(app, 'annotator', 'frank')}"}
    assert client.get(f"/api/v1/projects/{project['id']}", headers=headers).status_code == 200
    assert client.get(f"/api/v1/projects/{project['id']}/models", headers=headers).status_code == 200


def test_every_endpoint_but_health_needs_a_token(app, client):
    """Walk the OpenAPI description: each operation without a token is 401 (bodies never parsed)."""
    schema = client.get("/openapi.json").json()
    checked = 0
    for path, operations in schema["paths"].items():
        concrete = path.replace("{version}", "0").replace("{name}", "segmentation").replace("{model}", "clicks")
        concrete = concrete.replace("{strategy}", "first")
        for part in ("project_id", "image_id", "session_id", "round_id", "job_id", "token_id"):
            concrete = concrete.replace("{" + part + "}", "1")
        for method in operations:
            response = client.request(method.upper(), concrete)
            if path.endswith("/health") or path == "/auth/":
                assert response.status_code == 200
                continue
            if path == "/auth/token":  # the log-in itself: no token, a form instead
                assert response.status_code == 422
                continue
            assert response.status_code == 401, (method, path, response.status_code)
            checked += 1
    assert checked >= 30
