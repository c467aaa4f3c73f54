"""Crash safety of rounds: ``POST`` of a round with an ``Idempotency-Key`` is stored once, also
when the server is killed (SIGKILL) while the request is being answered and the client retries."""

from __future__ import annotations

import os
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.e2e.distributed_support import ComposeServerProcess
from tests.helpers import nifti_file, postgres_schema, synthetic_volume
from tests.server.api.test_sessions import API, open_session, stroke_round


def test_round_retried_with_its_idempotency_key_is_stored_once(client, uploaded_image, annotator_headers,
                                                                  volume_and_label, admin_headers):
    _, label = volume_and_label
    session = open_session(client, uploaded_image, annotator_headers).json()
    url = f"{API}/sessions/{session['id']}/rounds"
    keyed = {**annotator_headers, "Idempotency-Key": "round-1-of-bob"}
    first = client.post(url, json=stroke_round(label, 2), headers=keyed)
    assert first.status_code == 201, first.text
    again = client.post(url, json=stroke_round(label, 2), headers=keyed)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"] and again.json()["number"] == 1

    other = client.post(url, json=stroke_round(label, 3), headers={**annotator_headers, "Idempotency-Key": "k2"})
    assert other.status_code == 201 and other.json()["number"] == 2
    rounds = client.get(f"{API}/images/{uploaded_image['id']}/rounds", headers=annotator_headers).json()
    assert [r["id"] for r in rounds] == [first.json()["id"], other.json()["id"]]
    events = client.get(f"{API}/images/{uploaded_image['id']}/audit", headers=admin_headers).json()
    assert sum(e["action"] == "round" for e in events) == 2

    too_long = client.post(url, json=stroke_round(label, 2), headers={**annotator_headers, "Idempotency-Key": "x" * 201})
    assert too_long.status_code == 422 and "Idempotency-Key" in too_long.text


@pytest.fixture
def postgres_url(postgres_database):
    user, database = postgres_database
    with postgres_schema(user, database, prefix="crash") as url:
        yield url


def _rounds_with_key(database_url: str, key: str) -> list[int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return [r for (r,) in connection.execute(
                text("SELECT id FROM rounds WHERE idempotency_key = :key"), {"key": key})]
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["during the computation", "when the round is stored"])
def test_server_killed_while_answering_a_round_then_retried(tmp_path, postgres_url, moment):
    """SIGKILL of the server between a round's request and its answer; the client retries with
    the same key after the restart: exactly one round is stored, and the retry returns it."""
    env = {**os.environ, "SCRIBBLEFLOW_DATA_DIR": str(tmp_path / "data"), "SCRIBBLEFLOW_DATABASE_URL": postgres_url,
           "SCRIBBLEFLOW_MODEL_SIZE": "32", "SCRIBBLEFLOW_MODEL_CHANNELS": "[4, 8, 16]",
           "SCRIBBLEFLOW_ONLINE_STEPS": "2", "SCRIBBLEFLOW_VALIDATION_EVERY": "0",
           "SCRIBBLEFLOW_LOG_LEVEL": "warning", "SCRIBBLEFLOW_TRAIN_ON_ROUNDS": "false"}
    env.pop("SCRIBBLEFLOW_BROKER_URL", None)
    import subprocess
    import sys

    token = subprocess.run([sys.executable, "-m", "server.cli", "token", "create", "--role", "admin", "--owner", "a"],
                           env=env, capture_output=True, encoding="utf-8", check=True, timeout=120).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    volume, label = synthetic_volume((8, 48, 40), seed=5)
    server = ComposeServerProcess(env, tmp_path / "server.log")
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as http:
            project = http.post(f"{API}/projects", json={"name": "p", "labels": ["inner", "ring"]}).json()
            image = http.post(f"{API}/projects/{project['id']}/images", files=nifti_file(volume)).json()
            session = http.post(f"{API}/images/{image['id']}/sessions", json={}).json()
        key = uuid.uuid4().hex
        url = f"{server.url}{API}/sessions/{session['id']}/rounds"
        answers: list = []

        def send():
            try:
                answers.append(httpx.post(url, json=stroke_round(label, 3), timeout=120,
                                          headers={**headers, "Idempotency-Key": key}))
            except httpx.HTTPError as error:
                answers.append(error)

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 120
        if moment == "during the computation":
            time.sleep(0.05)
        else:
            while not _rounds_with_key(postgres_url, key) and not answers and time.monotonic() < deadline:
                pass  # as soon as the round's row is committed
        server.kill()
        sender.join(timeout=60)
        stored_before_retry = _rounds_with_key(postgres_url, key)
        assert len(stored_before_retry) <= 1
        if moment == "when the round is stored":
            assert stored_before_retry, "the round was not stored before the kill"

        server.start()
        retry = httpx.post(url, json=stroke_round(label, 3), timeout=120, headers={**headers, "Idempotency-Key": key})
        assert retry.status_code == 201, retry.text
        stored = _rounds_with_key(postgres_url, key)
        assert stored == [retry.json()["id"]]
        if stored_before_retry:
            assert stored == stored_before_retry
        listed = httpx.get(f"{server.url}{API}/images/{image['id']}/rounds", headers=headers, timeout=60).json()
        assert [r["id"] for r in listed] == stored
    finally:
        server.stop()


def test_round_that_fails_after_its_files_were_written_leaves_nothing(
    app, client, uploaded_image, annotator_headers, admin_headers, volume_and_label, monkeypatch
):
    """The session is taken over while the round computes (as another server process would):
    the round fails at its final check, after its files were written, and leaves no round
    row, no folder, no training job and no audit event."""
    from server.services import rounds as round_service
    from server.storage.tables import AnnotationSession, Image

    _, label = volume_and_label
    session = open_session(client, uploaded_image, annotator_headers).json()
    compute_round = round_service.compute_round

    def compute_then_lose_the_session(*args, **kwargs):
        result = compute_round(*args, **kwargs)
        with app.state.context.session_factory() as db:
            db.get(AnnotationSession, session["id"]).state = "taken_over"
            db.commit()
        return result

    monkeypatch.setattr(round_service, "compute_round", compute_then_lose_the_session)
    response = client.post(f"{API}/sessions/{session['id']}/rounds", json=stroke_round(label, 2),
                           headers={**annotator_headers, "Idempotency-Key": "k"})
    assert response.status_code == 409 and "taken over" in response.json()["detail"]

    assert client.get(f"{API}/images/{uploaded_image['id']}/rounds", headers=annotator_headers).json() == []
    context = app.state.context
    with context.session_factory() as db:
        image_dir = context.datastore.resolve(db.get(Image, uploaded_image["id"]).path).parent
    assert not list((image_dir / "rounds").glob("*")), "the round's folder was left behind"
    assert client.get(f"{API}/projects/{uploaded_image['project_id']}/jobs", headers=admin_headers).json() == []
    events = client.get(f"{API}/images/{uploaded_image['id']}/audit", headers=admin_headers).json()
    assert [e for e in events if e["action"] == "round"] == []
