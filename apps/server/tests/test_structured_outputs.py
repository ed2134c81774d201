"""Structured outputs through the server: a schema or a forced tool call becomes a grammar
constraint on the generation (the reasoning stays free). Fast tests check the request -> constraint
mapping and the 400s on a scripted model; slow ones run the demo model behind a real uvicorn
server on 127.0.0.1 and the openai SDK: ``parse()`` gives a parsed object, ``tool_choice:
"required"`` always calls a declared function with valid arguments, and generated JSON schemas
decoded at temperature 1.0 validate whenever the reply finishes with ``stop``.

The generated schemas come from hypothesis-jsonschema (``from_schema`` over a JSON Schema of
schemas, SCHEMAS below). Its object strategy needs hypothesis < 6.170.10: 0.23.1 (the latest
release) calls ``many.more()``, which 6.170.10 removed ("AttributeError: 'many' object has no
attribute 'more'"); 6.130.12 to 6.170.9 work, so the dev group pins hypothesis below 6.170.10.
hypothesis-jsonschema has no schema-of-schemas strategy of its own (``from_schema`` is its only
public function), hence SCHEMAS."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis_jsonschema import from_schema
from pydantic import BaseModel, Field

from mlx_harmony.generate.constrain import (
    ConstraintSpec,
    FunctionSpec,
    prepare_tokenizer,
    tokenizer_view_state,
)
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


def test_the_default_loader_starts_the_tokenizer_view_at_load(
    start_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No constrained request yet: the view is building or built once the model has loaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from mlx_harmony.server import app as app_module

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|return|>", "<|call|>", "<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    generator = ScriptedGenerator([FINAL])
    generator.tokenizer = tokenizer  # type: ignore[attr-defined]
    monkeypatch.setattr(app_module, "load_generator", lambda entry, **_: generator)
    assert tokenizer_view_state(tokenizer) == "absent"
    start_server(real=True, preload=True)  # the default loader, with load_generator replaced
    assert tokenizer_view_state(tokenizer) in ("building", "ready")
    prepare_tokenizer(tokenizer)  # the build succeeds (a failed one reads as absent)
    assert tokenizer_view_state(tokenizer) == "ready"


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
def test_the_tokenizer_view_builds_at_load_and_a_request_right_after_waits_for_it(
    real: Any,
) -> None:
    """The server starts the llguidance view when the model loads, not on the first
    constrained request; a constrained request sent at once shares that build."""
    generator = real.app.state.worker.state.generator
    assert tokenizer_view_state(generator.tokenizer) in ("building", "ready")
    completion = _client(real).chat.completions.parse(
        model=real.app.state.registry.default.id,
        messages=[{"role": "user", "content": "Describe the moon."}],
        response_format=Moon,
        temperature=1.0,
        seed=2,
        max_tokens=400,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, Moon)
    assert tokenizer_view_state(generator.tokenizer) == "ready"


@pytest.mark.slow
def test_required_tool_choice_always_calls_a_declared_function(real: Any) -> None:
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


# Generated schemas: hypothesis-jsonschema draws them from SCHEMAS, a JSON Schema whose instances
# are object schemas of one to three leaf or array properties; `_satisfiable` then drops required
# names that are not properties and orders integer bounds (both would make a schema no JSON can
# match).
NAMES = ["name", "kind", "size", "tags", "ok"]
LEAF: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "properties": {
                "type": {"const": "integer"},
                "minimum": {"type": "integer", "minimum": -50, "maximum": 50},
                "maximum": {"type": "integer", "minimum": -50, "maximum": 50},
            },
            "required": ["type", "minimum", "maximum"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "type": {"const": "string"},
                "maxLength": {"type": "integer", "minimum": 0, "maximum": 6},
            },
            "required": ["type", "maxLength"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"type": {"enum": ["boolean", "null"]}},
            "required": ["type"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "enum": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[a-z]{1,5}$"},
                    "minItems": 1,
                    "maxItems": 3,
                    "uniqueItems": True,
                }
            },
            "required": ["enum"],
            "additionalProperties": False,
        },
    ]
}
ARRAY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"const": "array"},
        "items": LEAF,
        "maxItems": {"type": "integer", "minimum": 0, "maximum": 2},
    },
    "required": ["type", "items", "maxItems"],
    "additionalProperties": False,
}
SCHEMAS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"const": "object"},
        "properties": {
            "type": "object",
            "propertyNames": {"enum": NAMES},
            "additionalProperties": {"anyOf": [LEAF, ARRAY]},
            "minProperties": 1,
            "maxProperties": 3,
        },
        "required": {"type": "array", "items": {"enum": NAMES}, "uniqueItems": True},
        "additionalProperties": {"const": False},
    },
    "required": ["type", "properties", "required", "additionalProperties"],
    "additionalProperties": False,
}


def _satisfiable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with only present names required and each integer's bounds in order."""
    schema = json.loads(json.dumps(schema))
    schema["required"] = [name for name in schema["required"] if name in schema["properties"]]
    for prop in schema["properties"].values():
        for leaf in (prop, prop.get("items", {})):
            if leaf.get("type") == "integer" and leaf["minimum"] > leaf["maximum"]:
                leaf["minimum"], leaf["maximum"] = leaf["maximum"], leaf["minimum"]
    return schema


def _generated_schemas(count: int) -> list[dict[str, Any]]:
    """The first `count` distinct schemas hypothesis-jsonschema draws from SCHEMAS."""
    drawn: dict[str, dict[str, Any]] = {}

    @settings(
        max_examples=count + count // 10,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(from_schema(SCHEMAS))
    def collect(schema: dict[str, Any]) -> None:
        jsonschema.Draft202012Validator.check_schema(schema)
        fixed = _satisfiable(schema)
        drawn.setdefault(json.dumps(fixed, sort_keys=True), fixed)

    collect()
    assert len(drawn) >= count, f"hypothesis-jsonschema drew only {len(drawn)} distinct schemas"
    return list(drawn.values())[:count]


def test_generated_schemas_are_valid_and_each_has_instances() -> None:
    from hypothesis import find

    for schema in _generated_schemas(12):
        instance = find(from_schema(schema), lambda _: True, settings=settings(database=None))
        jsonschema.validate(instance, schema)


SCHEMA_COUNT = int(os.environ.get("MLX_HARMONY_SCHEMA_COUNT", "200"))


@pytest.mark.slow
def test_generated_schemas_validate_whenever_the_reply_stops(real: Any) -> None:
    """SCHEMA_COUNT (200) schemas from hypothesis-jsonschema, decoded at temperature 1.0, eight
    at a time: every reply that stops is JSON valid for its schema."""
    client = _client(real)
    model = real.app.state.registry.default.id
    schemas = _generated_schemas(SCHEMA_COUNT)

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

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, enumerate(schemas)))
    stopped = 0
    for schema, choice in answers:
        assert choice.finish_reason in ("stop", "length"), choice
        if choice.finish_reason == "stop":
            stopped += 1
            try:
                jsonschema.validate(json.loads(choice.message.content), schema)
            except (ValueError, jsonschema.ValidationError) as error:
                pytest.fail(f"{json.dumps(schema)}\n{choice.message.content!r}\n{error}")
    assert stopped >= len(schemas) // 2, f"only {stopped} of {len(schemas)} replies finished"
