"""Structured outputs through the server: a schema or a forced tool call becomes a grammar
constraint on the generation (the reasoning stays free). Fast tests check the request -> constraint
mapping and the 400s on a scripted model; slow ones run the demo model behind a real uvicorn
server on 127.0.0.1 and the openai SDK: ``parse()`` gives a parsed object, ``tool_choice:
"required"`` always calls a declared function with valid arguments, and generated JSON schemas
decoded at temperature 1.0 validate whenever the reply finishes with ``stop``."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import BaseModel, Field

from mlx_harmony.generate.constrain import ConstraintSpec, FunctionSpec
from mlx_harmony.generate.testing import ScriptedGenerator

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_current_time",
        "description": "Get the current time.",
        "parameters": {"type": "object", "properties": {}},
    },
}
FINAL = "<|channel|>final<|message|>{}<|return|>"


def _chat(url: str, **body: Any) -> httpx.Response:
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def _scripted(start_server: Any, n: int = 1) -> tuple[Any, ScriptedGenerator]:
    generator = ScriptedGenerator([FINAL] * n)
    return start_server(generator), generator


# -- the request -> constraint mapping (a scripted model records what it was asked) ------------


def test_response_format_json_schema_becomes_the_constraint(start_server: Any) -> None:
    server, generator = _scripted(start_server, 2)
    schema = WEATHER["function"]["parameters"]
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}
    assert _chat(server.url, response_format=fmt).status_code == 200
    assert _chat(server.url, response_format={"type": "json_object"}).status_code == 200
    assert [c.constraint for c in generator.calls] == [
        ConstraintSpec("json_schema", schema=schema),
        ConstraintSpec("json_object"),
    ]


def test_tool_choice_and_strict_tools_become_tool_call_constraints(start_server: Any) -> None:
    server, generator = _scripted(start_server, 4)
    strict = json.loads(json.dumps(WEATHER))
    strict["function"]["strict"] = True
    named = {"type": "function", "function": {"name": "get_weather"}}
    for body in (
        {"tools": [WEATHER, TIME], "tool_choice": "required"},
        {"tools": [WEATHER, TIME], "tool_choice": named},
        {"tools": [strict, TIME]},
        {"tools": [WEATHER, TIME]},  # auto, nothing strict: free
    ):
        assert _chat(server.url, **body).status_code == 200, body
    weather = FunctionSpec("get_weather", WEATHER["function"]["parameters"], strict=False)
    time = FunctionSpec("get_current_time", {"type": "object", "properties": {}}, strict=False)
    strict_weather = FunctionSpec("get_weather", weather.parameters, strict=True)
    assert [c.constraint for c in generator.calls] == [
        ConstraintSpec("tool_call", functions=(weather, time), required=True),
        ConstraintSpec("tool_call", functions=(weather,), required=True),
        ConstraintSpec("tool_call", functions=(strict_weather, time), required=False),
        None,
    ]


def test_responses_text_format_and_tool_choice_become_constraints(start_server: Any) -> None:
    server, generator = _scripted(start_server, 2)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = {"format": {"type": "json_schema", "name": "a", "schema": schema}}
    tool = {"type": "function", "name": "get_weather", **WEATHER["function"]}
    for body in ({"text": fmt}, {"tools": [tool], "tool_choice": "required"}):
        response = httpx.post(
            f"{server.url}/v1/responses", json={"input": "hi", **body}, timeout=30
        )
        assert response.status_code == 200, response.text
    weather = FunctionSpec("get_weather", WEATHER["function"]["parameters"], strict=False)
    assert [c.constraint for c in generator.calls] == [
        ConstraintSpec("json_schema", schema=schema),
        ConstraintSpec("tool_call", functions=(weather,), required=True),
    ]


def test_strict_tools_under_auto_with_a_json_format_is_refused(start_server: Any) -> None:
    server, _ = _scripted(start_server)
    strict = json.loads(json.dumps(WEATHER))
    strict["function"]["strict"] = True
    response = _chat(server.url, tools=[strict], response_format={"type": "json_object"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format.type"
    assert "strict" in error["message"]


# -- the demo model behind a real server ----------------------------------------------------------


@pytest.fixture(scope="module")
def demo_model() -> Path:
    env = os.environ.get("MLX_HARMONY_DEMO_MODEL")
    if env:
        return Path(env)
    from mlx_harmony.demo_model import ensure_demo_model

    return Path(ensure_demo_model(progress=False))


@pytest.fixture
def real(start_server: Any, demo_model: Path, tmp_path: Path) -> Any:
    config = tmp_path / "prompt-config.json"
    config.write_text(json.dumps({"loop_detection": "off"}))
    return start_server(real=True, model=str(demo_model), prompt_config=str(config), preload=True)


def _client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)


class Moon(BaseModel):
    name: str = Field(max_length=20)
    count: int = Field(ge=0, le=99)
    kind: Literal["moon", "planet", "star"]


@pytest.mark.slow
def test_parse_returns_a_parsed_object_and_bad_schemas_are_400(real: Any) -> None:
    client = _client(real)
    model = real.app.state.registry.default.id
    completion = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Describe the moon."}],
        response_format=Moon,
        temperature=1.0,
        seed=1,
        max_tokens=400,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, Moon)
    assert completion.usage is not None
    assert completion.usage.completion_tokens_details.reasoning_tokens > 0  # analysis is there

    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], response_format=bad
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == "response_format.json_schema.schema"
    assert "not" in error["message"]


@pytest.mark.slow
def test_required_tool_choice_always_calls_a_declared_function(real: Any) -> None:
    import jsonschema

    client = _client(real)
    model = real.app.state.registry.default.id
    parameters = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    named = {"type": "function", "function": {"name": "get_weather"}}

    def ask(seed: int) -> Any:
        return client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is the moon?"}],
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice="required" if seed % 2 else named,  # type: ignore[arg-type]
            temperature=1.0,
            seed=seed,
            max_tokens=300,
        )

    with ThreadPoolExecutor(4) as pool:
        completions = list(pool.map(ask, range(4)))
    for seed, completion in enumerate(completions):
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls", choice.message
        calls = choice.message.tool_calls or []
        assert calls, choice.message
        for call in calls:
            assert call.function.name in parameters
            if seed % 2 == 0:
                assert call.function.name == "get_weather"
            jsonschema.validate(json.loads(call.function.arguments), parameters[call.function.name])


# Generated schemas: hypothesis-jsonschema draws the names, enums and bounds; the schema objects
# are assembled here (its own object strategy relies on a Hypothesis internal that changed).
NAMES = from_schema({"type": "string", "pattern": "^[a-z]{1,6}$"})
ENUMS = from_schema(
    {
        "type": "array",
        "items": {"type": "string", "pattern": "^[a-z]{1,5}$"},
        "minItems": 1,
        "maxItems": 3,
        "uniqueItems": True,
    }
)
BOUNDS = from_schema({"type": "integer", "minimum": -50, "maximum": 50})
SHORT = from_schema({"type": "integer", "minimum": 0, "maximum": 6})


@st.composite
def leaf_schemas(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["integer", "string", "boolean", "null", "enum"]))
    if kind == "integer":
        low = draw(BOUNDS)
        return {"type": "integer", "minimum": low, "maximum": low + draw(SHORT)}
    if kind == "string":
        return {"type": "string", "maxLength": draw(SHORT)}
    if kind == "enum":
        return {"enum": draw(ENUMS)}
    return {"type": kind}


@st.composite
def json_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """An object of one to three leaves, maybe with an array of a leaf."""
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    properties = {name: draw(leaf_schemas()) for name in names}
    if draw(st.booleans()):
        properties["items"] = {"type": "array", "items": draw(leaf_schemas()), "maxItems": 2}
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if draw(st.booleans())],
        "additionalProperties": False,
    }


SCHEMA_COUNT = int(os.environ.get("MLX_HARMONY_SCHEMA_COUNT", "200"))


@pytest.mark.slow
def test_generated_schemas_validate_whenever_the_reply_stops(real: Any) -> None:
    """SCHEMA_COUNT schemas (200), decoded at temperature 1.0, eight at a time."""
    import jsonschema

    client = _client(real)
    model = real.app.state.registry.default.id

    def ask(job: tuple[int, dict[str, Any]]) -> tuple[dict[str, Any], Any]:
        seed, schema = job
        fmt = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        completion = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Describe the moon as JSON."}],
            response_format=fmt,  # type: ignore[arg-type]
            temperature=1.0,
            seed=seed,
            max_tokens=120,
        )
        return schema, completion.choices[0]

    @settings(
        max_examples=1,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(schemas=st.lists(json_schemas(), min_size=SCHEMA_COUNT, max_size=SCHEMA_COUNT))
    def check(schemas: list[dict[str, Any]]) -> None:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, enumerate(schemas)))
        stopped = 0
        for schema, choice in answers:
            assert choice.finish_reason in ("stop", "length"), choice
            if choice.finish_reason == "stop":
                stopped += 1
                jsonschema.validate(json.loads(choice.message.content), schema)
        assert stopped >= len(schemas) // 2, f"only {stopped} of {len(schemas)} replies finished"

    check()
