"""Saved prompt caches: a file continued gives the tokens recomputing gives; a file for another
model or tokenizer is refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from mlx_lm.models.cache import load_prompt_cache

from mlx_harmony.generate import (
    CacheReuseMode,
    GeneratorOptions,
    LoadedModel,
    TokenGenerator,
    generate,
    load_model,
)
from mlx_harmony.generate.prompt_cache_file import (
    PromptCacheFileError,
    load_prompt_cache_file,
    read_prompt_cache,
    write_prompt_cache,
)

PROMPT = list(range(1000, 1400))  # past the 128-token window: the rotating layers wrapped


@pytest.fixture(scope="module")
def cache_file(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("prompt-cache")
    return write_prompt_cache(folder / "prompt.safetensors", tiny, PROMPT, prefill_step_size=128)


@pytest.mark.parametrize("extra", [[], [7, 8, 9] * 20])
def test_a_loaded_cache_continues_exactly_as_recomputing(
    tiny: LoadedModel, cache_file: Path, extra: list[int], assert_same_tokens: Callable[..., None]
) -> None:
    prompt = PROMPT + extra
    cache = read_prompt_cache(cache_file, tiny)
    assert cache.tokens == PROMPT
    got = generate(
        tiny.model, tiny.tokenizer, prompt, max_tokens=48, stop_tokens=[], prompt_cache=cache
    )
    assert got.stats.cache_reuse in (CacheReuseMode.EXTEND, CacheReuseMode.TRIM)
    assert got.stats.reused_prompt_tokens == min(len(PROMPT), len(prompt) - 1)
    want = generate(
        tiny.model, tiny.tokenizer, prompt, max_tokens=48, stop_tokens=[], prefill_step_size=128
    )
    assert_same_tokens(tiny, got.tokens, want.tokens)


def test_the_file_is_mlx_lms_format_with_our_metadata(tiny: LoadedModel, cache_file: Path) -> None:
    layers, metadata = load_prompt_cache(str(cache_file), return_metadata=True)
    assert [type(c).__name__ for c in layers] == ["RotatingKVCache", "KVCache"]
    assert json.loads(metadata["tokens"]) == PROMPT
    assert metadata["mlx_harmony_prompt_cache"] == "1"
    assert metadata["single_tail"] == "1"
    saved = load_prompt_cache_file(cache_file, loaded=tiny)
    assert saved.tokens == PROMPT
    assert [c.offset for c in saved.caches] == [len(PROMPT), len(PROMPT)]


def test_boundary_checkpoints_round_trip(tiny: LoadedModel, tmp_path: Path) -> None:
    path = write_prompt_cache(tmp_path / "c.safetensors", tiny, PROMPT, checkpoints=[150, 300])
    saved = load_prompt_cache_file(path, loaded=tiny)
    assert sorted(saved.checkpoints) == [150, 300]
    assert {i: c.offset for i, c in saved.checkpoints[150].items()} == {0: 150}
    # The boundary token went alone, so the snapshot holds the window, not window + chunk.
    assert saved.checkpoints[300][0].keys.shape[2] == 128
    assert len(saved.caches) == 2


def test_a_prompt_that_shares_only_a_boundary_reuses_the_files_checkpoint(
    tiny: LoadedModel, tmp_path: Path
) -> None:
    # What mlx-harmony-cache-prompt promises: a conversation that leaves the saved tokens after
    # the instructions (a boundary) still reuses them, with one generator as with the server's.
    path = write_prompt_cache(tmp_path / "c.safetensors", tiny, PROMPT, checkpoints=[150, 300])
    prompt = [*PROMPT[:310], *range(5000, 5020)]
    with_file = TokenGenerator(tiny, GeneratorOptions(prompt_cache_file=path))
    got = list(with_file.generate(prompt_tokens=prompt, max_tokens=8, stop_tokens=()))
    stats = with_file.last_stats
    assert stats is not None
    assert stats.cache_reuse is CacheReuseMode.CHECKPOINT
    assert stats.reused_prompt_tokens == 300
    fresh = TokenGenerator(tiny, prompt_cache=False)
    assert got == list(fresh.generate(prompt_tokens=prompt, max_tokens=8, stop_tokens=()))


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_file_for_another_model_is_refused(
    cache_file: Path, tmp_path_factory: pytest.TempPathFactory, tokenizer_cache: Path
) -> None:
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    model, config = build_random_model("tiny", seed=5)  # same config, other weights
    other = load_model(
        save_model(model, config, tmp_path_factory.mktemp("other"), cache_dir=tokenizer_cache)
    )
    with pytest.raises(PromptCacheFileError, match="was made for another model"):
        read_prompt_cache(cache_file, other)


def test_a_file_for_another_tokenizer_is_refused(
    tiny: LoadedModel, cache_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlx_harmony.generate import prompt_cache_file as module

    vocab = dict(tiny.tokenizer.get_vocab())
    vocab["<|a-new-token|>"] = len(vocab)
    fake = LoadedModel(tiny.model, _Tokenizer(vocab), tiny.config, tiny.model_type, tiny.path)
    with pytest.raises(PromptCacheFileError, match="was made with another tokenizer"):
        module.load_prompt_cache_file(cache_file, loaded=fake)


class _Tokenizer:
    def __init__(self, vocab: dict[str, int]) -> None:
        self._vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return self._vocab


def test_bad_files_and_options_are_refused(
    tiny: LoadedModel, cache_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(PromptCacheFileError, match="does not exist"):
        read_prompt_cache(tmp_path / "missing.safetensors", tiny)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(PromptCacheFileError, match="is not a readable mlx-lm prompt cache"):
        read_prompt_cache(junk, tiny)
    with pytest.raises(PromptCacheFileError, match=r"must end in \.safetensors"):
        write_prompt_cache(tmp_path / "c.bin", tiny, PROMPT[:10])
    with pytest.raises(PromptCacheFileError, match="was made with kv_bits=None"):
        read_prompt_cache(cache_file, tiny, kv_bits=8, kv_group_size=32)
