"""Structured outputs end to end on the trained demo model, through TokenGenerator.stream's
logits_processors hook: sampled at temperature 1.0, the final answer is JSON that validates and
the analysis before it is still there."""

from __future__ import annotations

import json

import pytest

from mlx_harmony.generate import StopReason, TokenGenerator
from mlx_harmony.generate.constrain import ConstraintSpec, FunctionSpec, compile_constraint

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "kind": {"enum": ["moon", "planet", "star"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "count", "kind", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> TokenGenerator:
    module = pytest.importorskip("mlx_harmony.demo_model")
    return TokenGenerator(module.demo_model_for_tests(tmp_path_factory), loop_detection="off")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_final_answer_validates(demo: TokenGenerator, seed: int) -> None:
    import jsonschema

    from mlx_harmony.harmony_format import Message, parse_completion, render_prompt
    from mlx_harmony.sampling import SamplingParams

    compiled = compile_constraint(ConstraintSpec("json_schema", schema=SCHEMA), demo.tokenizer)
    prompt = render_prompt([Message.user("Describe the moon as JSON.")])
    events = list(
        demo.stream(
            prompt_tokens=prompt,
            sampling=SamplingParams(temperature=1.0, seed=seed),
            max_tokens=400,
            logits_processors=[compiled.new()],
        )
    )
    tokens = [e.token for e in events if e.token is not None]
    assert events[-1].stop_reason is StopReason.STOP, demo.decode(tokens)
    messages = parse_completion(tokens).messages
    channels = [m.channel for m in messages]
    assert channels[-1] == "final", demo.decode(tokens)
    assert "analysis" in channels, demo.decode(tokens)
    assert any(m.text.strip() for m in messages if m.channel == "analysis")
    jsonschema.validate(json.loads(messages[-1].text), SCHEMA)


@pytest.mark.slow
def test_required_tool_call_names_a_declared_function(demo: TokenGenerator) -> None:
    import jsonschema

    from mlx_harmony.harmony_format import Message, parse_completion, render_prompt
    from mlx_harmony.sampling import SamplingParams

    weather = FunctionSpec(
        "get_weather",
        {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"],
            "additionalProperties": False,
        },
    )
    spec = ConstraintSpec("tool_call", functions=(weather,), required=True)
    compiled = compile_constraint(spec, demo.tokenizer)
    prompt = render_prompt([Message.user("What is the moon?")])
    tokens = list(
        demo.generate(
            prompt_tokens=prompt,
            sampling=SamplingParams(temperature=1.0, seed=3),
            max_tokens=400,
            logits_processors=[compiled.new()],
        )
    )
    call = parse_completion(tokens).messages[-1]
    assert call.recipient == "functions.get_weather", demo.decode(tokens)
    jsonschema.validate(json.loads(call.text), weather.parameters)
