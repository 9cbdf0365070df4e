"""schemathesis against the server's own OpenAPI schema (`GET /openapi.json`), on a real server with an API
key: every operation gets generated requests, valid and invalid (schemathesis's positive and negative modes).
None may get a 5xx, and every error comes in the documented body, `{"error": {"type", "code", "message",
"param", "event_id"}}` (server/errors.py). schemathesis is a dev extra (pyproject.toml)."""

from __future__ import annotations

import collections
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from tests.server.harness import ServerProcess

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402  (after the skip: a dev extra)

KEY = "sk-openapi-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
# per operation and mode (OPENAPI_EXAMPLES=N for a longer hunt): ~250 requests, ~10 s here
EXAMPLES = int(os.environ.get("OPENAPI_EXAMPLES", 40))
PROBES = {"GET /healthz", "GET /readyz"}  # the only operations open on a server with keys
ERROR_FIELDS = {"type", "code", "message", "param", "event_id"}


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    # short speech: a generated 4,096-character input must not mean minutes of text to speech
    with ServerProcess(tiny_dir, tmp_path_factory.mktemp("openapi"), env={"LFM_AUDIO_API_KEYS": KEY},
                       args=["--max-response-tokens", "8"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def api(server):
    config = schemathesis.Config()
    config.projects.default.generation.update(max_examples=EXAMPLES, modes=["positive", "negative"])
    config.projects.default.update(base_url=server.base, headers=AUTH)
    return schemathesis.openapi.from_url(server.base + "/openapi.json", config=config)


@schemathesis.check
def errors_in_the_documented_shape(ctx, response, case):
    if response.status_code < 400:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_FIELDS and isinstance(body["error"]["code"], str), body
    return True


@pytest.mark.slow
def test_generated_requests_get_no_server_error_and_documented_errors(api, server):
    # schemathesis's own pytest integration (schema.parametrize on a fixture) fails on pytest 9: the
    # operations' strategies are driven by hypothesis here instead
    checks = [schemathesis.checks.not_a_server_error, errors_in_the_documented_shape]
    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    operations = [result.ok() for result in api.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def one(case):
                response = case.call_and_validate(checks=checks)
                statuses[(case.operation.label, response.status_code)] += 1

            try:
                one()
            except Unsatisfiable:  # nothing to make invalid: an operation without parameters or body
                assert mode is GenerationMode.NEGATIVE, operation.label
    for operation in operations:  # without a key (and with a wrong one): refused, in the documented shape
        @settings(max_examples=2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def keyless(case):
            for auth in ({"Authorization": ""}, {"Authorization": "Bearer sk-wrong-0123456789"}):
                response = case.call(headers=auth)
                errors_in_the_documented_shape(None, response, case)
                label = case.operation.label
                if label in PROBES:
                    assert response.status_code < 400, (label, response.status_code)
                else:
                    assert response.status_code == 401, (label, response.status_code, response.text)
                statuses[(label + " keyless", response.status_code)] += 1

        keyless()
    print(f"\n{sum(statuses.values())} requests over {len(operations)} operations: {sorted(statuses.items())}")
    assert {op.label for op in operations} >= {"GET /v1/models", "POST /v1/audio/speech",
                                               "POST /v1/audio/transcriptions", "POST /v1/realtime/client_secrets"}
    assert "Traceback" not in server.log() and KEY not in server.log()
