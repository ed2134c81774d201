"""Attention with sinks over a quantized KV cache, so gpt-oss can run with ``kv_bits``.

gpt-oss adds a learned per-head "sink" logit to every softmax: a column that takes probability
mass and contributes no value. mlx-lm's fused attention (`mx.fast.scaled_dot_product_attention`)
takes the sinks, but its quantized path (`quantized_scaled_dot_product_attention` in
`mlx_lm.models.base`) does not, and `scaled_dot_product_attention` raises for a quantized cache
with sinks. `quantized_sdpa_with_sinks` is that quantized path with the sink column appended to
the scores before the softmax and dropped after it.

How gpt-oss gets it: `mlx_lm.models.gpt_oss.AttentionBlock.__call__` looks up
`scaled_dot_product_attention` in its module's globals on every call.
`install_sinks_attention()` replaces that one global with `sdpa_with_quantized_sinks`, which
sends a `QuantizedKVCache` with sinks to `quantized_sdpa_with_sinks` and every other call to
mlx-lm's function unchanged. So the patch changes nothing for unquantized caches (the
sliding-window layers' `RotatingKVCache` and unquantized runs take mlx-lm's fused kernel as
before) and only turns mlx-lm's "not supported" error into an answer; it is idempotent and
process-wide, and `make_cache` / `maybe_quantize_kv_cache` install it when they hand a gpt-oss
model a quantized cache.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models import base as _base

__all__ = [
    "SINK_ATTENTION_MODEL_TYPES",
    "QuantizedKVCacheError",
    "install_sinks_attention",
    "quantized_sdpa_with_sinks",
    "sdpa_with_quantized_sinks",
]

SINK_ATTENTION_MODEL_TYPES = frozenset({"gpt_oss"})
"""mlx-lm model modules with attention sinks whose quantized-cache attention we provide."""

_mlx_lm_sdpa = _base.scaled_dot_product_attention


class QuantizedKVCacheError(RuntimeError):
    """MLX could not attend over the quantized KV cache on this device (a missing kernel)."""

    def __init__(self, error: BaseException, *, bits: int, group_size: int) -> None:
        version = getattr(mx, "__version__", "?")
        super().__init__(
            f"kv_bits={bits} (kv_group_size={group_size}) failed on this MLX build "
            f"(mlx {version}, {mx.default_device()}): {error}. Some MLX backends lack "
            "quantized attention kernels for some shapes (MLX 0.32's CUDA backend for a prefill "
            "chunk against a quantized cache); leave kv_bits unset (--kv-bits), or run on Metal "
            "or the CPU, or with a newer MLX"
        )


def quantized_sdpa_with_sinks(
    queries: mx.array,
    q_keys: tuple[mx.array, mx.array, mx.array],
    q_values: tuple[mx.array, mx.array, mx.array],
    *,
    scale: float,
    mask: mx.array | str | None,
    sinks: mx.array | None,
    group_size: int = 64,
    bits: int = 8,
) -> mx.array:
    """mlx-lm's quantized attention with one sink logit per query head in the softmax.

    `queries` is (B, n_heads, L, D); `q_keys` / `q_values` are `mx.quantize` triples of
    (B, n_kv_heads, S, ...); `sinks` is (n_heads,). Equal, up to quantization, to
    `mx.fast.scaled_dot_product_attention(..., sinks=sinks)` on the dequantized keys and values.
    """
    batch, n_q_heads, q_len, head_dim = queries.shape
    n_kv_heads = q_keys[0].shape[-3]
    n_repeats = n_q_heads // n_kv_heads
    queries = queries * scale
    if n_repeats > 1:
        queries = mx.reshape(queries, (batch, n_kv_heads, n_repeats, q_len, head_dim))
        q_keys = tree_map(lambda x: mx.expand_dims(x, axis=-3), q_keys)
        q_values = tree_map(lambda x: mx.expand_dims(x, axis=-3), q_values)
    scores = mx.quantized_matmul(queries, *q_keys, transpose=True, group_size=group_size, bits=bits)
    if mask is not None:
        if isinstance(mask, str):
            rows, cols = scores.shape[-2:]
            mask = mx.arange(cols - rows, cols)[:, None] >= mx.arange(cols)[None]
        if n_repeats > 1 and mask.ndim > 3:
            mask = mx.expand_dims(mask, -3)
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    if sinks is not None:
        shape = (n_kv_heads, n_repeats, 1, 1) if n_repeats > 1 else (n_q_heads, 1, 1)
        sink = mx.broadcast_to(
            mx.reshape(sinks.astype(scores.dtype), shape), (*scores.shape[:-1], 1)
        )
        scores = mx.concatenate([scores, sink], axis=-1)
        scores = mx.softmax(scores, axis=-1, precise=True)[..., :-1]
    else:
        scores = mx.softmax(scores, axis=-1, precise=True)
    out = mx.quantized_matmul(scores, *q_values, transpose=False, group_size=group_size, bits=bits)
    if n_repeats > 1:
        out = mx.reshape(out, (batch, n_q_heads, q_len, head_dim))
    return out


def sdpa_with_quantized_sinks(
    queries: mx.array,
    keys: Any,
    values: Any,
    cache: Any,
    scale: float,
    mask: mx.array | str | None,
    sinks: mx.array | None = None,
) -> mx.array:
    """`mlx_lm.models.base.scaled_dot_product_attention`, plus sinks over a quantized cache."""
    if sinks is not None and hasattr(cache, "bits"):
        return quantized_sdpa_with_sinks(
            queries,
            keys,
            values,
            scale=scale,
            mask=mask,
            sinks=sinks,
            group_size=cache.group_size,
            bits=cache.bits,
        )
    # mlx-lm annotates `mask` as an array or None, yet its models pass "causal" too (which
    # mx.fast.scaled_dot_product_attention takes).
    return _mlx_lm_sdpa(
        queries,
        keys,
        values,
        cache,
        scale,
        mask,  # pyright: ignore[reportArgumentType]
        sinks=sinks,
    )


def _model_module(model_type: str) -> ModuleType:
    return importlib.import_module(f"mlx_lm.models.{model_type}")


def install_sinks_attention(model_type: str = "gpt_oss") -> None:
    """Let `model_type`'s attention run over a `QuantizedKVCache` (idempotent; see the module
    docstring for why patching the module global is safe)."""
    if model_type not in SINK_ATTENTION_MODEL_TYPES:
        raise ValueError(
            f"no quantized attention with sinks for model type {model_type!r}; "
            f"supported: {sorted(SINK_ATTENTION_MODEL_TYPES)}"
        )
    module = _model_module(model_type)
    current = getattr(module, "scaled_dot_product_attention", None)
    if current is sdpa_with_quantized_sinks:
        return
    if current is not _mlx_lm_sdpa:
        raise RuntimeError(
            f"mlx_lm.models.{model_type}.scaled_dot_product_attention is not mlx-lm's function; "
            "something else patched it, so quantized attention with sinks cannot be installed"
        )
    # The module global checked above; a ModuleType has no declared attributes.
    module.scaled_dot_product_attention = sdpa_with_quantized_sinks  # pyright: ignore[reportAttributeAccessIssue]
