"""The MONAI Label-compatible API in process: log-in and tokens, how viewer label values map
onto project labels, versioned final labels that feed the learner, image ids, errors."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta

import numpy as np
import pytest

from registration.io.volume import UNLABELLED
from server.errors import BadInput
from server.services import monailabel
from tests.helpers import synthetic_volume, volume_bytes

NAMES = ["background", "inner", "ring"]


def _file(volume, array=None, name="x.nii.gz"):
    return (name, io.BytesIO(volume_bytes(volume, array=array)), "application/gzip")


@pytest.fixture
def bob(app):
    from server.auth import create_user

    with app.state.context.session_factory() as db:
        create_user(db, "bob", "annotator", "bob-password-1")
    return "bob-password-1"


def _login(client, name="bob", password="bob-password-1"):
    return client.post("/auth/token", data={"username": name, "password": password})


def test_login_gives_an_expiring_token_of_the_users_role(client, app, bob, admin_headers):
    assert client.get("/auth/").json()["enabled"] is True
    wrong = _login(client, password="not-his-password")
    unknown = _login(client, name="nobody")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"]  # does not tell which one was wrong

    answer = _login(client)
    assert answer.status_code == 200 and answer.json()["token_type"] == "bearer"
    assert 0 < answer.json()["expires_in"] <= app.state.context.settings.access_token_minutes * 60
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    assert client.get("/auth/token/valid", headers=headers).json() == {
        "username": "bob", "email": None, "name": "bob", "roles": ["annotator"]}
    assert client.get("/api/v1/projects", headers=headers).status_code == 200  # both APIs take it
    assert client.post("/api/v1/projects", json={"name": "p", "labels": ["a"]}, headers=headers).status_code == 403
    assert client.get("/info/", headers=admin_headers).status_code == 200  # API tokens keep working

    from server.storage.db import utcnow
    from server.storage.tables import UserToken

    with app.state.context.session_factory() as db:
        row = db.get(UserToken, answer.json()["access_token"].split("_")[1])
        row.expires_at = utcnow() - timedelta(seconds=1)
        db.commit()
    expired = client.get("/info/", headers=headers)
    assert expired.status_code == 401 and "expired" in expired.json()["detail"]


def test_users_need_a_long_password_and_a_free_name(app, bob):
    from server.auth import create_user
    from server.errors import Conflict

    with app.state.context.session_factory() as db:
        with pytest.raises(BadInput, match="at least"):
            create_user(db, "carol", "annotator", "short")
        with pytest.raises(Conflict):
            create_user(db, "bob", "admin", "another-password")
        with pytest.raises(BadInput, match="role"):
            create_user(db, "dave", "root", "long-enough-password")
        stored = create_user(db, "erin", "admin", "long-enough-password").password_hash
    assert stored.startswith("$argon2id$") and "long-enough-password" not in stored


def test_scribble_values_follow_label_info_or_monai_label_defaults():
    # 3D Slicer: segments numbered in its order, scribble layers named.
    array = np.array([0, 1, 2, 3, 4, 5], dtype=np.int64)
    info = [{"name": "inner", "id": 1}, {"name": "ring", "id": 2}, {"name": "background_scribbles", "id": 3},
            {"name": "foreground_scribbles", "id": 4}, {"name": "inner_scribbles", "id": 5}]
    seeds = monailabel.scribble_seeds(array, NAMES, {"label_info": info, "selected_label_name": "ring"})
    assert seeds.tolist() == [UNLABELLED, UNLABELLED, UNLABELLED, 0, 2, 1]
    # No label_info: MONAI Label's defaults, background L + 1 and foreground L + 2 (L = 2 labels).
    seeds = monailabel.scribble_seeds(array, NAMES, {"selected_label_name": "inner"})
    assert seeds.tolist() == [UNLABELLED, UNLABELLED, UNLABELLED, 0, 1, UNLABELLED]
    with pytest.raises(BadInput, match="selected_label_name"):  # several labels: which one?
        monailabel.scribble_seeds(array, NAMES, {})
    with pytest.raises(BadInput, match="not a label"):
        monailabel.scribble_seeds(array, NAMES, {"selected_label_name": "liver"})
    with pytest.raises(BadInput, match="no scribbles"):
        monailabel.scribble_seeds(np.zeros(4, dtype=np.int64), NAMES, {"selected_label_name": "inner"})
    # One-label project: the foreground scribbles belong to its label.
    one = monailabel.scribble_seeds(np.array([2, 3]), ["background", "organ"], {})
    assert one.tolist() == [0, 1]


def test_final_label_values_map_segment_names_to_project_labels():
    array = np.array([0, 1, 2, 2])
    info = {"label_info": [{"name": "ring", "idx": 1}, {"name": "inner", "idx": 2}]}
    assert monailabel.final_label_values(array, NAMES, info).tolist() == [0, 2, 1, 1]
    assert monailabel.final_label_values(array, NAMES, {}).tolist() == [0, 1, 2, 2]
    huge = {"label_info": [{"name": "ring", "id": 2**40}]}  # any segment value, without a table that large
    assert monailabel.final_label_values(np.array([0, 2**40]), NAMES, huge).tolist() == [0, 2]
    with pytest.raises(BadInput, match="tumour"):
        monailabel.final_label_values(array, NAMES, {"label_info": [{"name": "tumour", "idx": 1}]})
    with pytest.raises(BadInput, match=r"\[3\]"):
        monailabel.final_label_values(np.array([0, 3]), NAMES, {})


def test_points_become_clicks_deepgrow_and_deepedit_style():
    deepgrow = monailabel.click_round(NAMES, {"label": "ring", "foreground": [[1, 2, 3]], "background": [[4, 5, 6]]})
    assert [(c.point, c.label, c.positive) for c in deepgrow.clicks] == [
        ((1.0, 2.0, 3.0), 2, True), ((4.0, 5.0, 6.0), 2, False)]
    deepedit = monailabel.click_round(NAMES, {"label": "inner", "inner": [[1, 1, 1]], "ring": [[2, 2, 2]]})
    assert [(c.label, c.positive) for c in deepedit.clicks] == [(1, True), (2, True)]
    for bad in ({}, {"foreground": "here"}, {"foreground": [[1, 2]]}, {"foreground": [[1, 2, 3]]}):
        with pytest.raises(BadInput):
            monailabel.click_round(NAMES, bad)


def test_final_labels_are_versioned_accepts_that_train(client, project, admin_headers, volume_and_label):
    volume, label = volume_and_label
    assert client.put("/datastore/image?image=case1", files={"file": _file(volume)},
                      headers=admin_headers).json() == {"image": "case1"}
    again = client.put("/datastore/image?image=case1", files={"file": _file(volume)}, headers=admin_headers)
    assert again.status_code == 409  # never replaced
    saved = []
    for array in (label, np.where(label == 2, 0, label)):
        answer = client.put("/datastore/label?image=case1&tag=final", files={"label": _file(volume, array)},
                            data={"params": "{}"}, headers=admin_headers)
        assert answer.status_code == 200, answer.text
        saved.append(answer.json())
    assert [s["version"] for s in saved] == [1, 2] and all(s["job_id"] for s in saved)
    downloaded = client.get("/datastore/label?label=case1&tag=final", headers=admin_headers)
    image = client.get(f"/api/v1/projects/{project['id']}/images", headers=admin_headers).json()[0]
    assert image["status"] == "accepted"
    assert client.get(image["links"]["label"], headers=admin_headers).content == downloaded.content
    jobs = client.get(f"/api/v1/projects/{project['id']}/jobs", headers=admin_headers).json()
    assert [j["trigger"] for j in jobs] == ["accept", "accept"]
    assert client.get("/datastore/label/info?label=case1&tag=final", headers=admin_headers).json()["version"] == 2
    bad_tag = client.put("/datastore/label?image=case1&tag=original", files={"label": _file(volume, label)},
                         headers=admin_headers)
    assert bad_tag.status_code == 400 and "final" in bad_tag.json()["detail"]
    smaller, _ = synthetic_volume((3, 32, 32))
    wrong_size = client.put("/datastore/label?image=case1", files={"label": _file(smaller)}, headers=admin_headers)
    assert wrong_size.status_code == 400 and "size" in wrong_size.json()["detail"]
    assert client.post("/activelearning/first", headers=admin_headers).json() == {}  # nothing left


def test_scribbles_from_raw_bytes_and_errors_name_the_problem(client, project, admin_headers, volume_and_label):
    volume, label = volume_and_label
    client.put("/datastore/image?image=case1", files={"file": _file(volume)}, headers=admin_headers)
    assert client.get("/train/", headers=admin_headers).status_code == 404  # no job yet
    nothing = client.post("/train/scribbleflow", headers=admin_headers)
    assert nothing.status_code == 409 and "final label" in nothing.json()["detail"]
    scribbles = np.zeros(label.shape, dtype=np.uint8)
    scribbles[2][label[2] == 2] = 4  # foreground (L + 2), OHIF's raw uint8 buffer in voxel order
    scribbles[2][:, :2] = 3
    raw = ("label.bin", io.BytesIO(scribbles.tobytes()), "application/octet-stream")
    answer = client.post("/infer/scribbles?image=case1&output=json", files={"label": raw},
                         data={"params": json.dumps({"selected_label_name": "ring"})}, headers=admin_headers)
    assert answer.status_code == 200, answer.text
    round_id = answer.json()["scribbleflow"]["round_id"]
    drawn = client.get(f"/api/v1/rounds/{round_id}", headers=admin_headers).json()["effort"]["voxels"]
    assert drawn == int(np.count_nonzero(scribbles))
    assert answer.json()["label_names"] == {"background": 0, "ring": 1}

    short = ("label.bin", io.BytesIO(b"\x00" * 10), "application/octet-stream")
    cases = [
        (client.post("/infer/scribbles?image=case1", files={"label": short}, headers=admin_headers), 400, "bytes"),
        (client.post("/infer/scribbles?image=case1", headers=admin_headers), 400, "label"),
        (client.post("/infer/nothing?image=case1", headers=admin_headers), 404, "models"),
        (client.post("/infer/clicks?image=nope", headers=admin_headers), 404, "nope"),
        (client.post("/infer/clicks?image=case1", data={"params": "[1]"}, headers=admin_headers), 400, "JSON"),
        (client.post("/infer/clicks?image=case1", data={"params": json.dumps(
            {"label": "ring", "foreground": [[999, 1, 1]]})}, headers=admin_headers), 400, "outside"),
        (client.post("/activelearning/random", headers=admin_headers), 404, "first"),
        (client.post("/train/other", headers=admin_headers), 404, "scribbleflow"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.text
    # The round queued a training job: while it is active, starting training answers with it.
    status = client.get("/train/", headers=admin_headers).json()
    assert status["request"]["trigger"] == "round"
    started = client.post("/train/scribbleflow", headers=admin_headers)
    if started.status_code == 200:
        assert started.json()["id"] == status["id"]
    else:  # it finished meanwhile, and there is still no final label to train on
        assert started.status_code == 409
        assert client.get("/train/", headers=admin_headers).json()["status"] in ("DONE", "ERROR", "STOPPED")


def test_the_served_project_and_image_ids(client, settings, admin_headers, volume_and_label):
    info = client.get("/info/", headers=admin_headers).json()
    assert info["labels"] == [] and info["datastore"]["total"] == 0
    assert client.get("/datastore/", headers=admin_headers).status_code == 404  # no project yet
    for name, labels in (("first", ["a"]), ("second", ["b", "c"])):
        client.post("/api/v1/projects", json={"name": name, "labels": labels}, headers=admin_headers)
    assert client.get("/info/", headers=admin_headers).json()["labels"] == ["a"]  # the first project
    settings.monailabel_project = "second"
    assert client.get("/info/", headers=admin_headers).json()["labels"] == ["b", "c"]
    # Two /api/v1 uploads with one name: ids tell them apart as name~<id>.
    volume, _ = volume_and_label
    project_id = client.get("/info/", headers=admin_headers).json()["scribbleflow"]["project_id"]
    ids = [client.post(f"/api/v1/projects/{project_id}/images", files={"file": _file(volume, name="same.nii.gz")},
                       headers=admin_headers).json()["id"] for _ in range(2)]
    objects = client.get("/datastore/?output=all", headers=admin_headers).json()["objects"]
    assert sorted(objects) == [f"same~{i}" for i in ids]
    assert client.get("/datastore/image/info?image=same", headers=admin_headers).status_code == 409
    answer = client.get(f"/datastore/image?image=same~{ids[1]}", headers=admin_headers)
    assert answer.status_code == 200 and answer.content[:2] == b"\x1f\x8b"


def test_stopping_training_cancels_the_consolidation_job(client, project, admin_headers, volume_and_label):
    volume, label = volume_and_label
    learning = client.patch(f"/api/v1/projects/{project['id']}/learning", json={"consolidation_steps": 100_000},
                            headers=admin_headers)
    assert learning.status_code == 200, learning.text
    client.put("/datastore/image?image=case1", files={"file": _file(volume)}, headers=admin_headers)
    answer = client.put("/datastore/label?image=case1&tag=final", files={"label": _file(volume, label)},
                        data={"params": "{}"}, headers=admin_headers)
    assert answer.status_code == 200, answer.text
    jobs_url = f"/api/v1/projects/{project['id']}/jobs"
    deadline = time.monotonic() + 120
    while not [j for j in client.get(jobs_url, headers=admin_headers).json()
               if j["trigger"] == "consolidate" and j["state"] == "running"]:
        assert time.monotonic() < deadline, client.get(jobs_url, headers=admin_headers).json()
        time.sleep(0.1)
    stopped = client.delete("/train/", headers=admin_headers)
    assert stopped.status_code == 200, stopped.text
    while True:
        jobs = client.get(jobs_url, headers=admin_headers).json()
        if all(j["state"] not in ("queued", "running") for j in jobs):
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(0.1)
    assert [(j["trigger"], j["state"]) for j in jobs] == [("accept", "succeeded"), ("consolidate", "cancelled")]
