"""Property-based fuzzing of both APIs (``/api/v1`` and the MONAI Label routes) from the app's
OpenAPI schema with schemathesis, in process (ASGI): no 5xx, every documented response matches
its schema, no request takes longer than 10 s.

Bounded and reproducible: ``EXAMPLES`` cases per operation, Hypothesis derandomized (a fixed
seed), no example database. The data holds a project, an image named ``case1`` (the id the
schema's examples use) with an accepted label, and admin credentials on every request, so the
generated requests reach the handlers instead of stopping at authentication. Half of the
generated requests name things that exist (ids, the image ``case1``, file names), so that the
handlers' work is fuzzed and not only their lookups.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import max_response_time, not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.helpers import make_token, synthetic_volume, volume_bytes

EXAMPLES = 10
CHECKS = [not_a_server_error, response_schema_conformance, max_response_time]  # max: 10 s by default


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    data = tmp_path_factory.mktemp("fuzz")
    app = create_app(Settings(
        data_dir=data / "data", database_url=f"sqlite:///{data / 'fuzz.db'}", model_size=32,
        model_channels=(4, 8, 16), online_steps=2, replay_capacity=1, validation_every=0, max_upload_mb=2,
        compute_threads=1,
    ))
    token = make_token(app, "admin", "alice")
    headers = {"Authorization": f"Bearer {token}"}
    volume, label = synthetic_volume()
    with TestClient(app) as client:  # training stays off: jobs queue without running
        project = client.post("/api/v1/projects", json={"name": "heart", "labels": ["inner", "ring"]},
                              headers=headers)
        assert project.status_code == 201, project.text
        upload = client.put("/datastore/image?image=case1",
                            files={"file": ("case1.nii.gz", io.BytesIO(volume_bytes(volume)))}, headers=headers)
        assert upload.status_code == 200, upload.text
        saved = client.put("/datastore/label?image=case1",
                           files={"label": ("l.nii.gz", io.BytesIO(volume_bytes(volume, array=label)))},
                           headers=headers)
        assert saved.status_code == 200, saved.text
        assert np.unique(label).size == 3
        # A session, a round and a training job (queued) for the ids below.
        clicked = client.post("/infer/clicks?image=case1&output=json", headers=headers,
                              data={"params": '{"label": "inner", "foreground": [[16, 16, 3]]}'})
        assert clicked.status_code == 200, clicked.text
    return app, headers


# What exists in the fuzzed server: path and query values that name it.
EXISTING_PATH = {"project_id": 1, "image_id": 1, "session_id": 1, "round_id": 1, "job_id": 1, "version": 0,
                 "model": "clicks", "strategy": "first"}
EXISTING_QUERY = {"image": "case1", "label": "case1", "id": "case1"}
FILE_NAMES = ["segmentation", "residual", "scribble", "input", "proxy", "confidence", "prediction", "uncertainty"]


def _with_existing(values: dict | None, existing: dict) -> st.SearchStrategy:
    if not values:
        return st.just(values)
    known = {k: existing[k] for k in values if k in existing}
    if "name" in values:
        known["name"] = FILE_NAMES[0]
    return st.sampled_from([values, {**values, **known}]) if known else st.just(values)


def _fuzzed_schema(app, headers):
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)

    @schema.hook
    def flatmap_path_parameters(context, path_parameters):
        return _with_existing(path_parameters, EXISTING_PATH)

    @schema.hook
    def flatmap_query(context, query):
        return _with_existing(query, EXISTING_QUERY)

    @schema.hook
    def map_headers(context, generated):
        return {**(generated or {}), **headers}  # authentication is tested elsewhere

    return schema


def _operation_strategy(operation):
    """Valid and invalid requests, and the schema's own examples (the image id ``case1``)."""
    hooks = operation.schema.hooks
    strategies = [operation.as_strategy(mode, hooks=hooks) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    strategies += operation.schema.get_strategies_from_examples(operation, hooks=hooks)
    return st.one_of(strategies)


def test_api_fuzz(fuzz_app):
    app, headers = fuzz_app
    schema = _fuzzed_schema(app, headers)
    failures: dict[str, str] = {}
    answered: dict[str, set[int]] = {}
    operations = 0
    # Deletions last: they remove what the other operations are fuzzed against.
    ordered = sorted((result.ok() for result in schema.get_all_operations()), key=lambda op: op.method == "delete")
    for operation in ordered:
        operations += 1

        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=_operation_strategy(operation))
        def fuzz(case):
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            answered.setdefault(case.operation.label, set()).add(response.status_code)

        try:
            fuzz()
        except (AssertionError, BaseExceptionGroup) as exc:  # failures of every operation, together
            failures[operation.label] = str(exc)[:3000]
    assert operations > 40, operations
    # The requests got past authentication and reached the handlers: most operations succeeded at least once.
    succeeded = [label for label, codes in answered.items() if any(200 <= c < 300 for c in codes)]
    assert len(succeeded) > operations // 2, answered
    assert not failures, "\n\n".join(f"== {label}\n{text}" for label, text in failures.items())
