"""KV quantization for gpt-oss: attention with sinks over a quantized cache."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import mlx.core as mx
import pytest
from mlx_lm.models import base as mlx_lm_base
from mlx_lm.models.cache import KVCache, QuantizedKVCache, RotatingKVCache

from mlx_harmony.generate import LoadedModel, PromptCache, generate, load_model, make_cache
from mlx_harmony.generate.kv_quant import (
    QuantizedKVCacheError,
    install_sinks_attention,
    quantized_sdpa_with_sinks,
    sdpa_with_quantized_sinks,
)


@pytest.fixture(scope="module")
def gpt_oss64(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache: Path) -> LoadedModel:
    """The tiny random gpt-oss with head_dim 64 (quantization groups are 32 to 128 wide) and
    non-zero sinks, so the sink column matters."""
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    model, config = build_random_model("tiny", seed=0, head_dim=64)
    folder = save_model(
        model, config, tmp_path_factory.mktemp("gpt-oss-64"), cache_dir=tokenizer_cache
    )
    loaded = load_model(folder)
    mx.random.seed(3)
    for layer in loaded.model.layers:
        layer.self_attn.sinks = mx.random.normal(layer.self_attn.sinks.shape)
    mx.eval(loaded.model.parameters())
    return loaded


def _qkv(
    heads: int, kv_heads: int, q_len: int, k_len: int, d: int = 64
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    mx.random.seed(heads * 100 + kv_heads * 10 + q_len)
    q = mx.random.normal((1, heads, q_len, d))
    k = mx.random.normal((1, kv_heads, k_len, d))
    v = mx.random.normal((1, kv_heads, k_len, d))
    sinks = mx.random.normal((heads,)) * 2
    return q, k, v, sinks


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (4, 4)])
@pytest.mark.parametrize(
    ("q_len", "mask"), [(1, None), (7, "causal"), (7, "bool"), (7, "additive")]
)
@pytest.mark.parametrize(("bits", "group_size"), [(8, 64), (4, 32)])
def test_quantized_attention_with_sinks_equals_the_float_reference(
    heads: int, kv_heads: int, q_len: int, mask: str | None, bits: int, group_size: int
) -> None:
    q, k, v, sinks = _qkv(heads, kv_heads, q_len, 40)
    m: mx.array | str | None = mask
    if mask in ("bool", "additive"):
        causal = mx.arange(40 - q_len, 40)[:, None] >= mx.arange(40)[None]
        m = causal if mask == "bool" else mx.where(causal, 0.0, -1e9)
    qk = mx.quantize(k, group_size=group_size, bits=bits)
    qv = mx.quantize(v, group_size=group_size, bits=bits)
    got = quantized_sdpa_with_sinks(
        q, qk, qv, scale=64**-0.5, mask=m, sinks=sinks, group_size=group_size, bits=bits
    )
    dk = mx.dequantize(*qk, group_size=group_size, bits=bits)
    dv = mx.dequantize(*qv, group_size=group_size, bits=bits)
    # Same keys and values: only the arithmetic differs.
    same_inputs = mx.fast.scaled_dot_product_attention(
        q, dk, dv, scale=64**-0.5, mask=m, sinks=sinks
    )
    assert mx.abs(got - same_inputs).max().item() < 1e-5
    # Against the unquantized inputs: the quantization error only.
    reference = mx.fast.scaled_dot_product_attention(q, k, v, scale=64**-0.5, mask=m, sinks=sinks)
    assert mx.abs(got - reference).max().item() < (0.05 if bits == 8 else 0.5)
    # The sinks are applied: without them the answer is a different one.
    no_sinks = mx.fast.scaled_dot_product_attention(q, dk, dv, scale=64**-0.5, mask=m)
    assert mx.abs(got - no_sinks).max().item() > 1e-2


def test_without_sinks_it_is_mlx_lms_quantized_attention() -> None:
    q, k, v, _ = _qkv(4, 2, 5, 33)
    qk, qv = mx.quantize(k, bits=8), mx.quantize(v, bits=8)
    got = quantized_sdpa_with_sinks(q, qk, qv, scale=0.125, mask="causal", sinks=None)
    want = mlx_lm_base.quantized_scaled_dot_product_attention(q, qk, qv, 0.125, "causal")
    assert mx.abs(got - want).max().item() < 1e-6


def test_the_patch_leaves_unquantized_caches_to_mlx_lm() -> None:
    import mlx_lm.models.gpt_oss as gpt_oss

    install_sinks_attention()
    install_sinks_attention()  # idempotent
    assert gpt_oss.scaled_dot_product_attention is sdpa_with_quantized_sinks
    q, k, v, sinks = _qkv(4, 2, 3, 20)
    got = sdpa_with_quantized_sinks(q, k, v, KVCache(), 0.125, "causal", sinks=sinks)
    want = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask="causal", sinks=sinks)
    assert mx.array_equal(got, want)
    with pytest.raises(ValueError, match="no quantized attention with sinks for model type"):
        install_sinks_attention("llama")


def _agreement(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
    return first, sum(x == y for x, y in zip(a, b, strict=True))


@pytest.mark.slow  # builds a second model (seconds)
def test_gpt_oss_runs_with_kv_bits_and_agrees_with_unquantized(
    gpt_oss64: LoadedModel, assert_same_tokens: Callable[..., None]
) -> None:
    model, tok = gpt_oss64.model, gpt_oss64.tokenizer
    prompt = list(range(1000, 1300))  # past the 128-token window
    plain = generate(model, tok, prompt, max_tokens=64, stop_tokens=[])
    q8 = generate(model, tok, prompt, max_tokens=64, stop_tokens=[], kv_bits=8)
    first, same = _agreement(plain.tokens, q8.tokens)
    print(f"8-bit KV: first divergence at {first}/64, {same}/64 tokens equal")
    assert same >= 56, (
        f"8-bit KV agreed on only {same}/64 greedy tokens (first diverged at {first})"
    )
    # 8-bit KV is not exact in general; on this model it is for 64 tokens.
    assert_same_tokens(gpt_oss64, q8.tokens[:first], plain.tokens[:first])


@pytest.mark.slow  # builds a second model (seconds)
def test_only_full_attention_layers_are_quantized_and_memory_shrinks(
    gpt_oss64: LoadedModel,
) -> None:
    model = gpt_oss64.model
    prompt = list(range(2000, 2600))
    plain, quant = PromptCache(model), PromptCache(model, kv_bits=8)
    types = [type(c) for c in quant.caches]
    assert types == [RotatingKVCache, QuantizedKVCache]  # sliding, full
    for cache in (plain, quant):
        # The eager step for both: the compiled one keeps its own power-of-two buffers.
        generate(
            model,
            gpt_oss64.tokenizer,
            prompt,
            max_tokens=4,
            stop_tokens=[],
            prompt_cache=cache,
            compiled=False,
        )
    full_plain, full_quant = plain.caches[1], quant.caches[1]
    assert full_quant.offset == full_plain.offset == len(prompt) + 3
    assert full_quant.keys[0].shape[2] == full_plain.keys.shape[2]  # same buffer length
    print(f"full-attention layer: {full_plain.nbytes} -> {full_quant.nbytes} bytes")
    # float32: 4 bytes a value; 8 bits: 1 byte plus a float32 scale and bias per 64 values.
    assert full_quant.nbytes == pytest.approx(full_plain.nbytes * (1 + 8 / 64) / 4)
    assert quant.nbytes < plain.nbytes


@pytest.mark.slow  # builds a second model (seconds)
def test_quantized_kv_start_converts_the_full_layers_on_the_way(gpt_oss64: LoadedModel) -> None:
    cache = PromptCache(gpt_oss64.model, kv_bits=8, quantized_kv_start=200)
    assert [type(c) for c in cache.caches] == [RotatingKVCache, KVCache]
    generate(
        gpt_oss64.model,
        gpt_oss64.tokenizer,
        list(range(3000, 3300)),
        max_tokens=8,
        stop_tokens=[],
        prompt_cache=cache,
        prefill_step_size=100,
    )
    assert [type(c) for c in cache.caches] == [RotatingKVCache, QuantizedKVCache]


@pytest.mark.slow  # builds a second model (seconds)
def test_prompt_cache_reuse_with_kv_bits_is_exact_past_the_window(
    gpt_oss64: LoadedModel, assert_same_tokens: Callable[..., None]
) -> None:
    model, tok = gpt_oss64.model, gpt_oss64.tokenizer
    cache = PromptCache(model, kv_bits=8)
    first = list(range(500, 800))
    out = generate(model, tok, first, max_tokens=150, stop_tokens=[], prompt_cache=cache)
    second = first + out.tokens[:10] + list(range(900, 920))  # diverges after the window moved
    reused = generate(model, tok, second, max_tokens=32, stop_tokens=[], prompt_cache=cache)
    assert reused.stats.reused_prompt_tokens > 0
    fresh = generate(model, tok, second, max_tokens=32, stop_tokens=[], kv_bits=8)
    assert_same_tokens(gpt_oss64, reused.tokens, fresh.tokens)


def test_a_group_size_that_does_not_divide_head_dim_is_refused(tiny: LoadedModel) -> None:
    with pytest.raises(ValueError, match="does not divide the model's head_dim 16"):
        make_cache(tiny.model, kv_bits=8)


def test_a_backend_without_the_quantized_kernel_gets_an_error_naming_kv_bits(
    llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What MLX 0.32's CUDA backend raises for a prefill chunk against a quantized cache.
    def missing_kernel(*args: object, **kwargs: object) -> mx.array:
        raise RuntimeError(
            "[quantized_matmul] No implementation for problem shape: 511x8191x64x64, "
            "transpose: true, activation: bfloat16, bits: 8, group size: 32"
        )

    monkeypatch.setattr(mx, "quantized_matmul", missing_kernel)
    prompt = list(range(1000, 1040))
    with pytest.raises(QuantizedKVCacheError) as caught:
        generate(llama.model, llama.tokenizer, prompt, max_tokens=4, kv_bits=8, kv_group_size=32)
    message = str(caught.value)
    assert "kv_bits=8 (kv_group_size=32)" in message
    assert "No implementation for problem shape" in message
    assert "leave kv_bits unset" in message
    # Without kv_bits nothing changes: the same model generates.
    assert len(generate(llama.model, llama.tokenizer, prompt, max_tokens=4).tokens) >= 1
