"""Property-based HTTP tests from the service's own OpenAPI document (schemathesis 4).

Every operation in `/docs.json` gets a bounded, derandomized set of generated requests, sent
with the API token to the shared server: none may answer 5xx, successful answers must conform
to the documented schema, and 4xx answers must be JSON errors that name the problem. (BentoML
documents every 400 `detail` as a string although it sends pydantic's list of errors, so the
schema check is not applied to 4xx answers.) CDS Hooks operations carry a fresh EHR-signed JWT.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.conftest import API_TOKEN, Server

pytestmark = pytest.mark.e2e

EXAMPLES = 30


def test_every_documented_operation_survives_generated_requests(server: Server) -> None:
    document = server.http.get(f"{server.url}/docs.json")
    assert document.status_code == 200
    schema = schemathesis.openapi.from_dict(document.json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v1/predict" for op in operations)
    ok_checks = [not_a_server_error, response_schema_conformance, content_type_conformance]
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_TOKEN}"
    failures: dict[str, str] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: schemathesis.Case) -> None:
            headers = None
            if case.path.startswith("/cds-services"):  # an EHR-signed JWT per call, not the token
                headers = server.cds_headers(unquote(case.formatted_path))
            response = case.call(base_url=server.url, session=session, headers=headers)
            if response.status_code < 400:
                case.validate_response(response, checks=ok_checks)
                return
            case.validate_response(response, checks=[not_a_server_error])
            assert response.status_code in {400, 404, 413}, response.status_code
            body = response.json()
            assert body.get("error") or body.get("detail") or body.get("issue"), response.text

        try:
            exercise()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures[f"{operation.method.upper()} {operation.path}"] = str(exc)[:2000]
    session.close()
    assert not failures, "\n\n".join(f"{op}:\n{why}" for op, why in failures.items())


def _keywords(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keywords(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keywords(v)}
    return set()


def test_documented_ranges_use_json_schema_keywords(server: Server) -> None:
    document = server.http.get(f"{server.url}/docs.json").json()
    assert not {"ge", "le", "gt", "lt"} & _keywords(document["components"])
