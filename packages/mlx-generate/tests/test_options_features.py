"""`GeneratorOptions`' model and cache set-up (KV quantization, adapters, chat templates, saved
prompt caches) reach both generators, and the batch engine keeps message-boundary checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models.cache import QuantizedKVCache

from mlx_harmony.generate import (
    BatchTokenGenerator,
    GeneratorOptions,
    LoadedModel,
    TokenGenerator,
    load_model,
)
from mlx_harmony.generate.prompt_cache_file import PromptCacheFileError, write_prompt_cache

START, END, MESSAGE = 200006, 200007, 200008
PROMPT = list(range(1000, 1300))  # past the 128-token window


def _message(role: int, body: list[int]) -> list[int]:
    return [START, role, MESSAGE, *body, END]


SHARED = _message(17, [1000 + i % 700 for i in range(300)]) + _message(18, list(range(3000, 3040)))


def _tokens(generator: TokenGenerator | BatchTokenGenerator, prompt: list[int], n: int = 24):
    tokens = list(generator.generate(prompt_tokens=prompt, max_tokens=n, stop_tokens=[]))
    return tokens, generator.last_stats if isinstance(generator, TokenGenerator) else None


def _batch_stream(generator: BatchTokenGenerator, prompt: list[int], n: int = 16):
    events = list(generator.stream(prompt_tokens=prompt, max_tokens=n, stop_tokens=[]))
    final = events[-1]
    assert final.stats is not None
    return [e.token for e in events if e.token is not None], final.stats


def test_options_check_their_values() -> None:
    with pytest.raises(ValueError, match="kv_bits must be 4, 8"):
        GeneratorOptions(kv_bits=3)
    with pytest.raises(ValueError, match="kv_group_size must be 32, 64 or 128"):
        GeneratorOptions(kv_bits=8, kv_group_size=48)
    with pytest.raises(ValueError, match="quantized_kv_start must be >= 0"):
        GeneratorOptions(quantized_kv_start=-1)
    with pytest.raises(ValueError, match="kv_bits and max_kv_size cannot be combined"):
        GeneratorOptions(kv_bits=8, max_kv_size=256)
    assert "kv_bits" in GeneratorOptions.LOAD_TIME


@pytest.fixture(scope="module")
def gpt_oss64(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache: Path) -> LoadedModel:
    """The tiny random gpt-oss with head_dim 64 (quantization groups are 32 to 128 wide)."""
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    model, config = build_random_model("tiny", seed=0, head_dim=64)
    folder = tmp_path_factory.mktemp("gpt-oss-64")
    return load_model(save_model(model, config, folder, cache_dir=tokenizer_cache))


@pytest.mark.slow
def test_kv_bits_quantizes_the_token_generators_cache(
    gpt_oss64: LoadedModel, assert_same_tokens: Callable[..., None]
) -> None:
    tiny = gpt_oss64
    quantized = TokenGenerator(tiny, GeneratorOptions(kv_bits=8))
    got, stats = _tokens(quantized, PROMPT, 32)
    kinds = [type(c) for c in quantized.prompt_cache.caches]
    assert QuantizedKVCache in kinds  # the full-attention layer
    assert stats is not None
    assert stats.completion_tokens == 32
    want, _ = _tokens(TokenGenerator(tiny), PROMPT, 32)
    assert_same_tokens(tiny, got, want)  # 8 bits keeps the tiny model's greedy tokens
    with pytest.raises(ValueError, match="kv_group_size"):
        quantized.retune(GeneratorOptions(kv_bits=8, kv_group_size=32))


def test_the_batch_generator_refuses_kv_bits(tiny: LoadedModel) -> None:
    with pytest.raises(ValueError, match="batch engine has no quantized KV cache"):
        BatchTokenGenerator(tiny, GeneratorOptions(kv_bits=8))


@pytest.mark.slow
def test_adapter_path_reaches_both_generators(
    tiny_model_dir: Path, tiny: LoadedModel, tmp_path: Path, assert_same_tokens: Callable[..., None]
) -> None:
    from mlx_lm.tuner.utils import linear_to_lora_layers

    lora = {"rank": 4, "scale": 20.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}
    model = load_model(tiny_model_dir).model
    model.freeze()
    linear_to_lora_layers(model, 2, lora)
    folder = tmp_path / "zero-adapter"
    folder.mkdir()
    mx.save_safetensors(
        str(folder / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    (folder / "adapter_config.json").write_text(
        json.dumps({"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": lora})
    )
    options = GeneratorOptions(adapter_path=folder)
    single = TokenGenerator(tiny_model_dir, options)
    assert single.loaded.adapter_path == folder
    got, _ = _tokens(single, PROMPT)
    want, _ = _tokens(TokenGenerator(tiny), PROMPT)
    assert_same_tokens(tiny, got, want)  # a zero adapter (B = 0) changes nothing
    with BatchTokenGenerator(tiny_model_dir, options, max_batch_size=2) as batch:
        assert batch.loaded.adapter_path == folder
        batch_tokens, _ = _batch_stream(batch, PROMPT, 24)
    assert_same_tokens(tiny, batch_tokens, want)
    with pytest.raises(ValueError, match="adapter_path"):
        TokenGenerator(tiny, options)  # a LoadedModel without that adapter


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_chat_template_replaces_the_tokenizers(llama_model_dir: Path, tiny: LoadedModel) -> None:
    template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"
    generator = TokenGenerator(llama_model_dir, GeneratorOptions(chat_template=template))
    tokens = generator.apply_chat_template([{"role": "user", "content": "hi"}])
    assert generator.decode(tokens) == "<<hi>>"
    with pytest.raises(ValueError, match="gpt-oss prompts are rendered by Harmony"):
        TokenGenerator(tiny, GeneratorOptions(chat_template=template))


@pytest.mark.slow
def test_prompt_cache_file_starts_both_generators(
    tiny_model_dir: Path, tiny: LoadedModel, tmp_path: Path, assert_same_tokens: Callable[..., None]
) -> None:
    path = write_prompt_cache(tmp_path / "p.safetensors", tiny, PROMPT)
    prompt = [*PROMPT, 5, 6, 7]
    single = TokenGenerator(tiny, GeneratorOptions(prompt_cache_file=path))
    got, stats = _tokens(single, prompt)
    assert stats is not None
    assert stats.reused_prompt_tokens == len(PROMPT)
    want, _ = _tokens(TokenGenerator(tiny), prompt)
    assert_same_tokens(tiny, got, want)
    with BatchTokenGenerator(tiny_model_dir, GeneratorOptions(prompt_cache_file=path)) as batch:
        batch_tokens, batch_stats = _batch_stream(batch, prompt, 24)
    assert batch_stats.reused_prompt_tokens == len(PROMPT)
    assert_same_tokens(tiny, batch_tokens, want)
    with pytest.raises(PromptCacheFileError, match="kv_bits"):
        TokenGenerator(tiny, GeneratorOptions(prompt_cache_file=path, kv_bits=8))


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_prompt_cache_file_for_another_model_is_refused(
    tiny: LoadedModel, llama: LoadedModel, tmp_path: Path
) -> None:
    path = write_prompt_cache(tmp_path / "llama.safetensors", llama, [5, 6, 7, 8])
    with pytest.raises(PromptCacheFileError, match="another model"):
        TokenGenerator(tiny, GeneratorOptions(prompt_cache_file=path))
    with pytest.raises(PromptCacheFileError, match="another model"):
        BatchTokenGenerator(tiny, GeneratorOptions(prompt_cache_file=path))


@pytest.mark.slow
def test_the_batch_engine_reuses_a_shared_system_and_developer_prefix(
    tiny_model_dir: Path, tiny: LoadedModel, assert_same_tokens: Callable[..., None]
) -> None:
    first = [*SHARED, *_message(19, [11, 12, 13]), START, 20]
    second = [*SHARED, *_message(19, [21, 22, 23, 24]), START, 20]
    with BatchTokenGenerator(tiny_model_dir, max_batch_size=2) as batch:
        _batch_stream(batch, first)
        got, stats = _batch_stream(batch, second)
        assert batch.prompt_cache.checkpoint_nbytes > 0
    assert stats.reused_prompt_tokens == len(SHARED)  # only the user message is prefilled
    with BatchTokenGenerator(tiny_model_dir, max_batch_size=2) as fresh:
        want, fresh_stats = _batch_stream(fresh, second)
    assert fresh_stats.reused_prompt_tokens == 0
    assert_same_tokens(tiny, got, want)


@pytest.mark.slow
def test_prompt_cache_dir_saves_at_close_and_loads_at_start(
    tiny_model_dir: Path, tiny: LoadedModel, tmp_path: Path
) -> None:
    folder = tmp_path / "caches"
    options = GeneratorOptions(prompt_cache_dir=folder)
    prompt = [*PROMPT, 1, 2, 3]
    with BatchTokenGenerator(tiny_model_dir, options) as batch:
        _batch_stream(batch, prompt)
    assert len(list(folder.glob("*.safetensors"))) == 1
    with BatchTokenGenerator(tiny_model_dir, options) as again:
        assert len(again.prompt_cache) == 1
        _, stats = _batch_stream(again, [*prompt, 4])
    assert stats.reused_prompt_tokens >= len(prompt) - 1
    with pytest.raises(ValueError, match="prompt_cache_dir"):
        TokenGenerator(tiny, options)
