"""The admin dashboard's page, its vendored chart library, its JSON and the per-project metrics.

The browser test (``test_dashboard_browser.py``) drives the page; here the server answers
in-process (TestClient) on both databases.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from clients.client import ScribbleflowClient
from clients.stream_metrics import histogram_by_label
from registration.round import ROUND_PHASES
from server.api.dashboard import STATIC_DIR
from server.metrics import Metrics
from server.services.dashboard import round_latency
from server.storage.db import utcnow
from tests.dashboard_stream import build_stream
from tests.helpers import REPO

API = "/api/v1"
VENDOR = STATIC_DIR / "vendor"
GRAFANA_DASHBOARD = REPO / "docker" / "grafana" / "scribbleflow-dashboard.json"
ECHARTS_VERSION = "6.1.0"


def pinned_sha256(name: str) -> str:
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, _, file_name = line.partition("  ")
        if file_name == name:
            return digest
    raise AssertionError(f"{name} is not pinned in {VENDOR / 'SHA256SUMS'}")


def test_page_loads_only_files_this_server_serves(client):
    page = client.get("/admin")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    references = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert references, "the page loads no script or style"
    for reference in references:
        if reference.startswith("data:"):
            continue
        assert reference.startswith("/admin/static/"), reference
        assert client.get(reference).status_code == 200, reference
    assert client.get("/admin/static/missing.js").status_code == 404


def test_served_echarts_is_the_pinned_release(client):
    served = client.get("/admin/static/vendor/echarts.min.js")
    assert served.status_code == 200
    assert "javascript" in served.headers["content-type"]
    assert hashlib.sha256(served.content).hexdigest() == pinned_sha256("echarts.min.js")
    assert f'version:"{ECHARTS_VERSION}"'.encode() in served.content
    assert f"echarts {ECHARTS_VERSION}" in (VENDOR / "README.md").read_text()
    for licence in ("LICENSE-echarts", "NOTICE-echarts", "LICENSE-d3"):
        assert (VENDOR / licence).stat().st_size > 0


def test_dashboard_needs_an_admin_token(client, project, admin_headers, annotator_headers):
    path = f"{API}/projects/{project['id']}/dashboard"
    missing = client.get(path)
    assert missing.status_code == 401 and "missing API token" in missing.json()["detail"]
    assert client.get(path, headers={"Authorization": "Bearer sf_nope_nope"}).status_code == 401
    refused = client.get(path, headers=annotator_headers)
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    unknown = client.get(f"{API}/projects/{project['id'] + 1}/dashboard", headers=admin_headers)
    assert unknown.status_code == 404 and "not found" in unknown.json()["detail"]


def test_grafana_example_queries_only_metrics_the_server_exports():
    board = json.loads(GRAFANA_DASHBOARD.read_text())
    queries = [target["expr"] for panel in board["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|count|sum|total)$", "", name)
            for query in queries for name in re.findall(r"scribbleflow_\w+", query)}
    exported = {family.name for family in Metrics().registry.collect()}
    assert used and used <= exported, used - exported


def _metric(text: str, sample: str, /, **labels) -> float | None:
    """The value of ``sample`` with exactly these labels in Prometheus' text format."""
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == sample and dict(re.findall(r'(\w+)="([^"]*)"', match[2] or "")) == labels:
            return float(match[3])
    return None


@pytest.mark.slow
def test_dashboard_and_metrics_follow_a_stream(app, client, admin_headers, tmp_path: Path):
    typed = ScribbleflowClient(token=admin_headers["Authorization"].split()[1], http=client)
    stream = build_stream(typed, tmp_path / "stream", app.state.context.datastore.models_dir)
    board = client.get(f"{API}/projects/{stream.project_id}/dashboard", headers=admin_headers)
    assert board.status_code == 200, board.text
    data = board.json()

    models = typed.list_models(stream.project_id)
    assert [v["version"] for v in data["versions"]] == [v.version for v in models.versions]
    assert all(v["metrics"].get("val_dice") is not None for v in data["versions"]), data["versions"]
    assert data["serving_version"] == models.serving_version
    serving = next(v for v in models.versions if v.serving)
    assert data["serving_dice"] == pytest.approx(serving.metrics["val_dice"])

    jobs = typed.list_jobs(stream.project_id)
    assert [j["id"] for j in data["jobs"]] == [j.id for j in jobs]
    assert data["job_states"] == dict(Counter(j.state for j in jobs))
    losses: dict[int, float | None] = {}
    for v in models.versions:  # an average version's loss is that of its fine-tuned member (its parent)
        losses[v.version] = losses.get(v.parent) if v.source == "average" else v.metrics.get("loss")
    for job in data["jobs"]:
        assert job["state"] == "succeeded" and job["trigger"] == "accept", job
        assert job["loss"] == pytest.approx(losses[job["result_version"]])
        assert 0 < job["run_seconds"] <= job["annotation_to_model_seconds"]
    # Rejected by the gate: only the blank candidate (a job's fine-tuned version or average that the
    # gate did not judge, because the other one was better, is rejected with metrics.judged false).
    judged_rejections = [v["version"] for v in data["versions"]
                         if v["details"]["status"] == "rejected" and v["metrics"].get("judged", True)]
    assert judged_rejections == [stream.rejected_version], data["versions"]

    images = {i["image_id"]: i for i in data["images"]}
    assert data["images_total"] == 4 and data["images_accepted"] == len(stream.accepted_images) == 2
    assert images[stream.validation_image]["is_validation"] is True
    for image_id, image in images.items():
        rounds = typed.image_rounds(image_id)
        assert image["rounds"] == len(rounds)
        if image_id in stream.accepted_images:
            assert image["status"] == "accepted"
            assert image["dice_mean_per_round"][-1] == pytest.approx(1.0)  # the accepted round itself
            label = client.get(image["label_url"], headers=admin_headers)
            assert label.status_code == 200 and label.content[:2] == b"\x1f\x8b"  # gzip (NIfTI)
            session = typed.get_session(typed.image_rounds(image_id)[-1].session_id)
            assert image["opening_source"] == session.prediction_source
            assert image["opening_dice"] == session.opening_dice and 0.0 <= image["opening_dice"] <= 1.0
            alternative = (session.opening_scores or {}).get(f"{'model' if session.prediction_source == 'atlas' else 'atlas'}_dice")
            assert image["alternative_dice"] == alternative
        else:
            assert image["label_url"] is None
            assert image["opening_source"] is None and image["opening_dice"] is None and image["alternative_dice"] is None
    assert images[stream.in_progress_image]["status"] == "in_progress"
    assert images[stream.new_image]["status"] == "new" and images[stream.new_image]["rounds"] == 0

    compute = [r.compute_seconds for image_id in images for r in typed.image_rounds(image_id)]
    latency = data["round_latency"]
    assert latency["window_seconds"] == 3600 and latency["rounds"] == len(compute)
    assert min(compute) <= latency["p50_seconds"] <= latency["p95_seconds"] <= max(compute)
    with app.state.context.session_factory() as db:
        later = round_latency(db, stream.project_id, utcnow() + timedelta(seconds=1), utcnow())
    assert later.rounds == 0 and later.p50_seconds is None

    metrics = client.get("/metrics", headers=admin_headers).text
    project = str(stream.project_id)
    assert _metric(metrics, "scribbleflow_project_serving_version", project=project) == models.serving_version
    assert _metric(metrics, "scribbleflow_project_serving_validation_dice", project=project) == pytest.approx(
        serving.metrics["val_dice"])
    assert _metric(metrics, "scribbleflow_project_images_accepted", project=project) == 2
    assert _metric(metrics, "scribbleflow_project_info", project=project, name="demo") == 1
    assert jobs
    by_trigger = Counter(j.trigger for j in jobs)
    for trigger, count in by_trigger.items():
        assert _metric(metrics, "scribbleflow_job_seconds_count", state="succeeded", trigger=trigger) == count
    for trigger in {"accept", "round", "train", "consolidate"} - set(by_trigger):
        assert _metric(metrics, "scribbleflow_job_seconds_count", state="succeeded", trigger=trigger) is None
    assert _metric(metrics, "scribbleflow_round_compute_seconds_count", project=project) == len(compute)
    # Where each round's time went, phase by phase; compute_seconds is the time up to the answer.
    phases = histogram_by_label(metrics, "scribbleflow_round_phase_seconds", "phase")
    assert set(phases) == {"wait", "read", "check", "prediction", "paint", "merge_seeds", "compute",
                           "write_files", "commit", "queue_training"}
    assert all(phase["count"] == len(compute) for phase in phases.values()), phases
    up_to_answer = ("wait", "read", "check", "prediction", "paint", "merge_seeds", "compute")
    assert sum(phases[name]["sum_s"] for name in up_to_answer) == pytest.approx(sum(compute))
    # The computation, part by part: each part of each round once, together within its phase.
    parts = histogram_by_label(metrics, "scribbleflow_round_compute_phase_seconds", "phase")
    assert set(parts) == set(ROUND_PHASES)
    assert all(part["count"] == len(compute) for part in parts.values()), parts
    assert 0 < sum(part["sum_s"] for part in parts.values()) <= phases["compute"]["sum_s"]
