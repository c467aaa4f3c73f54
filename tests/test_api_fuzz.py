"""Property-based fuzzing of both APIs (``/api/v1`` and the MONAI Label routes) from the app's
OpenAPI schema with schemathesis, in process (ASGI): no 5xx, every documented response matches
its schema, no request takes longer than 10 s.

Bounded and reproducible: ``EXAMPLES`` cases per operation, Hypothesis derandomized (a fixed
seed), no example database. The data holds a project, an image named ``case1`` (the id the
schema's examples use) with an accepted label, and admin credentials on every request, so the
generated requests reach the handlers instead of stopping at authentication.
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

from tests.conftest import make_token, synthetic_volume, volume_bytes

EXAMPLES = 12
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
    return app, headers


def _operation_strategy(operation):
    """Valid and invalid requests, and the schema's own examples (the image id ``case1``)."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    strategies += operation.schema.get_strategies_from_examples(operation)
    return st.one_of(strategies)


def test_api_fuzz(fuzz_app):
    app, headers = fuzz_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: dict[str, str] = {}
    answered: dict[str, set[int]] = {}
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
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
