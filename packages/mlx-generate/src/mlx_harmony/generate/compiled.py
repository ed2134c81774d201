"""A compiled, static-shape decode step for gpt-oss.

mlx-lm's caches change shape every step (a full-attention `KVCache` grows, a `RotatingKVCache`
grows until it wraps), so a decode step cannot be compiled whole and each step rebuilds its
graph in Python: hundreds of small kernels whose launch and scheduling cost, not the weights'
bandwidth, bounds decode speed.

Here every shape is fixed. Each layer's keys and values live in a preallocated buffer: a
full-attention layer in a length bucket (1024, 2048, 4096, ... positions; the next one is taken
when the generation reaches the end of the current one), a sliding-window layer in a ring the
size of its window, laid out exactly as mlx-lm's ring. The step writes the new token's key and
value at an array index (`mx.slice_update`; the buffers are the graph's inputs and outputs and
the caller keeps no other reference, so MLX updates them in place), applies RoPE at an array
offset and attends with a mask made from the position and gpt-oss's sinks: a ring layer over its
whole ring, a full-attention layer over the buffer's first `span` slots, the written positions
rounded up to a multiple of a sixteenth of the bucket (at least `min_bucket`). Attending over the
whole bucket would cost up to twice the positions in use at long contexts (a 32k context sits
in the 64k bucket); a span holds fewer than max(min_bucket, positions / 8) slots more than the
positions in use. Token -> next token (embedding, layers, norm, lm_head and, for greedy decoding,
the argmax) then compiles once per bucket and span with `mx.compile` and runs as one graph.

Prefill stays mlx-lm's (chunked, into its caches); `StaticDecoder` takes the caches over after
the prompt's last token and writes them back (`write_back`) when decoding ends, so the prompt
cache and its sliding-window checkpoints see exactly what the eager loop leaves.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, cast

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, RotatingKVCache

if TYPE_CHECKING:
    from mlx_lm.models.gpt_oss import AttentionBlock
    from mlx_lm.models.gpt_oss import Model as GptOss

__all__ = [
    "DEFAULT_MIN_BUCKET",
    "StaticDecoder",
    "StepOutput",
    "compiled_decode_unsupported_reason",
]

DEFAULT_MIN_BUCKET = 1024
"""The first length bucket of the full-attention layers; each next bucket doubles it."""

SPANS_PER_BUCKET = 16
"""A full-attention layer attends over a multiple of bucket / SPANS_PER_BUCKET slots (and of
`min_bucket`): more spans waste less attention at long contexts and compile more graphs."""

StepOutput = Literal["token", "logprobs", "logits"]
"""What the compiled graph ends with: the argmax token (greedy), normalized log-probabilities
(a sampler or `logprobs=True`: the sampler then runs outside the graph, on its own PRNG key),
or raw logits (logits processors run outside the graph, on the token history)."""

logger = logging.getLogger("mlx_harmony.generate")

_Arrays = list[mx.array]
_StepFn = Callable[[mx.array, mx.array, mx.array, _Arrays, _Arrays], tuple[Any, ...]]

# Compiled steps per model (by identity), output kind and span; a model's entry goes with the
# model. mx.compile keeps one trace per input shape, i.e. per bucket.
_COMPILED: dict[int, dict[tuple[StepOutput, int], _StepFn]] = {}


def compiled_decode_unsupported_reason(model: nn.Module, cache: Sequence[Any]) -> str | None:
    """Why the compiled step cannot decode with `model` and `cache` (None when it can).

    It covers mlx-lm's gpt_oss model with the caches `model.make_cache()` builds: plain
    `KVCache` on full-attention layers and a `RotatingKVCache` of the window size (keep 0) on
    sliding ones. Rotating full layers (`max_kv_size`), quantized KV caches (`kv_bits`), other
    model types and sharded models decode eagerly.
    """
    from mlx_lm.models.gpt_oss import Model as GptOss

    if not isinstance(model, GptOss):
        return f"model type {type(model).__module__.rsplit('.', 1)[-1]} is not gpt_oss"
    inner = model.model
    if len(cache) != len(inner.layers):
        return f"{len(cache)} caches for {len(inner.layers)} layers"
    for i, (layer, c, kind) in enumerate(zip(inner.layers, cache, inner.layer_types, strict=True)):
        if layer.mlp.sharding_group is not None:
            _notice_sharded(model)
            return "the model is sharded"
        if kind == "full_attention":
            if type(c) is not KVCache:
                return f"layer {i} (full attention) has a {type(c).__name__}, not a KVCache"
        elif type(c) is not RotatingKVCache or c.keep != 0 or c.max_size != inner.window_size:
            return (
                f"layer {i} (sliding window) needs a RotatingKVCache of size "
                f"{inner.window_size} keeping 0 tokens, got {type(c).__name__}"
            )
        if c.keys is not None and c.keys.shape[0] != 1:
            return f"batch size {c.keys.shape[0]} (the compiled step decodes one sequence)"
    return None


_NOTICED: set[int] = set()
"""The models (by identity, as `_COMPILED`) already told about; a model's entry goes with it."""


def _notice_sharded(model: nn.Module) -> None:
    """Say once per model that a sharded gpt-oss decodes eagerly: the lockstep engine of a
    sharded model is the batch engine, so no one drives this step on every rank alike."""
    if id(model) not in _NOTICED:
        _NOTICED.add(id(model))
        weakref.finalize(model, _NOTICED.discard, id(model))
        logger.warning(
            "the compiled decode step does not run on a sharded (tensor-parallel) model; "
            "decoding with the eager step"
        )


def _bucket_for(length: int, min_bucket: int) -> int:
    """The smallest bucket (min_bucket * 2**k) holding `length` positions."""
    size = min_bucket
    while size < length:
        size *= 2
    return size


def _span_for(length: int, bucket: int, min_bucket: int) -> int:
    """The slots a full-attention layer attends over when `length` positions are written:
    `length` rounded up to a multiple of max(bucket / SPANS_PER_BUCKET, min_bucket)."""
    grain = max(bucket // SPANS_PER_BUCKET, min_bucket)
    return min(bucket, -(-length // grain) * grain)


def _attention(
    attn: AttentionBlock,
    x: mx.array,
    pos: mx.array,
    write: mx.array,
    keys: mx.array,
    values: mx.array,
    mask: mx.array,
) -> tuple[mx.array, mx.array, mx.array]:
    """gpt-oss's AttentionBlock for one token over a static buffer: the key and value go to
    slot `write`, the query attends to every slot of the buffer's first `mask.shape[-1]` that
    `mask` lets through."""
    batch, length, _ = x.shape
    dim = attn.head_dim
    q = attn.q_proj(x).reshape(batch, length, -1, dim).swapaxes(1, 2)
    k = attn.k_proj(x).reshape(batch, length, -1, dim).swapaxes(1, 2)
    v = attn.v_proj(x).reshape(batch, length, -1, dim).swapaxes(1, 2)
    # The stub says an int offset; RoPE (mx.fast.rope) takes an array one too.
    q = attn.rope(q, offset=pos)  # pyright: ignore[reportArgumentType]
    k = attn.rope(k, offset=pos)  # pyright: ignore[reportArgumentType]
    keys = mx.slice_update(keys, k, write, axes=(2,))
    values = mx.slice_update(values, v, write, axes=(2,))
    span = mask.shape[-1]
    seen_keys = keys if span == keys.shape[2] else keys[:, :, :span]
    seen_values = values if span == values.shape[2] else values[:, :, :span]
    out = mx.fast.scaled_dot_product_attention(
        q, seen_keys, seen_values, scale=attn.sm_scale, mask=mask, sinks=attn.sinks
    )
    return attn.o_proj(out.swapaxes(1, 2).reshape(batch, length, -1)), keys, values


def _make_step(model: GptOss, output: StepOutput, span: int) -> _StepFn:
    """The whole decode step as a pure function of (token, position, ring slot, buffers), the
    full-attention layers attending over their buffers' first `span` slots."""
    inner = model.model
    full = [kind == "full_attention" for kind in inner.layer_types]

    def step(
        token: mx.array, pos: mx.array, slot: mx.array, keys: _Arrays, values: _Arrays
    ) -> tuple[Any, ...]:
        x = inner.embed_tokens(token[None])
        masks: dict[int, mx.array] = {}
        new_keys: _Arrays = []
        new_values: _Arrays = []
        for layer, is_full, k, v in zip(inner.layers, full, keys, values, strict=True):
            size = min(span, k.shape[2]) if is_full else k.shape[2]
            if size not in masks:
                # A slot is visible once written: positions 0..pos of a span, and of a ring
                # before it wraps (after, every slot holds a position of the window).
                masks[size] = (mx.arange(size) <= pos)[None, None, None, :]
            h, k, v = _attention(
                layer.self_attn,
                layer.input_layernorm(x),
                pos,
                pos if is_full else slot,
                k,
                v,
                masks[size],
            )
            x = x + h
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            new_keys.append(k)
            new_values.append(v)
        logits = model.lm_head(inner.norm(x))[:, -1, :]
        if output == "token":
            out = mx.argmax(logits, axis=-1)
        elif output == "logprobs":
            out = logits - mx.logsumexp(logits, keepdims=True)
        else:
            out = logits
        return out, new_keys, new_values

    return step


def _compiled_step(model: GptOss, output: StepOutput, span: int) -> _StepFn:
    key = id(model)
    steps = _COMPILED.get(key)
    if steps is None:
        steps = _COMPILED[key] = {}
        weakref.finalize(model, _COMPILED.pop, key, None)
    fn = steps.get((output, span))
    if fn is None:
        fn = steps[output, span] = mx.compile(_make_step(model, output, span))
    return fn


class StaticDecoder:
    """Decodes one sequence with the compiled step, continuing mlx-lm caches.

    Built after the prompt's last token went through the model (the caches then hold every
    prompt position); `step(token)` feeds a token and returns the step's output (see
    `StepOutput`); `write_back()` hands the positions back to the caches, in mlx-lm's layout.
    """

    def __init__(
        self,
        model: nn.Module,
        cache: list[Any],
        *,
        output: StepOutput = "token",
        min_bucket: int = DEFAULT_MIN_BUCKET,
    ) -> None:
        reason = compiled_decode_unsupported_reason(model, cache)
        if reason is not None:
            raise ValueError(f"the compiled decode step does not apply: {reason}")
        if min_bucket < 1:
            raise ValueError(f"min_bucket must be positive, got {min_bucket}")
        offsets = {c.offset for c in cache}
        if len(offsets) != 1 or any(c.keys is None for c in cache):
            raise ValueError("the caches must hold the same, non-empty prompt in every layer")
        gpt_oss = cast("GptOss", model)  # the check above found a gpt_oss model
        self._model = gpt_oss
        self._cache = cache
        self._output: StepOutput = output
        self._min_bucket = min_bucket
        self.offset = offsets.pop()
        self._full = [type(c) is KVCache for c in cache]
        window = gpt_oss.model.window_size
        ring = next(c for c, f in zip(cache, self._full, strict=True) if not f)
        # The ring's next write slot, as mlx-lm's `_idx` would give it (keep is 0).
        self._slot = ring._idx % window if self.offset >= window else self.offset
        bucket = _bucket_for(self.offset + 1, min_bucket)
        self._keys = [self._take(c, bucket if f else window, "keys") for c, f in self._zip()]
        self._values = [self._take(c, bucket if f else window, "values") for c, f in self._zip()]
        self.bucket = bucket
        self._use_span()

    def _use_span(self) -> None:
        """Take the compiled step whose span holds the position the next step writes."""
        self.span = _span_for(self.offset + 1, self.bucket, self._min_bucket)
        self._fn = _compiled_step(self._model, self._output, self.span)

    def _zip(self) -> Iterator[tuple[Any, bool]]:
        return zip(self._cache, self._full, strict=True)

    def _take(self, c: Any, size: int, name: str) -> mx.array:
        """A cache's positions in a buffer of `size` slots, zero past them (zeros, not garbage:
        a masked slot's value still meets a zero weight)."""
        data = getattr(c, name)
        if data.shape[2] == size:
            # A ring, or a buffer this class wrote back: used as it is (slots past the offset
            # hold finite stale values, which the mask gives zero weight).
            return data
        if type(c) is not KVCache and data.shape[2] > size:
            raise ValueError(
                f"a cache holds {data.shape[2]} slots, more than the {size} of its buffer; "
                "feed the prompt's last token alone before handing the caches over"
            )
        held = min(c.offset, data.shape[2]) if type(c) is KVCache else data.shape[2]
        data = data[..., :held, :]
        pad = mx.zeros((*data.shape[:2], size - held, data.shape[3]), data.dtype)
        return mx.concatenate([data, pad], axis=2)

    def _grow(self) -> None:
        bucket = self.bucket * 2
        for i, f in enumerate(self._full):
            if f:
                for buffers in (self._keys, self._values):
                    b = buffers[i]
                    pad = mx.zeros((*b.shape[:2], bucket - b.shape[2], b.shape[3]), b.dtype)
                    buffers[i] = mx.concatenate([b, pad], axis=2)
        self.bucket = bucket

    def step(self, token: mx.array) -> mx.array:
        """Feed `token` (shape (1,)) at the next position; return the step's output (lazy)."""
        if self.offset >= self.span:
            if self.offset >= self.bucket:
                self._grow()
            self._use_span()
        out, self._keys, self._values = self._fn(
            token,
            mx.array(self.offset, dtype=mx.int32),
            mx.array(self._slot, dtype=mx.int32),
            self._keys,
            self._values,
        )
        self.offset += 1
        self._slot = (self._slot + 1) % self._model.model.window_size
        return out

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in (*self._keys, *self._values))

    def write_back(self) -> None:
        """Put the decoded positions into the mlx-lm caches, laid out as mlx-lm's own
        single-token updates would have left them."""
        window = self._model.model.window_size
        for c, f, k, v in zip(self._cache, self._full, self._keys, self._values, strict=True):
            if f:
                c.keys, c.values, c.offset = k, v, self.offset
            else:
                c.keys, c.values, c.offset = k, v, self.offset
                # mlx-lm's ring index runs to the window size before it rotates back to 0.
                c._idx = self._slot if self._slot or self.offset < window else window
