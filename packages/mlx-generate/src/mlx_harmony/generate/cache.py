"""KV caches, and a prompt cache that reuses the longest common prefix across calls.

mlx-lm trims a cache back to the common prefix only while no rotating layer has wrapped. gpt-oss
alternates full-attention layers (a `KVCache`, always trimmable) with sliding-window layers (a
128-token `RotatingKVCache`): once a turn has gone 128 tokens past the point the next prompt
shares, the sliding layers no longer hold the positions they would need, and mlx-lm prefills the
whole prompt again (mlx-lm issue 980).

`PromptCache` keeps a checkpoint of every layer that cannot be trimmed (the rotating ones) as it
was at the end of the last prompt. A Harmony chat's next prompt drops the previous analysis, so
the common prefix ends at (or just after) the end of the last prompt: restore the checkpoint,
trim the full-attention layers to the same length, and prefill only the new tokens. MLX arrays
are immutable values, so a checkpoint costs references, not copies; only the Python handles must
be new, because the caches assign into their arrays in place.

A conversation that shares only the instructions with the cached one (another chat of the same
application) diverges long before that checkpoint. For it the loop also stops its prefill at a
few message boundaries the caller names (the end of the system and developer messages) and the
cache keeps the rotating layers' snapshots there (`add_checkpoints`): `reuse` restores the
longest checkpoint at or before the common prefix.

One more token can always be dropped, wrapped or not, when the last write was a single token:
that write evicted the oldest position of the ring, which is exactly the one that falls out of
the window of the token that replaces it. This serves the other common case: the next prompt
repeats the whole completion but ends its last message with <|end|> where the model wrote
<|return|> (openai-harmony keeps every analysis after the first final answer).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import (
    CacheList,
    ConcatenateKVCache,
    KVCache,
    QuantizedKVCache,
    RotatingKVCache,
)

from .kv_quant import SINK_ATTENTION_MODEL_TYPES, install_sinks_attention
from .stats import CacheReuseMode

__all__ = [
    "MAX_BOUNDARY_CHECKPOINTS",
    "CacheReuse",
    "PromptCache",
    "common_prefix_len",
    "make_cache",
    "maybe_quantize_kv_cache",
]

_KV_BITS = (2, 3, 4, 5, 6, 8)
_KV_GROUP_SIZES = (32, 64, 128)
# Caches whose trim is an offset change, valid at any length.
_ALWAYS_TRIMMABLE = (KVCache, QuantizedKVCache, ConcatenateKVCache)


def _has_attention_sinks(model: nn.Module) -> bool:
    layers = getattr(model, "layers", None) or []
    return any(hasattr(getattr(layer, "self_attn", None), "sinks") for layer in layers)


def _model_module_name(model: nn.Module) -> str:
    return type(model).__module__.rsplit(".", 1)[-1]


def _head_dim(model: nn.Module) -> int | None:
    for layer in getattr(model, "layers", None) or []:
        head_dim = getattr(getattr(layer, "self_attn", None), "head_dim", None)
        if isinstance(head_dim, int):
            return head_dim
    head_dim = getattr(getattr(model, "args", None), "head_dim", None)
    return head_dim if isinstance(head_dim, int) else None


def _check_options(
    model: nn.Module, max_kv_size: int | None, kv_bits: int | None, kv_group_size: int
) -> None:
    if max_kv_size is not None and (not isinstance(max_kv_size, int) or max_kv_size <= 4):
        raise ValueError(
            f"max_kv_size must be an integer above 4 (the rotating cache keeps the first 4 "
            f"tokens), got {max_kv_size!r}"
        )
    if kv_bits is None:
        return
    if kv_bits not in _KV_BITS:
        raise ValueError(f"kv_bits must be one of {_KV_BITS} or None, got {kv_bits!r}")
    if kv_group_size not in _KV_GROUP_SIZES:
        raise ValueError(f"kv_group_size must be one of {_KV_GROUP_SIZES}, got {kv_group_size!r}")
    if max_kv_size is not None:
        raise ValueError(
            "kv_bits and max_kv_size cannot be combined: mlx-lm's rotating cache cannot be "
            "quantized; drop one of them"
        )
    head_dim = _head_dim(model)
    if head_dim is not None and head_dim % kv_group_size:
        groups = [g for g in _KV_GROUP_SIZES if head_dim % g == 0]
        fix = f"use kv_group_size {groups[-1]}" if groups else "leave kv_bits unset"
        raise ValueError(
            f"kv_group_size {kv_group_size} does not divide the model's head_dim {head_dim}; {fix}"
        )
    if _has_attention_sinks(model):
        name = _model_module_name(model)
        if name not in SINK_ATTENTION_MODEL_TYPES:
            raise ValueError(
                f"kv_bits is not supported for {name}: its attention uses sinks, and quantized "
                f"attention with sinks exists only for {sorted(SINK_ATTENTION_MODEL_TYPES)}; "
                "leave kv_bits unset"
            )
        install_sinks_attention(name)


def make_cache(
    model: nn.Module,
    *,
    max_kv_size: int | None = None,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    quantized_kv_start: int = 0,
) -> list[Any]:
    """The model's per-layer caches.

    ``max_kv_size`` turns every full-attention layer into a `RotatingKVCache` of that size that
    keeps the first 4 tokens (mlx-lm's choice); layers that already slide keep their window.
    ``kv_bits`` with ``quantized_kv_start=0`` starts the full-attention layers quantized, so a
    reused prefix is stored exactly as a fresh prefill would store it.
    """
    _check_options(model, max_kv_size, kv_bits, kv_group_size)
    # nn.Module's __getattr__ is typed as maybe None; these are the model's own attributes.
    if hasattr(model, "make_cache"):
        caches = list(model.make_cache())  # pyright: ignore[reportOptionalCall]
    else:
        caches = [KVCache() for _ in model.layers]  # pyright: ignore[reportOptionalIterable]
    if max_kv_size is not None:
        return [
            RotatingKVCache(max_size=max_kv_size, keep=4) if type(c) is KVCache else c
            for c in caches
        ]
    if kv_bits is not None and quantized_kv_start <= 0:
        return [
            QuantizedKVCache(group_size=kv_group_size, bits=kv_bits) if type(c) is KVCache else c
            for c in caches
        ]
    return caches


def maybe_quantize_kv_cache(
    caches: list[Any], *, kv_bits: int | None, kv_group_size: int, quantized_kv_start: int
) -> None:
    """Quantize full-attention layers that grew past `quantized_kv_start`, in place (rotating
    layers stay as they are: mlx-lm cannot quantize them, and gpt-oss's 128-token windows are
    small anyway). mlx-lm's `maybe_quantize_kv_cache`, restricted to plain `KVCache` layers."""
    if kv_bits is None:
        return
    for i, c in enumerate(caches):
        if type(c) is KVCache and c.offset >= quantized_kv_start:
            install_sinks_attention()  # idempotent; gpt-oss's attention then takes the cache
            caches[i] = c.to_quantized(group_size=kv_group_size, bits=kv_bits)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the common prefix, comparing blocks at C speed before scanning one block."""
    n = min(len(a), len(b))
    block = 512
    i = 0
    while i < n:
        j = min(i + block, n)
        if a[i:j] != b[i:j]:  # also when equal but of different types (a list, a tuple)
            while i < j and a[i] == b[i]:
                i += 1
            if i < j:
                return i
        i = j
    return n


def _fresh(state: object) -> object:
    """New handles on the same arrays, so in-place assignment in one cache leaves the other."""
    if isinstance(state, mx.array):
        return mx.array(state)
    if isinstance(state, tuple):
        return tuple(_fresh(s) for s in state)
    if isinstance(state, list):
        return [_fresh(s) for s in state]
    return state


def _snapshot(cache: Any) -> Any:
    if isinstance(cache, CacheList):
        return CacheList(*(_snapshot(c) for c in cache.caches))
    snap = copy.copy(cache)
    state = cache.state
    if state is not None and (not isinstance(state, (list, tuple)) or len(state) > 0):
        snap.state = _fresh(state)
    return snap


def _offset(cache: object) -> int | None:
    if isinstance(cache, CacheList):
        offsets = {_offset(c) for c in cache.caches} - {None}
        return offsets.pop() if len(offsets) == 1 else None
    offset = getattr(cache, "offset", None)
    return offset if isinstance(offset, int) else None


def _can_drop(cache: object, n: int, single_tail: bool) -> bool:
    """Whether `cache` can drop its last `n` tokens and still serve the next ones exactly."""
    if isinstance(cache, _ALWAYS_TRIMMABLE):
        return n <= cache.offset
    if isinstance(cache, RotatingKVCache):
        # Before the ring wraps nothing was evicted (mlx-lm's rule). After it, a single-token
        # write evicted only the position the replacing token no longer sees.
        return n <= cache.offset and (cache.offset < cache.max_size or (n == 1 and single_tail))
    return n == 0


@dataclass(frozen=True, slots=True)
class CacheReuse:
    """How many prompt tokens the cache already holds, and how it got there."""

    reused: int
    mode: CacheReuseMode


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    length: int
    layers: dict[int, Any]
    """Snapshots of the layers that cannot be trimmed, by layer index; taken right after the
    prompt's last token, which the loop always feeds alone."""


MAX_BOUNDARY_CHECKPOINTS = 4
"""Message-boundary checkpoints a `PromptCache` keeps (the shortest: where conversations of one
application part); each holds the rotating layers, a window's worth of positions per layer."""


class PromptCache:
    """The per-layer caches of one conversation and the tokens they hold.

    Call `reuse(prompt)` before a generation: it leaves the caches holding the longest prefix
    of `prompt` it can serve and returns its length; prefill the rest. The loop calls
    `checkpoint()` at the end of the prompt (and `add_checkpoints()` with the snapshots it took
    at message boundaries) and `commit()` at the end.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_kv_size: int | None = None,
        kv_bits: int | None = None,
        kv_group_size: int = 64,
        quantized_kv_start: int = 0,
    ) -> None:
        self.model = model
        self.max_kv_size = max_kv_size
        self.kv_bits = kv_bits
        self.kv_group_size = kv_group_size
        self.quantized_kv_start = quantized_kv_start
        self.caches: list[Any] = make_cache(
            model,
            max_kv_size=max_kv_size,
            kv_bits=kv_bits,
            kv_group_size=kv_group_size,
            quantized_kv_start=quantized_kv_start,
        )
        self.tokens: list[int] = []
        self._checkpoint: _Checkpoint | None = None
        self._boundaries: dict[int, _Checkpoint] = {}
        # Whether the caches' last write was a single token (then one more can be dropped).
        self._single_tail = False
        self._snapshot_layers = [
            i for i, c in enumerate(self.caches) if not isinstance(c, _ALWAYS_TRIMMABLE)
        ]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def offset(self) -> int:
        """Tokens in the caches by their own count (the first layer that keeps one)."""
        for c in self.caches:
            offset = _offset(c)
            if offset is not None:
                return offset
        return len(self.tokens)

    @property
    def checkpoint_length(self) -> int | None:
        """Where the sliding-layer checkpoint was taken (the end of the last prompt), if any."""
        return None if self._checkpoint is None else self._checkpoint.length

    @property
    def boundary_checkpoints(self) -> list[int]:
        """Where the message-boundary checkpoints were taken, shortest first."""
        return sorted(self._boundaries)

    @property
    def nbytes(self) -> int:
        return sum(getattr(c, "nbytes", 0) for c in self.caches)

    def reset(self) -> None:
        """Drop everything: new empty caches."""
        self.caches = make_cache(
            self.model,
            max_kv_size=self.max_kv_size,
            kv_bits=self.kv_bits,
            kv_group_size=self.kv_group_size,
            quantized_kv_start=self.quantized_kv_start,
        )
        self.tokens = []
        self._checkpoint = None
        self._boundaries = {}
        self._single_tail = False

    def can_trim(self, n: int) -> bool:
        """Whether every layer can drop its last `n` tokens and serve the next ones exactly:
        mlx-lm's rule (rotating layers only before they wrap), plus one token after a
        single-token write."""
        return n <= len(self.tokens) and all(
            _can_drop(c, n, self._single_tail) for c in self.caches
        )

    def _trim(self, n: int) -> None:
        if n <= 0:
            return
        for c in self.caches:
            c.trim(n)
        del self.tokens[len(self.tokens) - n :]
        self._single_tail = False
        self._forget_checkpoints_past(len(self.tokens))

    def _forget_checkpoints_past(self, n: int) -> None:
        """Drop the checkpoints of tokens the caches no longer hold."""
        if self._checkpoint is not None and self._checkpoint.length > n:
            self._checkpoint = None
        self._boundaries = {k: v for k, v in self._boundaries.items() if k <= n}

    def _restore(self, checkpoint: _Checkpoint) -> None:
        for i, c in enumerate(self.caches):
            if i in checkpoint.layers:
                self.caches[i] = _snapshot(checkpoint.layers[i])
            else:
                c.trim(c.offset - checkpoint.length)
        del self.tokens[checkpoint.length :]
        self._single_tail = True
        self._forget_checkpoints_past(checkpoint.length)

    def reuse(self, prompt: Sequence[int]) -> CacheReuse:
        """Make the caches hold the longest prefix of `prompt` they can; return its length.

        At least the last prompt token is always left to prefill, since its logits give the
        first new token.
        """
        if not self.tokens:
            if self.offset:
                self.reset()
            return CacheReuse(0, CacheReuseMode.FRESH)
        common = common_prefix_len(self.tokens, prompt)
        target = min(common, len(prompt) - 1)
        if target <= 0:
            self.reset()
            return CacheReuse(0, CacheReuseMode.FRESH)
        n_cached = len(self.tokens)
        if target == n_cached:
            return CacheReuse(target, CacheReuseMode.EXTEND)
        if self.can_trim(n_cached - target):
            self._trim(n_cached - target)
            return CacheReuse(target, CacheReuseMode.TRIM)
        # A checkpoint holds self.tokens[:length], which agree with the prompt up to target.
        # Longest first: one past the target that can trim back gives the target itself;
        # else the first at or before it is the longest that serves.
        checkpoints = [*self._boundaries.values()]
        if self._checkpoint is not None:
            checkpoints.append(self._checkpoint)
        for checkpoint in sorted(checkpoints, key=lambda c: c.length, reverse=True):
            if checkpoint.length <= target:
                self._restore(checkpoint)
                return CacheReuse(checkpoint.length, CacheReuseMode.CHECKPOINT)
            back = checkpoint.length - target
            if all(_can_drop(c, back, True) for c in checkpoint.layers.values()):
                self._restore(checkpoint)
                self._trim(back)
                return CacheReuse(target, CacheReuseMode.CHECKPOINT)
        self.reset()
        return CacheReuse(0, CacheReuseMode.RECOMPUTE)

    def restore(
        self,
        tokens: Sequence[int],
        caches: list[Any],
        *,
        single_tail: bool,
        checkpoints: dict[int, dict[int, Any]] | None = None,
    ) -> None:
        """Hold `caches`, which hold exactly `tokens` (a saved prompt cache, say), as if this
        cache had prefilled them: later prompts that extend them, or leave them at the end,
        reuse them; `checkpoints` are message-boundary snapshots among them (as
        `add_checkpoints` takes). The layer types must be the ones this cache makes (same
        `kv_bits`)."""
        if len(caches) != len(self.caches):
            raise ValueError(
                f"the caches have {len(caches)} layers but the model has {len(self.caches)}"
            )
        for i, (mine, theirs) in enumerate(zip(self.caches, caches, strict=True)):
            want, got = type(mine), type(theirs)
            quantized_later = (
                self.kv_bits is not None and want is KVCache and got is QuantizedKVCache
            )
            if got is not want and not quantized_later:
                raise ValueError(
                    f"layer {i} is a {got.__name__} but this cache makes a {want.__name__}; "
                    "use the kv_bits, kv_group_size and max_kv_size the caches were made with"
                )
            offset = _offset(theirs)
            if offset is not None and offset != len(tokens):
                raise ValueError(f"layer {i} holds {offset} tokens, not the {len(tokens)} given")
        self.caches = list(caches)
        self.tokens = list(tokens)
        self._single_tail = single_tail
        self._checkpoint = None
        self._boundaries = {}
        if self.tokens:
            self.checkpoint(len(self.tokens))
        self.add_checkpoints(checkpoints or {})
        self._forget_checkpoints_past(len(self.tokens))

    def checkpoint(self, length: int) -> None:
        """Snapshot the layers that cannot be trimmed; the caches hold `length` tokens now."""
        if not self._snapshot_layers:
            return
        self._checkpoint = _Checkpoint(
            length=length,
            layers={i: _snapshot(self.caches[i]) for i in self._snapshot_layers},
        )

    def add_checkpoints(self, snapshots: dict[int, dict[int, Any]]) -> None:
        """Keep the rotating layers' `snapshots` taken at message boundaries (token offset ->
        layer index -> snapshot, what `BoundaryCheckpoints` collects while the caches held
        this conversation's tokens), the `MAX_BOUNDARY_CHECKPOINTS` shortest of all."""
        for length, layers in snapshots.items():
            if length > 0:
                self._boundaries[length] = _Checkpoint(length=length, layers=dict(layers))
        for length in sorted(self._boundaries)[MAX_BOUNDARY_CHECKPOINTS:]:
            del self._boundaries[length]

    def commit(self, tokens: Sequence[int], *, single_tail: bool) -> None:
        """Record the tokens the caches hold after a call: `tokens` (prompt and generated
        tokens), cut to the caches' own count. `single_tail` says the last write was one token
        (the prompt's last token or a generated one). A cache left inconsistent by an error is
        reset."""
        offsets = {o for c in self.caches if (o := _offset(c)) is not None}
        if len(offsets) > 1:
            self.reset()
            return
        n = offsets.pop() if offsets else len(tokens)
        if n > len(tokens):
            self.reset()
            return
        self.tokens = list(tokens[:n])
        self._single_tail = single_tail
        self._forget_checkpoints_past(n)
