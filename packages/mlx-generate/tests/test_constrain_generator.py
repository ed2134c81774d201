"""The `constraint=` parameter of the generators on the tiny random gpt-oss (the real o200k
vocabulary): compiled before prefill, masking one row of a mixed batch, ending on ``length``
when the grammar is not complete, and generated JSON schemas whose replies validate.

A random model rarely closes anything on its own, so the property test puts a processor
before the constraint that favours a few closing tokens: the constraint must hold whatever the
logits are, and this walks many different paths through the grammar quickly."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import mlx.core as mx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from mlx_harmony.generate import BatchTokenGenerator, LoadedModel, StopReason, TokenGenerator
from mlx_harmony.generate.constrain import ConstraintError, ConstraintSpec

# Generated schemas: objects of leaves, an array of leaves and a nested object. hypothesis-
# jsonschema draws the names, enums and bounds; it cannot draw JSON objects with this
# Hypothesis (its object strategy uses an internal API that changed), so the schema objects are
# assembled here.
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
LOW = from_schema({"type": "integer", "minimum": -50, "maximum": 0})
HIGH = from_schema({"type": "integer", "minimum": 1, "maximum": 50})
SHORT = from_schema({"type": "integer", "minimum": 0, "maximum": 6})


@st.composite
def leaf_schemas(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["integer", "string", "boolean", "null", "enum"]))
    if kind == "integer":
        return {"type": "integer", "minimum": draw(LOW), "maximum": draw(HIGH)}
    if kind == "string":
        return {"type": "string", "maxLength": draw(SHORT)}
    if kind == "enum":
        return {"enum": draw(ENUMS)}
    return {"type": kind}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _leaves(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    return {name: draw(leaf_schemas()) for name in names}


@st.composite
def json_schemas(draw: st.DrawFn) -> dict[str, Any]:
    """An object schema of up to three leaves, maybe an array and a nested object."""
    properties = _leaves(draw)
    if draw(st.booleans()):
        properties["items"] = {"type": "array", "items": draw(leaf_schemas()), "maxItems": 2}
    if draw(st.booleans()):
        inner = _leaves(draw)
        properties["inner"] = _object(inner, sorted(inner))
    required = [name for name in properties if draw(st.booleans())]
    return _object(properties, required)


CLOSERS = ("<|end|>", "final", "}", "]", '"', '",', "0", "true", "null", "<|return|>")


def favour(tokenizer: Any, pieces: Sequence[str], bias: float = 8.0) -> Callable[..., mx.array]:
    """A logits processor that adds `bias` to the first token of each of `pieces`."""
    ids = mx.array(sorted({tokenizer.encode(p, add_special_tokens=False)[0] for p in pieces}))

    def processor(tokens: mx.array, logits: mx.array) -> mx.array:
        return logits + mx.zeros((logits.shape[-1],)).at[ids].add(bias)

    return processor


@pytest.fixture(scope="module")
def generator(tiny: LoadedModel) -> TokenGenerator:
    return TokenGenerator(tiny, loop_detection="off")


@pytest.fixture(scope="module")
def prompt() -> list[int]:
    from mlx_harmony.harmony_format import Message, render_prompt

    return render_prompt([Message.user("Describe the moon as JSON.")])


def _final_json(generator: TokenGenerator, tokens: list[int]) -> Any:
    from mlx_harmony.harmony_format import parse_completion

    messages = parse_completion(tokens).messages
    assert messages[-1].channel == "final", generator.decode(tokens)
    return json.loads(messages[-1].text)


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_generated_schemas_validate_when_the_reply_stops(
    generator: TokenGenerator, prompt: list[int]
) -> None:
    import jsonschema

    from mlx_harmony.sampling import SamplingParams

    stopped: list[bool] = []
    bias = favour(generator.tokenizer, CLOSERS)

    @settings(
        max_examples=6,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(schema=json_schemas(), seed=st.integers(0, 2**31))
    def check(schema: dict[str, Any], seed: int) -> None:
        jsonschema.Draft202012Validator.check_schema(schema)
        events = list(
            generator.stream(
                prompt_tokens=prompt,
                sampling=SamplingParams(temperature=1.0, seed=seed),
                max_tokens=60,
                logits_processors=[bias],
                constraint=ConstraintSpec("json_schema", schema=schema),
            )
        )
        tokens = [e.token for e in events if e.token is not None]
        stopped.append(events[-1].stop_reason is StopReason.STOP)
        if stopped[-1]:
            jsonschema.validate(_final_json(generator, tokens), schema)

    check()
    assert any(stopped), "no reply finished: the property was never checked"


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_length_before_the_json_closes_is_reported_as_length(
    generator: TokenGenerator, prompt: list[int]
) -> None:
    spec = ConstraintSpec("json_schema", schema={"type": "object"})
    events = list(generator.stream(prompt_tokens=prompt, max_tokens=5, constraint=spec))
    assert events[-1].stop_reason is StopReason.LENGTH
    assert events[-1].token is not None  # the fifth token, not a stop token


def test_bad_schema_fails_before_prefill(generator: TokenGenerator, prompt: list[int]) -> None:
    before = list(generator.prompt_cache.tokens)
    spec = ConstraintSpec("json_schema", schema={"not": {"type": "string"}})
    with pytest.raises(ConstraintError, match="not"):
        generator.stream(prompt_tokens=prompt, constraint=spec)
    with pytest.raises(ConstraintError, match="not"):
        generator.generate(prompt_tokens=prompt, constraint=spec)
    assert list(generator.prompt_cache.tokens) == before


def test_tokens_after_the_grammar_finished_are_free(
    generator: TokenGenerator, prompt: list[int]
) -> None:
    """With stop tokens that leave out <|return|>, decoding runs past the grammar's end."""
    end = generator.encode("<|return|>")[0]
    bias = favour(generator.tokenizer, CLOSERS, bias=30.0)
    spec = ConstraintSpec("json_schema", schema={"enum": [0]})
    tokens = list(
        generator.generate(
            prompt_tokens=prompt,
            max_tokens=40,
            stop_tokens=(),
            logits_processors=[bias],
            constraint=spec,
        )
    )
    assert end in tokens, generator.decode(tokens)
    assert tokens.index(end) < len(tokens) - 1, "nothing was generated after the grammar ended"


def test_mixed_batch_gives_each_request_its_lone_tokens(
    tiny: LoadedModel,
    prompt: list[int],
    assert_same_tokens: Callable[[LoadedModel, Sequence[int], Sequence[int]], None],
) -> None:
    """Constrained and free requests in one batch, greedy: each gets what it gets alone."""
    from mlx_harmony.harmony_format import Message, render_prompt

    other = render_prompt([Message.user("What time is it?")])
    requests: list[tuple[list[int], ConstraintSpec | None]] = [
        (prompt, ConstraintSpec("json_schema", schema={"type": "object"})),
        (other, None),
        (other, ConstraintSpec("json_object")),
        (prompt, None),
    ]
    with BatchTokenGenerator(tiny, loop_detection="off", max_batch_size=4) as batch:

        def run(i: int, out: list[list[int]]) -> None:
            p, spec = requests[i]
            out[i] = list(batch.generate(prompt_tokens=p, max_tokens=24, constraint=spec))

        alone: list[list[int]] = [[] for _ in requests]
        for i in range(len(requests)):
            run(i, alone)
        together: list[list[int]] = [[] for _ in requests]
        threads = [threading.Thread(target=run, args=(i, together)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert batch.stats.max_batch > 1
    for got, want in zip(together, alone, strict=True):
        assert_same_tokens(tiny, got, want)
    # the constraint changed the constrained row, and only that row
    assert alone[2] != alone[1], tiny.tokenizer.decode(alone[2])
    assert tiny.tokenizer.decode(alone[2]).startswith("<|channel|>")
