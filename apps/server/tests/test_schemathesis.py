"""schemathesis against the running server's /openapi.json: no input, valid by the schema or
not, gives a 5xx, and every error is OpenAI-shaped.

The cases come from schemathesis' Hypothesis strategies for each operation (positive and
negative data), run against the real server. (schemathesis' own pytest plugin does not work
with the pytest in use, so the operations are driven here.)
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

EXAMPLES = 30


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_the_server_fail(
    start_server: Any, echo: Any, wait_for: Any, mode: Any
) -> None:
    server = start_server(echo(), api_key="k", max_body_bytes=64 * 1024, max_tokens_cap=64)
    auth = {"Authorization": "Bearer k"}  # with a key set, the schema needs it too
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models"}
    tried: dict[str, int] = {}
    for operation in operations:
        run_operation(operation, mode, auth, tried)
    assert tried.get("POST /v1/chat/completions", 0) > 1
    assert wait_for(lambda: server.worker.queued == 0)


def run_operation(operation: Any, mode: Any, auth: dict[str, str], tried: dict[str, int]) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: Any) -> None:
        tried[label] = tried.get(label, 0) + 1
        response = case.call(headers=auth, timeout=30)
        assert response.status_code < 500, (
            f"{label} -> {response.status_code}: {response.text[:500]}\n"
            f"body: {str(case.body)[:500]}"
        )
        if response.status_code >= 400:
            assert {"message", "type", "param", "code"} <= set(response.json()["error"])

    try:
        check()
    except Unsatisfiable:
        # No negative input exists (a GET without parameters): nothing to try.
        assert mode == GenerationMode.NEGATIVE
