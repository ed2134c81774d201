"""The Responses API on the trained demo model through a real server and the official client:
a streamed answer, then a function tool round trip through previous_response_id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

pytestmark = pytest.mark.slow

TIME_TOOL = {
    "type": "function",
    "name": "get_current_time",
    "description": "Get the current time.",
    "parameters": {"type": "object", "properties": {}},
}


def test_the_demo_model_streams_and_round_trips_a_tool_call(
    start_server: Any, demo_model: Path, tmp_path: Path
) -> None:
    config = tmp_path / "prompt-config.json"
    config.write_text(json.dumps({"loop_detection": "off"}))
    server = start_server(real=True, model=str(demo_model), prompt_config=str(config), preload=True)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    model = server.app.state.registry.default.id

    with client.responses.stream(
        model=model, input="What is the moon?", temperature=0, max_output_tokens=200
    ) as stream:
        kinds = [
            e.type
            for e in stream
            if e.type in ("response.reasoning_text.delta", "response.output_text.delta")
        ]
        answer = stream.get_final_response()
    assert kinds.count("response.reasoning_text.delta") > 3
    assert kinds.count("response.output_text.delta") > 3
    assert kinds == sorted(kinds, key=lambda k: k == "response.output_text.delta")
    assert answer.output_text
    assert "<|" not in answer.output_text
    assert [item.type for item in answer.output] == ["reasoning", "message"]

    first = client.responses.create(
        model=model, input="What time is it?", tools=[TIME_TOOL], temperature=0
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_current_time"]
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "14:05"}],
        tools=[TIME_TOOL],
        temperature=0,
    )
    assert second.status == "completed"
    assert second.output_text
    assert "<|" not in second.output_text
    assert second.usage is not None
    assert second.usage.input_tokens_details.cached_tokens > 0
