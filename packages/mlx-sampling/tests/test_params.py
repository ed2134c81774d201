"""SamplingParams: defaults, validation messages, JSON, overrides, and the factories it feeds."""

from __future__ import annotations

import mlx.core as mx
import pytest
from pydantic import ValidationError

from mlx_harmony.sampling import (
    SamplingParams,
    greedy_sampler,
    make_logits_processors,
    make_sampler,
)


def _logprobs(shape: tuple[int, ...] = (2, 200), seed: int = 0) -> mx.array:
    logits = mx.random.normal(shape, key=mx.random.key(seed)) * 2
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def test_defaults_are_gpt_oss_recommendation_with_everything_else_off() -> None:
    params = SamplingParams()
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, 0, 0.0)
    assert params.xtc_probability == 0.0
    assert params.repetition_penalty == 1.0
    assert (params.presence_penalty, params.frequency_penalty) == (0.0, 0.0)
    assert params.logit_bias is None
    assert params.seed is None
    assert params.make_logits_processors() == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("temperature", -1.0, "temperature must be a finite number >= 0, got -1.0"),
        ("top_p", 0.0, "top_p must be in (0, 1], got 0.0"),
        ("top_p", 1.01, "top_p must be in (0, 1], got 1.01"),
        ("top_k", -1, "top_k must be an integer >= 0, got -1"),
        ("min_p", 1.5, "min_p must be in [0, 1], got 1.5"),
        ("min_tokens_to_keep", 0, "min_tokens_to_keep must be an integer >= 1, got 0"),
        ("xtc_probability", -0.1, "xtc_probability must be in [0, 1], got -0.1"),
        ("xtc_threshold", 0.75, "xtc_threshold must be in [0, 0.5], got 0.75"),
        ("xtc_special_tokens", (1, -2), "xtc_special_tokens must hold token ids"),
        ("repetition_penalty", 0.0, "repetition_penalty must be a finite number > 0, got 0.0"),
        ("repetition_context_size", 0, "repetition_context_size must be an integer >= 1, got 0"),
        ("presence_penalty", 2.5, "presence_penalty must be in [-2, 2], got 2.5"),
        ("presence_context_size", 0, "presence_context_size must be an integer >= 1, got 0"),
        ("frequency_penalty", -3.0, "frequency_penalty must be in [-2, 2], got -3.0"),
        ("frequency_context_size", -5, "frequency_context_size must be an integer >= 1, got -5"),
        ("logit_bias", {-4: 1.0}, "logit_bias keys must be token ids (integers >= 0), got -4"),
        ("seed", -1, "seed must be an integer in [0, 18446744073709551615], got -1"),
        ("seed", 2**64, "seed must be an integer in [0, 18446744073709551615]"),
    ],
)
def test_out_of_range_values_name_the_field_and_the_range(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError) as error:
        SamplingParams(**{field: value})
    (detail,) = error.value.errors()
    assert detail["loc"][0] == field
    assert message in detail["msg"]
    assert field in str(error.value)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="temp\n  Extra inputs are not permitted"):
        SamplingParams(temp=0.5)


def test_params_are_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        SamplingParams().temperature = 0.5  # type: ignore[misc]


def test_json_keys_of_logit_bias_become_token_ids() -> None:
    params = SamplingParams.model_validate_json('{"logit_bias": {"12": -100, "7": 1.5}}')
    assert params.logit_bias == {12: -100.0, 7: 1.5}
    assert SamplingParams.model_validate_json(params.model_dump_json()) == params


def test_json_schema_carries_the_bounds() -> None:
    properties = SamplingParams.model_json_schema()["properties"]
    assert properties["top_p"]["exclusiveMinimum"] == 0
    assert properties["top_p"]["maximum"] == 1
    assert properties["presence_penalty"]["minimum"] == -2
    assert properties["xtc_threshold"]["maximum"] == 0.5


def test_updated_applies_changes_and_validates_again() -> None:
    params = SamplingParams(top_k=40, seed=3)
    changed = params.updated(temperature=0.2, seed=None)
    assert (changed.temperature, changed.top_k, changed.seed) == (0.2, 40, None)
    assert params.temperature == 1.0
    assert changed.model_fields_set == {"top_k", "seed", "temperature"}
    with pytest.raises(ValidationError, match="top_p must be in"):
        params.updated(top_p=2.0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        params.updated(temp=0.2)


def test_make_sampler_uses_every_field_and_the_seed() -> None:
    options = {
        "temperature": 0.9,
        "top_p": 0.95,
        "min_p": 0.02,
        "top_k": 20,
        "xtc_probability": 0.5,
        "xtc_threshold": 0.05,
        "xtc_special_tokens": (3,),
    }
    params = SamplingParams(**options, seed=9)
    direct = make_sampler(**options, seed=9)
    logprobs = _logprobs()
    from_params = params.make_sampler()
    assert [from_params(logprobs).tolist() for _ in range(8)] == [
        direct(logprobs).tolist() for _ in range(8)
    ]


def test_make_sampler_and_processors_pass_every_option_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlx_harmony.sampling.params as params_module

    calls: dict[str, dict] = {}
    monkeypatch.setattr(params_module, "make_sampler", lambda **kw: calls.setdefault("s", kw))
    monkeypatch.setattr(
        params_module, "make_logits_processors", lambda **kw: calls.setdefault("p", kw)
    )
    params = SamplingParams(
        temperature=0.5,
        top_p=0.8,
        top_k=7,
        min_p=0.03,
        min_tokens_to_keep=4,
        xtc_probability=0.2,
        xtc_threshold=0.3,
        xtc_special_tokens=(1, 2),
        repetition_penalty=1.1,
        repetition_context_size=11,
        presence_penalty=0.4,
        presence_context_size=12,
        frequency_penalty=0.6,
        frequency_context_size=13,
        logit_bias={5: 1.0},
        seed=17,
    )
    params.make_sampler()
    params.make_logits_processors()
    fields = params.model_dump()
    assert calls["s"] == {name: fields[name] for name in calls["s"] if name != "key"} | {
        "key": None
    }
    assert set(calls["s"]) | set(calls["p"]) == set(fields) | {"key"}
    assert calls["p"] == {name: fields[name] for name in calls["p"]}


def test_make_sampler_key_replaces_the_seed() -> None:
    logprobs = _logprobs(seed=1)
    with_key = SamplingParams(seed=1).make_sampler(key=mx.random.key(2))
    with_seed = SamplingParams(seed=2).make_sampler()
    assert [with_key(logprobs).tolist() for _ in range(8)] == [
        with_seed(logprobs).tolist() for _ in range(8)
    ]


def test_temperature_zero_makes_the_greedy_sampler() -> None:
    assert SamplingParams(temperature=0).make_sampler() is greedy_sampler


def test_make_logits_processors_turns_on_what_is_set() -> None:
    params = SamplingParams(
        logit_bias={3: 1.0},
        repetition_penalty=1.2,
        repetition_context_size=5,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        frequency_context_size=7,
    )
    processors = params.make_logits_processors()
    direct = make_logits_processors(
        logit_bias={3: 1.0},
        repetition_penalty=1.2,
        repetition_context_size=5,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        frequency_context_size=7,
    )
    assert len(processors) == len(direct) == 4
    tokens, logits = mx.array([1, 3, 3, 4, 9, 1]), _logprobs((1, 16), 2)
    ours, theirs = logits, logits
    for mine, reference in zip(processors, direct, strict=True):
        ours, theirs = mine(tokens, ours), reference(tokens, theirs)
    assert mx.array_equal(ours, theirs).item()
    assert not mx.array_equal(ours, logits).item()


def test_none_repetition_penalty_is_off() -> None:
    assert SamplingParams(repetition_penalty=None).make_logits_processors() == []
