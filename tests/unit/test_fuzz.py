"""Property-based fuzz of the API from its own OpenAPI schema: no 5xx, responses match it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fakes import LocalClient
from tests.unit.helpers import AUTH, make_app, make_settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = 40


# Module level: schemathesis' fixture loader does not run on this pytest.
_app = make_app(make_settings(Path(tempfile.mkdtemp()), max_queued_jobs=5), LocalClient())
schema = schemathesis.openapi.from_asgi("/openapi.json", _app)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_with_a_valid_key(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=AUTH, checks=CHECKS)


@schema.parametrize()
@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_without_a_key(case: schemathesis.Case) -> None:
    response = case.call_and_validate(checks=CHECKS)
    if case.path != "/health" and not case.path.startswith(("/docs", "/openapi")):
        assert response.status_code in (401, 405)  # 405: a method the route lacks
