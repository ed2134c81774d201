"""load_generator: the server's generator gets every set-up value of the prompt config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlx_harmony.controller import PromptConfig
from mlx_harmony.server.models import ModelEntry, load_generator


class _Recorder:
    def __init__(self, model: Any, options: Any = None, **kwargs: Any) -> None:
        self.model, self.options, self.kwargs = model, options, kwargs


class _Batch(_Recorder):
    pass


class _Single(_Recorder):
    pass


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlx.core")
    import mlx_harmony.generate as generate

    monkeypatch.setattr(generate, "BatchTokenGenerator", _Batch)
    monkeypatch.setattr(generate, "TokenGenerator", _Single)


@pytest.mark.usefixtures("fakes")
def test_the_batch_generator_gets_mlock_reseeding_and_cache_clearing(tmp_path: Path) -> None:
    config = PromptConfig(
        mlock=True,
        reseed_each_turn=True,
        clear_cache=True,
        clear_cache_interval=2,
        clear_cache_generation=True,
        log_memory_stats=True,
        loop_detection="off",
    )
    generator = load_generator(ModelEntry("m", str(tmp_path), config), max_concurrency=4)
    assert isinstance(generator, _Batch)
    options = generator.options
    assert options == config.generator_options()
    assert (options.mlock, options.reseed_each_turn) == (True, True)
    assert (options.clear_cache_interval, options.clear_cache_tokens) == (2, 256)
    assert options.log_memory_stats
    assert generator.kwargs["max_batch_size"] == 4


@pytest.mark.usefixtures("fakes")
def test_a_rotating_cache_gets_the_one_at_a_time_generator_with_the_same_options(
    tmp_path: Path,
) -> None:
    config = PromptConfig(max_kv_size=256, mlock=True, reseed_each_turn=True)
    generator = load_generator(ModelEntry("m", str(tmp_path), config), max_concurrency=4)
    assert isinstance(generator, _Single)
    assert generator.options == config.generator_options()
    assert generator.options.max_kv_size == 256


@pytest.mark.usefixtures("fakes")
@pytest.mark.parametrize(
    ("written", "expected"), [({}, True), ({"reseed_each_turn": False}, False)]
)
def test_a_seeded_request_repeats_itself_unless_the_config_chains_seeds(
    tmp_path: Path, written: dict[str, bool], expected: bool
) -> None:
    config = PromptConfig(**written)
    generator = load_generator(ModelEntry("m", str(tmp_path), config), max_concurrency=4)
    assert generator.options.reseed_each_turn is expected


@pytest.mark.usefixtures("fakes")
def test_prompt_concurrency_is_the_batch_engines_prefill_batch_size(tmp_path: Path) -> None:
    entry = ModelEntry("m", str(tmp_path), PromptConfig())
    generator = load_generator(entry, max_concurrency=4, prompt_concurrency=2)
    assert isinstance(generator, _Batch)
    assert generator.kwargs["prefill_batch_size"] == 2
    default = load_generator(entry, max_concurrency=4)  # not given: the engine's default, 8
    assert default.kwargs["prefill_batch_size"] == 8
