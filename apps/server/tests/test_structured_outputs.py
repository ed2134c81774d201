"""Structured outputs through the server: a schema or a forced tool call becomes a grammar
constraint on the generation (the reasoning stays free). Fast tests check the request -> constraint
mapping and the 400s on a scripted model; slow ones run the demo model behind a real uvicorn
server on 127.0.0.1 and the openai SDK: ``parse()`` gives a parsed object, ``tool_choice:
"required"`` always calls a declared function with valid arguments, and generated JSON schemas
decoded at temperature 1.0 through ``parse()`` with a pydantic model built from each schema give a
parsed object and valid JSON whenever the reply finishes with ``stop``.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from pydantic import BaseModel, ConfigDict, Field, create_model

from mlx_harmony.generate.constrain import (
    ConstraintSpec,
    FunctionSpec,
    clear_constraint_cache,
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
    clear_constraint_cache(tokenizer_views=True)  # views are kept per vocabulary: none yet
    assert tokenizer_view_state(tokenizer) == "absent"
    start_server(real=True, preload=True)  # the default loader, with load_generator replaced
    assert tokenizer_view_state(tokenizer) in ("building", "ready")
    prepare_tokenizer(tokenizer)  # the build succeeds (a failed one reads as absent)
    assert tokenizer_view_state(tokenizer) == "ready"


# -- the demo model behind a real server ----------------------------------------------------------


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


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_generated_schemas_are_valid_and_each_has_instances() -> None:
    from hypothesis import find

    for schema in _generated_schemas(12):
        instance = find(from_schema(schema), lambda _: True, settings=settings(database=None))
        jsonschema.validate(instance, schema)


def _leaf_type(leaf: dict[str, Any]) -> Any:
    """The pydantic type of one leaf or array of SCHEMAS (the JSON Schema of `leaf`)."""
    if "enum" in leaf:
        return Literal.__getitem__(tuple(leaf["enum"]))
    kind = leaf["type"]
    if kind == "integer":
        return Annotated[int, Field(ge=leaf["minimum"], le=leaf["maximum"])]
    if kind == "string":
        return Annotated[str, Field(max_length=leaf["maxLength"])]
    if kind == "boolean":
        return bool
    if kind == "null":
        return None
    if kind == "array":
        item = _leaf_type(leaf["items"])
        return Annotated[list[item], Field(max_length=leaf["maxItems"])]  # type: ignore[valid-type]
    raise ValueError(f"SCHEMAS has no leaf {json.dumps(leaf)}; add its type to _leaf_type")


def _model_of(schema: dict[str, Any]) -> type[BaseModel]:
    """A pydantic model for a generated object schema, for ``parse(response_format=...)``.

    A required property is its leaf type; a property that is not required is ``leaf | None``
    with default None, the SDK's strict-mode form of an optional field (see `_absent_for_null`).
    ``strict=True`` keeps validation to JSON Schema's types (no "1" for 1, no "true" for true);
    ``extra="forbid"`` is the schema's ``additionalProperties: false``."""
    fields: dict[str, Any] = {}
    for name, leaf in schema["properties"].items():
        kind = _leaf_type(leaf)
        if name in schema["required"]:
            fields[name] = (kind, ...)
        else:
            fields[name] = (kind if kind is None else kind | None, None)
    config = ConfigDict(extra="forbid", strict=True)
    return create_model("Generated", __config__=config, **fields)


def _absent_for_null(instance: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`instance` without the null properties that `schema` does not require.

    The SDK's ``to_strict_json_schema`` makes every property required, and ``leaf | None = None``
    sends an optional property as ``{"anyOf": [leaf, {"type": "null"}]}`` (the None default is
    dropped), so null stands for absent. Dropping a property that is not required never makes an
    instance of a generated schema invalid (none has ``minProperties`` or dependencies)."""
    return {k: v for k, v in instance.items() if v is not None or k in schema["required"]}


# One leaf of each kind in LEAF and ARRAY, with a value out of its bounds.
LEAF_CASES: list[tuple[dict[str, Any], Any]] = [
    ({"type": "integer", "minimum": -3, "maximum": 4}, 5),
    ({"type": "integer", "minimum": -3, "maximum": 4}, -4),
    ({"type": "string", "maxLength": 3}, "abcd"),
    ({"type": "string", "maxLength": 0}, "a"),
    ({"type": "boolean"}, "true"),
    ({"type": "null"}, 0),
    ({"enum": ["ab", "c"]}, "abc"),
    ({"enum": ["x"]}, "y"),
    (
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2}, "maxItems": 2},
        [0, 1, 2],
    ),
    (
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2}, "maxItems": 2},
        [3],
    ),
    ({"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 1}, ["c"]),
    ({"type": "array", "items": {"type": "null"}, "maxItems": 0}, [None]),
]


def _two_of(leaf: dict[str, Any]) -> dict[str, Any]:
    """An object schema of SCHEMAS' shape: `leaf` as a required and as an optional property."""
    return {
        "type": "object",
        "properties": {"name": leaf, "kind": leaf},
        "required": ["name"],
        "additionalProperties": False,
    }


def test_the_leaf_cases_are_in_the_schema_space_and_cover_each_kind() -> None:
    for leaf, _ in LEAF_CASES:
        jsonschema.validate(leaf, {"anyOf": [LEAF, ARRAY]})
    for branch in [*LEAF["anyOf"], ARRAY]:
        assert any(jsonschema.Draft202012Validator(branch).is_valid(c) for c, _ in LEAF_CASES)


@pytest.mark.parametrize(("leaf", "bad"), LEAF_CASES, ids=lambda v: json.dumps(v))
@settings(max_examples=15, deadline=None, database=None, derandomize=True)
@given(data=st.data())
def test_the_model_of_a_schema_accepts_its_instances_and_rejects_out_of_bounds(
    leaf: dict[str, Any], bad: Any, data: st.DataObject
) -> None:
    schema = _two_of(leaf)
    model = _model_of(schema)
    instance = data.draw(from_schema(schema))
    assert model.model_validate_json(json.dumps(instance))  # what parse() does with the content
    for wrong in ({**instance, "name": bad}, {**instance, "kind": bad}, {"kind": instance["name"]}):
        assert not jsonschema.Draft202012Validator(schema).is_valid(wrong)
        with pytest.raises(pydantic.ValidationError):
            model.model_validate_json(json.dumps(wrong))


def test_parse_sends_optional_properties_as_required_and_nullable(start_server: Any) -> None:
    """What the SDK sends for `_model_of`: every property required, the optional ones nullable."""
    schema = _two_of({"type": "integer", "minimum": 0, "maximum": 9})
    content = '{"name": 3, "kind": null}'
    generator = ScriptedGenerator([f"<|channel|>final<|message|>{content}<|return|>"])
    server = start_server(generator)
    model = _model_of(schema)
    completion = _client(server).chat.completions.parse(
        model=server.app.state.registry.default.id,
        messages=[{"role": "user", "content": "hi"}],
        response_format=model,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, model)
    assert parsed.model_dump() == {"name": 3, "kind": None}
    constraint = generator.calls[0].constraint
    assert constraint is not None
    assert constraint.schema is not None
    sent = constraint.schema
    assert sorted(sent["required"]) == ["kind", "name"]
    assert sent["properties"]["kind"]["anyOf"][1] == {"type": "null"}
    assert sent["additionalProperties"] is False
    jsonschema.validate(json.loads(content), sent)
    jsonschema.validate(_absent_for_null(json.loads(content), schema), schema)


SCHEMA_COUNT = int(os.environ.get("MLX_HARMONY_SCHEMA_COUNT", "200"))


@dataclass(frozen=True)
class _Reply:
    """One generated schema's request through ``parse()`` and what came back."""

    schema: dict[str, Any]
    model: type[BaseModel]
    sent: dict[str, Any]  # the schema in the request body, as the SDK sent it
    finish_reason: str
    content: str | None
    parsed: object  # message.parsed, or the error parse() raised on a stopped reply


@pytest.mark.slow
def test_generated_schemas_validate_whenever_the_reply_stops(real: Any) -> None:
    """SCHEMA_COUNT (200) schemas from hypothesis-jsonschema, each sent through
    ``chat.completions.parse(response_format=_model_of(schema))`` at temperature 1.0, eight at a
    time. Strict mode changes what is sent: the SDK's ``to_strict_json_schema`` makes every
    property required, so a property the generated schema does not require goes out as
    ``{"anyOf": [leaf, {"type": "null"}]}`` and null stands for absent; a schema whose
    properties are all required goes out unchanged in meaning (pydantic adds titles, and
    ``"type": "string"`` to enums of strings). For every reply that stops: ``message.parsed`` is
    an instance of the model, the content is valid for the schema sent (read back from the
    request) and, with the nulls of optional properties dropped (`_absent_for_null`, a no-op
    when all are required), for the generated schema."""
    client = _client(real)
    model_id = real.app.state.registry.default.id
    schemas = _generated_schemas(SCHEMA_COUNT)

    def ask(job: tuple[int, dict[str, Any]]) -> _Reply:
        seed, schema = job
        model = _model_of(schema)
        raw = client.chat.completions.with_raw_response.parse(
            model=model_id,
            messages=[{"role": "user", "content": "Describe the moon as JSON."}],
            response_format=model,
            temperature=1.0,
            seed=seed,
            max_tokens=120,
        )
        sent = json.loads(raw.http_request.content)["response_format"]["json_schema"]["schema"]
        choice = raw.http_response.json()["choices"][0]
        parsed: object = None
        if choice["finish_reason"] == "stop":
            try:
                parsed = raw.parse().choices[0].message.parsed
            except (pydantic.ValidationError, openai.OpenAIError) as error:
                parsed = error
        content = choice["message"]["content"]
        return _Reply(schema, model, sent, choice["finish_reason"], content, parsed)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, enumerate(schemas)))
    stopped = 0
    for reply in replies:
        where = f"{json.dumps(reply.schema)}\nsent {json.dumps(reply.sent)}\n{reply.content!r}"
        assert reply.finish_reason in ("stop", "length"), where
        assert sorted(reply.sent["required"]) == sorted(reply.schema["properties"]), where
        if reply.finish_reason != "stop":
            continue
        stopped += 1
        if not isinstance(reply.parsed, reply.model):
            pytest.fail(f"{where}\nparse() gave {reply.parsed!r}")
        try:
            instance = json.loads(reply.content or "")
            jsonschema.validate(instance, reply.sent)
            jsonschema.validate(_absent_for_null(instance, reply.schema), reply.schema)
        except (ValueError, jsonschema.ValidationError) as error:
            pytest.fail(f"{where}\n{error}")
    optional = sum(set(r.schema["required"]) != set(r.schema["properties"]) for r in replies)
    print(f"{stopped} of {len(replies)} stopped; {optional} schemas have optional properties")
    assert stopped >= len(schemas) // 2, f"only {stopped} of {len(schemas)} replies finished"
