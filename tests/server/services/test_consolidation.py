"""Consolidation jobs through the server: after an accept job succeeds, a job with trigger
``consolidate`` (no image, no round) trains on the project's replay buffer alone and yields a
version whose source is ``consolidation``; ``consolidation_steps`` of the project's learning
settings (0: none) and a replay capacity of 0 turn it off. In-process app with the embedded
executor, real database (both backends), real files."""

from __future__ import annotations

import time

import pytest

from tests.helpers import nifti_file, synthetic_volume
from tests.server.api.test_sessions import API, open_session, stroke_round

JOB_SECONDS = 180  # bound of every wait for jobs (a few steps of a tiny network each)


def create_project(client, headers, learning: dict | None, name: str = "consolidating") -> dict:
    body = {"name": name, "labels": ["inner", "ring"]}
    if learning is not None:
        body["learning"] = learning
    response = client.post(f"{API}/projects", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def annotate_and_accept(client, project: dict, headers, volume_and_label) -> dict:
    """Upload an image, one round on it, accept: the accept answer (with its job id)."""
    volume, label = volume_and_label
    response = client.post(f"{API}/projects/{project['id']}/images", files=nifti_file(volume), headers=headers)
    assert response.status_code == 201, response.text
    session = open_session(client, response.json(), headers).json()
    response = client.post(f"{API}/sessions/{session['id']}/rounds", json=stroke_round(label, 3), headers=headers)
    assert response.status_code == 201, response.text
    accepted = client.post(f"{API}/sessions/{session['id']}/accept", headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["job_id"] is not None
    return accepted.json()


def wait_until_jobs_finish(client, project_id: int, headers, timeout: float = JOB_SECONDS) -> list[dict]:
    """The project's jobs once none is queued or running (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"{API}/projects/{project_id}/jobs", headers=headers)
        assert response.status_code == 200, response.text
        jobs = response.json()
        if jobs and all(j["state"] not in ("queued", "running") for j in jobs):
            return jobs
        assert time.monotonic() < deadline, f"jobs still unfinished after {timeout} s: {jobs}"
        time.sleep(0.2)


def test_accept_is_followed_by_a_consolidation_job_and_version(client, admin_headers, annotator_headers,
                                                                 volume_and_label):
    project = create_project(client, admin_headers, {"consolidation_steps": 3, "consolidation_jobs": 1})
    assert project["learning"]["consolidation_steps"] == 3
    accepted = annotate_and_accept(client, project, annotator_headers, volume_and_label)

    # The consolidation row is committed before the accept job's success is recorded, so once
    # nothing is queued or running it is there (finished) already.
    jobs = wait_until_jobs_finish(client, project["id"], annotator_headers)
    accept_job = next(j for j in jobs if j["id"] == accepted["job_id"])
    assert accept_job["trigger"] == "accept" and accept_job["state"] == "succeeded", jobs
    # No image held out yet: the gate measured fit on the accepted image (not a validation Dice).
    assert "1 accepted training image(s), no held-out image yet" in accept_job["message"], accept_job
    consolidations = [j for j in jobs if j["trigger"] == "consolidate"]
    assert len(consolidations) == 1, jobs
    job = consolidations[0]
    assert job["state"] == "succeeded", job
    assert job["image_id"] is None and job["round_id"] is None
    assert job["id"] > accept_job["id"]
    assert job["created_by"] == "bob"  # the accepting annotator
    assert job["started_at"] is not None and job["started_at"] >= accept_job["finished_at"]
    assert job["progress"] == 1.0 and job["result_version"] is not None
    assert job["result_version"] > accept_job["result_version"]

    models = client.get(f"{API}/projects/{project['id']}/models", headers=annotator_headers).json()
    by_version = {v["version"]: v for v in models["versions"]}
    assert by_version[accept_job["result_version"]]["source"] == "online"
    version = by_version[job["result_version"]]
    # The job's result is the version the gate judged: its fine-tuned one, or the average of
    # that one and the accept job's (learner.averaging), whose newest member it is.
    fine_tuned = by_version[version["parent"]] if version["source"] == "average" else version
    # The gate measured fit on the accepted image, so the job stored the average too; the other one lost.
    (average,) = [v for v in models["versions"] if v["source"] == "average"]
    assert average["details"]["source"]["members"] == [accept_job["result_version"], fine_tuned["version"]]
    assert average["details"]["source"]["job_id"] == fine_tuned["details"]["source"]["job_id"]
    average_judged = version["version"] == average["version"]
    loser = fine_tuned if average_judged else average
    assert version["metrics"]["judged"] is True and loser["metrics"]["judged"] is False
    assert loser["details"]["status"] == ("averaged" if job["promoted"] and average_judged else "rejected")
    assert fine_tuned["source"] == "consolidation", version
    assert [v["version"] for v in models["versions"] if v["source"] == "consolidation"] == [fine_tuned["version"]]
    source = fine_tuned["details"]["source"]
    assert source["project_id"] == str(project["id"]) and source["image_id"] == ""
    assert fine_tuned["metrics"]["steps"] == 3  # the project's consolidation_steps
    assert version["metrics"]["fit_dice"] is not None and "val_dice" not in version["metrics"], version
    # The promotion gate judged it, and the job reports that decision.
    assert version["promoted"] is job["promoted"] is not None
    assert version["details"]["status"] in ("serving", "retired", "rejected")
    if job["promoted"]:
        assert models["serving_version"] == job["result_version"]

    # The learning curve and the dashboard show the job (no image behind it), but count no
    # annotation-to-model time for it (no annotation behind it either).
    curve = client.get(f"{API}/projects/{project['id']}/learning-curve", headers=annotator_headers)
    assert curve.status_code == 200, curve.text
    assert [j["id"] for j in curve.json()["jobs"]] == [j["id"] for j in jobs]
    annotated = [j for j in jobs if j["state"] == "succeeded" and j["trigger"] != "consolidate"]
    assert len(curve.json()["annotation_to_model_seconds"]) == len(annotated)
    dashboard = client.get(f"{API}/projects/{project['id']}/dashboard", headers=admin_headers)
    assert dashboard.status_code == 200, dashboard.text
    shown = next(j for j in dashboard.json()["jobs"] if j["id"] == job["id"])
    assert shown["trigger"] == "consolidate" and shown["image_id"] is None
    assert shown["annotation_to_model_seconds"] is None


def test_consolidation_jobs_follow_one_another_and_start_again_after_the_next_accept(
        client, admin_headers, annotator_headers, volume_and_label):
    project = create_project(client, admin_headers, {"consolidation_steps": 3, "consolidation_jobs": 3})
    assert project["learning"]["consolidation_jobs"] == 3
    first = annotate_and_accept(client, project, annotator_headers, volume_and_label)
    jobs = wait_until_jobs_finish(client, project["id"], annotator_headers)
    chain = [j for j in jobs if j["trigger"] == "consolidate"]
    assert len(chain) == 3 and all(j["state"] == "succeeded" for j in chain), jobs
    accept_job = next(j for j in jobs if j["id"] == first["job_id"])
    # One after the other: each queued when the one before had succeeded, so none overlaps.
    previous_end = accept_job["finished_at"]
    for job in sorted(chain, key=lambda j: j["id"]):
        assert job["started_at"] >= previous_end, (job, previous_end)
        previous_end = job["finished_at"]
    models = client.get(f"{API}/projects/{project['id']}/models", headers=annotator_headers).json()
    rounds = sorted(v["details"]["source"]["round_id"] for v in models["versions"] if v["source"] == "consolidation")
    assert rounds == ["consolidate-1-1", "consolidate-1-2", "consolidate-1-3"], rounds

    annotate_and_accept(client, project, annotator_headers, volume_and_label)  # a second image: a new chain
    jobs = wait_until_jobs_finish(client, project["id"], annotator_headers)
    assert len([j for j in jobs if j["trigger"] == "consolidate"]) == 6, jobs
    models = client.get(f"{API}/projects/{project['id']}/models", headers=annotator_headers).json()
    assert "consolidate-2-3" in {v["details"]["source"].get("round_id") for v in models["versions"]}


@pytest.mark.parametrize("learning", [
    None,  # the settings fixture: consolidation_steps 0
    {"consolidation_steps": 0},
    {"consolidation_steps": 3, "online": {"replay_capacity": 0}},  # nothing to consolidate from
], ids=["server-default-0", "project-0", "no-replay"])
def test_no_consolidation_job_when_turned_off(client, admin_headers, annotator_headers, volume_and_label,
                                              learning):
    project = create_project(client, admin_headers, learning)
    accepted = annotate_and_accept(client, project, annotator_headers, volume_and_label)
    jobs = wait_until_jobs_finish(client, project["id"], annotator_headers)
    accept_job = next(j for j in jobs if j["id"] == accepted["job_id"])
    assert accept_job["state"] == "succeeded", jobs
    assert not [j for j in jobs if j["trigger"] == "consolidate"], jobs
    # ... and none turns up a moment later either.
    time.sleep(1.0)
    jobs = client.get(f"{API}/projects/{project['id']}/jobs", headers=annotator_headers).json()
    assert [j["trigger"] for j in jobs] == ["round", "accept"], jobs
    models = client.get(f"{API}/projects/{project['id']}/models", headers=annotator_headers).json()
    assert all(v["source"] != "consolidation" for v in models["versions"]), models


def test_consolidation_steps_in_learning_settings(client, admin_headers, annotator_headers, volume_and_label):
    project = create_project(client, admin_headers, None)
    assert project["learning"]["consolidation_steps"] == 0  # from the server settings
    url = f"{API}/projects/{project['id']}/learning"

    response = client.patch(url, json={"consolidation_steps": 4, "consolidation_jobs": 1}, headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json()["learning"]["consolidation_steps"] == 4
    assert response.json()["learning"]["consolidation_jobs"] == 1
    assert client.get(f"{API}/projects/{project['id']}", headers=annotator_headers).json()[
        "learning"]["consolidation_steps"] == 4
    events = client.get(f"{API}/projects/{project['id']}/audit", headers=admin_headers).json()
    change = [e for e in events if e["action"] == "settings_change"][-1]
    assert change["details"]["changed"]["consolidation_steps"] == {"from": 0, "to": 4}

    for bad in (-1, 100_001, "many"):
        response = client.patch(url, json={"consolidation_steps": bad}, headers=admin_headers)
        assert 400 <= response.status_code < 500, (bad, response.text)
        assert "consolidation_steps" in response.text, (bad, response.text)
    for bad in (0, 101, "many"):
        response = client.patch(url, json={"consolidation_jobs": bad}, headers=admin_headers)
        assert 400 <= response.status_code < 500 and "consolidation_jobs" in response.text, (bad, response.text)
    # an annotator may not change it
    response = client.patch(url, json={"consolidation_steps": 1}, headers=annotator_headers)
    assert response.status_code == 403, response.text
    assert client.get(f"{API}/projects/{project['id']}", headers=annotator_headers).json()[
        "learning"]["consolidation_steps"] == 4

    response = client.post(f"{API}/projects", json={"name": "bad", "labels": ["a"],
                                                     "learning": {"consolidation_steps": -1}}, headers=admin_headers)
    assert 400 <= response.status_code < 500 and "consolidation_steps" in response.text, response.text

    # The changed setting is what the next accept uses: a consolidation job of 4 steps follows.
    accepted = annotate_and_accept(client, project, annotator_headers, volume_and_label)
    jobs = wait_until_jobs_finish(client, project["id"], annotator_headers)
    assert [j["trigger"] for j in jobs] == ["round", "accept", "consolidate"], jobs
    assert jobs[1]["id"] == accepted["job_id"]
    assert jobs[2]["state"] == "succeeded", jobs
    version = client.get(f"{API}/projects/{project['id']}/models/{jobs[2]['result_version']}",
                         headers=annotator_headers).json()
    if version["source"] == "average":  # the gate judged the mean of it and the accept job's version
        version = client.get(f"{API}/projects/{project['id']}/models/{version['parent']}",
                             headers=annotator_headers).json()
    assert version["source"] == "consolidation" and version["metrics"]["steps"] == 4

    # 0 (none) is a valid value
    response = client.patch(url, json={"consolidation_steps": 0}, headers=admin_headers)
    assert response.status_code == 200 and response.json()["learning"]["consolidation_steps"] == 0


def test_accept_jobs_queued_together_are_followed_by_one_consolidation_job(client, admin_headers,
                                                                           annotator_headers):
    # Long accept jobs, so the second image is accepted while the first one's job still runs.
    project = create_project(client, admin_headers, {"steps": 500, "consolidation_steps": 3, "consolidation_jobs": 1})
    first = annotate_and_accept(client, project, annotator_headers, synthetic_volume(seed=1))
    second = annotate_and_accept(client, project, annotator_headers, synthetic_volume(seed=2))
    jobs = wait_until_jobs_finish(client, project["id"], annotator_headers, timeout=3 * JOB_SECONDS)
    by_id = {j["id"]: j for j in jobs}
    accept_1, accept_2 = by_id[first["job_id"]], by_id[second["job_id"]]
    assert accept_1["state"] == accept_2["state"] == "succeeded", jobs
    assert accept_2["created_at"] < accept_1["finished_at"], "the test needs the accept jobs to overlap"
    consolidations = [j for j in jobs if j["trigger"] == "consolidate"]
    assert len(consolidations) == 1, jobs
    assert consolidations[0]["created_at"] >= accept_1["finished_at"] and consolidations[0]["id"] > accept_2["id"]


def test_a_project_stored_before_consolidation_existed_gets_the_default(app, client, admin_headers,
                                                                        annotator_headers):
    from learner.online import DEFAULT_CONSOLIDATION_JOBS, DEFAULT_CONSOLIDATION_STEPS
    from server.storage.tables import Project

    project = create_project(client, admin_headers, {"consolidation_steps": 3, "consolidation_jobs": 5})
    with app.state.context.session_factory() as db:
        row = db.get(Project, project["id"])
        row.learning = {k: v for k, v in row.learning.items() if not k.startswith("consolidation_")}
        db.commit()
    shown = client.get(f"{API}/projects/{project['id']}", headers=annotator_headers)
    assert shown.status_code == 200, shown.text
    assert shown.json()["learning"]["consolidation_steps"] == DEFAULT_CONSOLIDATION_STEPS
    assert shown.json()["learning"]["consolidation_jobs"] == DEFAULT_CONSOLIDATION_JOBS
    response = client.patch(f"{API}/projects/{project['id']}/learning", json={"consolidation_steps": 2},
                            headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json()["learning"]["consolidation_steps"] == 2


def test_a_server_restart_in_the_middle_of_a_chain_finishes_the_chain_once(app, client, admin_headers,
                                                                          annotator_headers, volume_and_label):
    """The training service stops while the first of two consolidation jobs runs (as when the
    server stops): its row stays unfinished, the next start runs it again from its stored
    payload, and the chain goes on to its second job, with one version per job and no third."""
    project = create_project(client, admin_headers, {"consolidation_steps": 300, "consolidation_jobs": 2})
    annotate_and_accept(client, project, annotator_headers, volume_and_label)
    deadline = time.monotonic() + JOB_SECONDS
    while True:
        jobs = client.get(f"{API}/projects/{project['id']}/jobs", headers=annotator_headers).json()
        first = next((j for j in jobs if j["trigger"] == "consolidate"), None)
        if first is not None and first["state"] == "running" and first["progress"] > 0:
            break
        assert first is None or first["state"] in ("queued", "running"), f"it ended before the restart: {first}"
        assert time.monotonic() < deadline, f"no consolidation job ran within {JOB_SECONDS} s: {jobs}"
        time.sleep(0.05)

    training = app.state.context.training
    training.stop()
    jobs = client.get(f"{API}/projects/{project['id']}/jobs", headers=annotator_headers).json()
    stopped = next(j for j in jobs if j["id"] == first["id"])
    assert stopped["state"] in ("queued", "running"), stopped  # left for the next start, not cancelled
    assert len([j for j in jobs if j["trigger"] == "consolidate"]) == 1, jobs
    training.start()

    jobs = wait_until_jobs_finish(client, project["id"], annotator_headers, timeout=3 * JOB_SECONDS)
    chain = sorted((j for j in jobs if j["trigger"] == "consolidate"), key=lambda j: j["id"])
    assert [j["state"] for j in chain] == ["succeeded", "succeeded"], jobs
    assert chain[0]["id"] == first["id"]  # the same row, run again
    assert chain[1]["started_at"] >= chain[0]["finished_at"]
    models = client.get(f"{API}/projects/{project['id']}/models", headers=annotator_headers).json()
    rounds = sorted(v["details"]["source"]["round_id"] for v in models["versions"] if v["source"] == "consolidation")
    assert rounds == ["consolidate-1-1", "consolidate-1-2"], rounds  # the stopped run stored nothing
