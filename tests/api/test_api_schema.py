"""schemathesis against the OpenAPI document: no server error, no response outside the schema,
no undocumented status code or content type, for every operation (bounded: a few examples
each, derandomized, so the test is repeatable and its time is bounded)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the test extras")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from conftest import make_api  # noqa: E402

CHECKS = [
    checks.not_a_server_error,
    checks.response_schema_conformance,
    checks.status_code_conformance,
    checks.content_type_conformance,
]
EXAMPLES = 15


def test_openapi_conformance(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    api = make_api(tmp_path, None, start_jobs=False, data_root=root, max_upload_bytes=100_000)
    with api.client:
        headers = api.user("fuzz")
        schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", api.app)
        operations = [r.ok() for r in schema.get_all_operations()]
        assert len(operations) >= 15
        calls: dict[str, int] = {}

        def checker(op):
            @given(case=op.as_strategy())
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                case.call_and_validate(headers=headers, checks=CHECKS)
                calls[op.label] = calls.get(op.label, 0) + 1

            return check

        for op in operations:
            checker(op)()
        assert len(calls) == len(operations), set(o.label for o in operations) - set(calls)
