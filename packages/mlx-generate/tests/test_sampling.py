"""Sampling through mlx_harmony.sampling: seeds, reseeding, processors with a reused cache."""

from __future__ import annotations

import random

import mlx.core as mx
import pytest

from mlx_harmony.generate import CacheReuseMode, LoadedModel, TokenGenerator
from mlx_harmony.sampling import SamplingParams

PROMPT = list(range(2000, 2030))


def _sample(
    generator: TokenGenerator, sampling: SamplingParams, prompt: list[int] = PROMPT
) -> list[int]:
    return list(
        generator.generate(prompt_tokens=prompt, sampling=sampling, max_tokens=16, stop_tokens=())
    )


def _generator(tiny: LoadedModel, **options: object) -> TokenGenerator:
    return TokenGenerator(tiny, loop_detection="off", **options)  # type: ignore[arg-type]


def test_the_same_seed_gives_the_same_tokens(tiny: LoadedModel) -> None:
    sampling = SamplingParams(temperature=1.0, seed=7)
    assert _sample(_generator(tiny), sampling) == _sample(_generator(tiny), sampling)


def test_different_seeds_give_different_tokens(tiny: LoadedModel) -> None:
    a = _sample(_generator(tiny), SamplingParams(temperature=1.0, seed=1))
    b = _sample(_generator(tiny), SamplingParams(temperature=1.0, seed=2))
    assert a != b


def test_a_seeded_first_call_draws_like_mlx_lm(tiny: LoadedModel) -> None:
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    tokenizer = tiny.tokenizer
    eos = tokenizer.eos_token_ids
    tokenizer.eos_token_ids = set()
    try:
        mx.random.seed(11)
        want = [
            r.token
            for r in stream_generate(
                tiny.model, tokenizer, PROMPT, max_tokens=16, sampler=make_sampler(temp=1.0)
            )
        ]
    finally:
        tokenizer.eos_token_ids = eos
    assert _sample(_generator(tiny), SamplingParams(temperature=1.0, seed=11)) == want


def test_reseed_each_turn_repeats_the_answer(tiny: LoadedModel) -> None:
    sampling = SamplingParams(temperature=1.0, seed=5)
    reseeding = _generator(tiny, reseed_each_turn=True)
    assert _sample(reseeding, sampling) == _sample(reseeding, sampling)


def test_without_reseeding_turns_differ_but_the_session_repeats(tiny: LoadedModel) -> None:
    sampling = SamplingParams(temperature=1.0, seed=5)
    first = _generator(tiny)
    turns = [_sample(first, sampling), _sample(first, sampling)]
    assert turns[0] != turns[1]
    second = _generator(tiny)
    assert [_sample(second, sampling), _sample(second, sampling)] == turns


def test_temperature_zero_is_greedy(tiny: LoadedModel) -> None:
    greedy = _sample(_generator(tiny), SamplingParams(temperature=0.0, seed=3))
    assert greedy == list(
        _generator(tiny).generate(prompt_tokens=PROMPT, max_tokens=16, stop_tokens=())
    )


def test_sampling_processors_are_applied(tiny: LoadedModel) -> None:
    sampling = SamplingParams(temperature=1.0, seed=0, logit_bias={4242: 1000.0})
    assert _sample(_generator(tiny), sampling) == [4242] * 16


@pytest.mark.parametrize("penalty", ["repetition_penalty", "frequency_penalty"])
def test_penalties_see_the_whole_history_when_the_cache_is_reused(
    tiny: LoadedModel, penalty: str, assert_same_tokens
) -> None:
    value = 1.8 if penalty == "repetition_penalty" else 1.5
    sampling = SamplingParams(temperature=0.0, **{penalty: value})  # type: ignore[arg-type]
    rng = random.Random(3)
    p1 = [rng.randrange(1000, 199_000) for _ in range(60)]
    chat = _generator(tiny)
    g1 = _sample(chat, sampling, p1)
    p2 = [*p1, *g1, *g1[:4]]
    reused = _sample(chat, sampling, p2)
    assert chat.last_stats is not None
    assert chat.last_stats.cache_reuse is CacheReuseMode.EXTEND
    fresh = _sample(_generator(tiny, prompt_cache=False), sampling, p2)
    assert_same_tokens(tiny, reused, fresh)
