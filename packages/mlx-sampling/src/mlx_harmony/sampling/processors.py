"""Logits processors: (tokens so far, logits) -> logits, as in mlx-lm.

Each processor takes the token history, shape (T,) (mlx-lm's ``generate_step`` passes this;
it applies to every row) or (B, T) (one history per row), and logits of shape (B, V) or (V,).
Unlike mlx-lm's, they never modify the logits array they are given. Only the last
``context_size`` tokens count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import mlx.core as mx

from mlx_harmony.sampling import _checks

__all__ = [
    "LogitsProcessor",
    "make_frequency_penalty",
    "make_logit_bias",
    "make_logits_processors",
    "make_presence_penalty",
    "make_repetition_penalty",
]

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]
"""Token history (T,) or (B, T) and logits (B, V) in, adjusted logits out."""


def _recent(tokens: mx.array | list[int] | tuple[int, ...], context_size: int) -> mx.array | None:
    """The last `context_size` tokens as an array, or None when there are none."""
    if not isinstance(tokens, mx.array):
        tokens = mx.array(tokens, dtype=mx.int32)
    if tokens.size == 0:
        return None
    return tokens[..., -context_size:]


def _indices_for(recent: mx.array, logits: mx.array) -> mx.array:
    """Broadcast a (T,) or (B, T) history against (B, V) or (V,) logits for *_along_axis."""
    return mx.broadcast_to(recent, (*logits.shape[:-1], recent.shape[-1]))


def make_logit_bias(logit_bias: Mapping[int, float]) -> LogitsProcessor:
    """Add `logit_bias[token]` to that token's logit on every step (-inf bans it)."""
    bias = _checks.check_logit_bias(logit_bias)
    if not bias:
        raise ValueError("logit_bias is empty; pass at least one {token_id: bias} or no processor")
    indices = mx.array(list(bias.keys()))
    values = mx.array(list(bias.values()))
    largest = max(bias)

    def logit_bias_processor(tokens: mx.array, logits: mx.array) -> mx.array:
        # MLX does not bounds-check scatters: an id past the vocabulary would write past the
        # array, so refuse it (one int comparison per call).
        if largest >= logits.shape[-1]:
            raise ValueError(
                f"logit_bias has token id {largest} but the vocabulary has {logits.shape[-1]}"
                " tokens; drop the ids >= the vocabulary size"
            )
        return logits.at[..., indices].add(values)

    return logit_bias_processor


def make_repetition_penalty(penalty: float, *, context_size: int = 20) -> LogitsProcessor:
    """Scale down the logits of recent tokens (divide positive ones by `penalty`, multiply
    negative ones), as in CTRL (https://arxiv.org/abs/1909.05858). Repeats count once."""
    _checks.check_repetition_penalty(penalty)
    _checks.check_context_size("repetition_context_size", context_size)

    def repetition_penalty_processor(tokens: mx.array, logits: mx.array) -> mx.array:
        recent = _recent(tokens, context_size)
        if recent is None:
            return logits
        indices = _indices_for(recent, logits)
        selected = mx.take_along_axis(logits, indices, axis=-1)
        selected = mx.where(selected < 0, selected * penalty, selected / penalty)
        return mx.put_along_axis(logits, indices, selected, axis=-1)

    return repetition_penalty_processor


def make_presence_penalty(penalty: float, *, context_size: int = 20) -> LogitsProcessor:
    """Subtract `penalty` once from the logit of every token seen in the recent context
    (OpenAI's presence_penalty)."""
    _checks.check_additive_penalty("presence_penalty", penalty)
    _checks.check_context_size("presence_context_size", context_size)

    def presence_penalty_processor(tokens: mx.array, logits: mx.array) -> mx.array:
        recent = _recent(tokens, context_size)
        if recent is None:
            return logits
        indices = _indices_for(recent, logits)
        selected = mx.take_along_axis(logits, indices, axis=-1) - penalty
        return mx.put_along_axis(logits, indices, selected, axis=-1)

    return presence_penalty_processor


def make_frequency_penalty(penalty: float, *, context_size: int = 20) -> LogitsProcessor:
    """Subtract `penalty` from a token's logit once per occurrence in the recent context
    (OpenAI's frequency_penalty)."""
    _checks.check_additive_penalty("frequency_penalty", penalty)
    _checks.check_context_size("frequency_context_size", context_size)

    def frequency_penalty_processor(tokens: mx.array, logits: mx.array) -> mx.array:
        recent = _recent(tokens, context_size)
        if recent is None:
            return logits
        if recent.ndim == 1:
            # One history for every row: mlx-lm's own scatter-add, same accumulation order.
            return logits.at[..., recent].subtract(penalty)
        rows = mx.arange(recent.shape[0])[:, None]
        return logits.at[rows, recent].subtract(penalty)

    return frequency_penalty_processor


def make_logits_processors(
    *,
    logit_bias: Mapping[int, float] | None = None,
    repetition_penalty: float | None = None,
    repetition_context_size: int = 20,
    presence_penalty: float | None = None,
    presence_context_size: int = 20,
    frequency_penalty: float | None = None,
    frequency_context_size: int = 20,
) -> list[LogitsProcessor]:
    """Build the processors that are on, in mlx-lm's order: logit bias, repetition, presence,
    frequency. Off values (None, an empty bias, ``repetition_penalty=1``, a penalty of 0)
    add no processor, so the list is empty when nothing is on."""
    _checks.check_context_size("repetition_context_size", repetition_context_size)
    _checks.check_context_size("presence_context_size", presence_context_size)
    _checks.check_context_size("frequency_context_size", frequency_context_size)
    processors: list[LogitsProcessor] = []
    if logit_bias:
        processors.append(make_logit_bias(logit_bias))
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(
            make_repetition_penalty(repetition_penalty, context_size=repetition_context_size)
        )
    if presence_penalty is not None and presence_penalty != 0.0:
        processors.append(
            make_presence_penalty(presence_penalty, context_size=presence_context_size)
        )
    if frequency_penalty is not None and frequency_penalty != 0.0:
        processors.append(
            make_frequency_penalty(frequency_penalty, context_size=frequency_context_size)
        )
    return processors
