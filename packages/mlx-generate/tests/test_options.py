"""GeneratorOptions: both generators honour every option the same way."""

from __future__ import annotations

import logging
import warnings

import mlx.core as mx
import pytest

import mlx_harmony.generate.generator as generator_module
from mlx_harmony.generate import (
    BatchTokenGenerator,
    GeneratorOptions,
    LoadedModel,
    LoopDetectionMode,
    TokenGenerator,
)
from mlx_harmony.sampling import SamplingParams

PROMPT = list(range(2000, 2030))
SEEDED = SamplingParams(temperature=1.0, seed=5)


def _sample(generator: TokenGenerator | BatchTokenGenerator, max_tokens: int = 12) -> list[int]:
    return list(
        generator.generate(
            prompt_tokens=PROMPT, sampling=SEEDED, max_tokens=max_tokens, stop_tokens=()
        )
    )


@pytest.fixture
def cleared(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the buffer-cache clears the options ask for."""
    calls: list[int] = []
    real = generator_module._clear_buffer_cache

    def counting() -> None:
        calls.append(1)
        real()

    monkeypatch.setattr(generator_module, "_clear_buffer_cache", counting)
    return calls


def test_bad_options_are_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="clear_cache_interval must be >= 0"):
        GeneratorOptions(clear_cache_interval=-1)
    with pytest.raises(ValueError, match="clear_cache_tokens must be >= 0"):
        GeneratorOptions(clear_cache_tokens=-2)
    with pytest.raises(ValueError, match="max_kv_size must be >= 1"):
        GeneratorOptions(max_kv_size=0)
    with pytest.raises(ValueError, match="loop detection mode must be one of"):
        GeneratorOptions(loop_detection="sometimes")


def test_options_and_their_shorthand_keywords_do_not_mix(tiny: LoadedModel) -> None:
    with pytest.raises(TypeError, match="pass mlock inside GeneratorOptions"):
        TokenGenerator(tiny, GeneratorOptions(), mlock=True)
    with pytest.raises(TypeError, match="pass loop_detection inside GeneratorOptions"):
        BatchTokenGenerator(tiny, GeneratorOptions(), loop_detection="off")


def test_the_batch_generator_refuses_a_rotating_cache(tiny: LoadedModel) -> None:
    with pytest.raises(ValueError, match="max_kv_size=64: a rotating KV cache does not batch"):
        BatchTokenGenerator(tiny, GeneratorOptions(max_kv_size=64))


def test_both_generators_take_the_options(tiny: LoadedModel) -> None:
    options = GeneratorOptions(loop_detection="full", reseed_each_turn=True)
    single = TokenGenerator(tiny, options)
    assert (single.options, single.loop_detector.mode) == (options, LoopDetectionMode.FULL)
    with BatchTokenGenerator(tiny, options, max_batch_size=2) as batch:
        assert (batch.options, batch.loop_detector.mode) == (options, LoopDetectionMode.FULL)
        assert batch.engine is not None
        assert batch.engine.reseed_each_turn


@pytest.mark.parametrize("kind", ["single", "batch"])
def test_reseed_each_turn_in_both_generators(tiny: LoadedModel, kind: str) -> None:
    def make(reseed: bool) -> TokenGenerator | BatchTokenGenerator:
        options = GeneratorOptions(loop_detection="off", reseed_each_turn=reseed)
        if kind == "single":
            return TokenGenerator(tiny, options, prompt_cache=False)
        return BatchTokenGenerator(tiny, options, max_batch_size=2)

    chained, again, reseeding = make(False), make(False), make(True)
    try:
        turns = [_sample(chained), _sample(chained)]
        assert turns[0] != turns[1]  # one key chain: each turn draws new keys
        assert [_sample(again), _sample(again)] == turns  # ... reproducible as a whole
        assert _sample(reseeding) == _sample(reseeding) == turns[0]  # every turn from the seed
    finally:
        for generator in (chained, again, reseeding):
            generator.close()


@pytest.mark.parametrize("kind", ["single", "batch"])
def test_clear_cache_every_nth_generation(tiny: LoadedModel, kind: str, cleared: list[int]) -> None:
    options = GeneratorOptions(loop_detection="off", clear_cache_interval=2)
    generator = (
        TokenGenerator(tiny, options)
        if kind == "single"
        else BatchTokenGenerator(tiny, options, max_batch_size=2)
    )
    try:
        counts = []
        for _ in range(4):
            _sample(generator, max_tokens=3)
            counts.append(len(cleared))
    finally:
        generator.close()
    if kind == "single":
        assert counts == [0, 1, 1, 2]
    else:  # the engine thread clears after it hands out a request's last token
        assert len(cleared) == 2


def test_clear_cache_every_n_tokens(tiny: LoadedModel, cleared: list[int]) -> None:
    generator = TokenGenerator(tiny, GeneratorOptions(loop_detection="off", clear_cache_tokens=4))
    _sample(generator, max_tokens=10)
    assert len(cleared) == 2  # after tokens 4 and 8


def test_the_clear_cache_shorthand_clears_after_every_call(
    tiny: LoadedModel, cleared: list[int]
) -> None:
    generator = TokenGenerator(tiny, loop_detection="off", clear_cache=True)
    assert generator.clear_cache
    _sample(generator, max_tokens=2)
    _sample(generator, max_tokens=2)
    assert len(cleared) == 2


@pytest.mark.parametrize("kind", ["single", "batch"])
def test_log_memory_stats_logs_after_each_generation(
    tiny: LoadedModel, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    options = GeneratorOptions(loop_detection="off", log_memory_stats=True)
    generator = (
        TokenGenerator(tiny, options)
        if kind == "single"
        else BatchTokenGenerator(tiny, options, max_batch_size=2)
    )
    with caplog.at_level(logging.INFO, logger="mlx_harmony.generate"):
        try:
            _sample(generator, max_tokens=2)
            _sample(generator, max_tokens=2)
        finally:
            generator.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "mlx_harmony.generate"]
    assert [line.split(":")[0] for line in lines] == [
        "memory after generation 1",
        "memory after generation 2",
    ]
    assert all("active" in line and "cache" in line and "peak" in line for line in lines)


@pytest.mark.parametrize("kind", ["single", "batch"])
def test_mlock_reaches_both_generators(tiny: LoadedModel, kind: str) -> None:
    if mx.metal.is_available():
        pytest.skip("Metal wires memory; this checks the warning elsewhere")
    generator_module._warned_mlock = False
    options = GeneratorOptions(loop_detection="off", mlock=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generator = (
            TokenGenerator(tiny, options)
            if kind == "single"
            else BatchTokenGenerator(tiny, options, max_batch_size=2)
        )
        generator.close()
    assert any("mlock has no effect" in str(w.message) for w in caught)


def test_retune_changes_per_call_options_but_not_load_time_ones(tiny: LoadedModel) -> None:
    generator = TokenGenerator(tiny, GeneratorOptions(loop_detection="off"))
    generator.retune(GeneratorOptions(loop_detection="full", reseed_each_turn=True))
    assert generator.reseed_each_turn
    assert generator.loop_detector.mode is LoopDetectionMode.FULL
    with pytest.raises(ValueError, match="mlock is set when the model loads"):
        generator.retune(GeneratorOptions(mlock=True))
