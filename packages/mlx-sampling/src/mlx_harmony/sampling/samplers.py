"""Samplers: log-probabilities in, token ids out, with an explicit PRNG key per sampler.

The filters and their order are mlx-lm's (`mlx_lm.sample_utils.make_sampler`): top-p, min-p,
XTC, top-k, then a categorical draw at the given temperature. A sampler built with ``seed=s``
draws exactly the tokens that ``mx.random.seed(s)`` followed by mlx-lm's sampler draws, but
from its own key: it never reads or advances the global ``mx.random`` state, so concurrent
generations cannot disturb each other.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence

import mlx.core as mx

from mlx_harmony.sampling import _checks

__all__ = [
    "Sampler",
    "apply_min_p",
    "apply_top_k",
    "apply_top_p",
    "apply_xtc",
    "greedy_sampler",
    "make_sampler",
]

Sampler = Callable[[mx.array], mx.array]
"""Log-probabilities of shape (B, V) in, token ids of shape (B,) out."""

_NEG_INF = -float("inf")


# The filters below are written once and used twice: by the public `apply_*` functions with
# Python floats, and inside the compiled sampler step with scalar arrays. The arithmetic is
# mlx-lm's, op for op, so both agree with mlx-lm to the bit.


def _top_p(logprobs: mx.array, top_p: mx.array | float) -> mx.array:
    sorted_logprobs = mx.sort(logprobs, axis=-1)
    sorted_probs = mx.exp(sorted_logprobs.astype(mx.float32))
    mass_above = mx.cumsum(sorted_probs, axis=-1, reverse=True, inclusive=False)
    total_mass = mass_above[..., :1] + sorted_probs[..., :1]
    num_dropped = (mass_above >= top_p * total_mass).sum(axis=-1, keepdims=True)
    threshold = mx.take_along_axis(sorted_logprobs, num_dropped, axis=-1)
    return mx.where(logprobs < threshold, _NEG_INF, logprobs)


def _min_p(logprobs: mx.array, log_min_p: mx.array | float, min_tokens_to_keep: int) -> mx.array:
    if min_tokens_to_keep >= logprobs.shape[-1]:
        return logprobs
    tokens_to_remove = logprobs < mx.max(logprobs, axis=-1, keepdims=True) + log_min_p
    if min_tokens_to_keep > 1:
        top_indices = mx.argpartition(logprobs, kth=-min_tokens_to_keep, axis=-1)
        tokens_to_remove = mx.put_along_axis(
            tokens_to_remove, top_indices[..., -min_tokens_to_keep:], mx.array(False), axis=-1
        )
    return mx.where(tokens_to_remove, _NEG_INF, logprobs)


def _xtc(
    logprobs: mx.array,
    probability: mx.array | float,
    threshold: mx.array | float,
    special_tokens: tuple[int, ...],
    key: mx.array,
) -> mx.array:
    probs = mx.softmax(logprobs, -1)
    mask = probs > mx.where(probs > threshold, probs, mx.inf).min(axis=-1, keepdims=True)
    if special_tokens:
        # Checked while tracing (shapes are known then), so it costs nothing per call.
        if max(special_tokens) >= logprobs.shape[-1]:
            raise ValueError(
                f"xtc_special_tokens has token id {max(special_tokens)} but the vocabulary has "
                f"{logprobs.shape[-1]} tokens; drop the ids >= the vocabulary size"
            )
        mask[..., list(special_tokens)] = False
    return mx.where(
        mx.random.uniform(0, 1, key=key) > probability,
        logprobs,
        mx.where(mask, -mx.inf, logprobs),
    )


def _top_k(logprobs: mx.array, top_k: int) -> mx.array:
    if top_k >= logprobs.shape[-1]:
        return logprobs
    # mlx-lm scatters -inf over the V - k losers; scattering the k winners into a -inf array
    # selects the very same k (the same argpartition) and moves far less memory.
    keep = mx.argpartition(-logprobs, kth=top_k - 1, axis=-1)[..., :top_k]
    masked = mx.full(logprobs.shape, _NEG_INF, dtype=logprobs.dtype)
    return mx.put_along_axis(masked, keep, mx.take_along_axis(logprobs, keep, axis=-1), axis=-1)


def apply_top_p(logprobs: mx.array, top_p: float) -> mx.array:
    """Keep the smallest set of most likely tokens whose probability mass reaches `top_p`."""
    return _top_p(logprobs, _checks.check_top_p(top_p))


def apply_min_p(logprobs: mx.array, min_p: float, min_tokens_to_keep: int = 1) -> mx.array:
    """Drop tokens less likely than `min_p` times the most likely one, keeping at least
    `min_tokens_to_keep`."""
    _checks.check_min_p(min_p)
    _checks.check_min_tokens_to_keep(min_tokens_to_keep)
    if min_p == 0:
        return logprobs
    return _min_p(logprobs, math.log(min_p), min_tokens_to_keep)


def apply_top_k(logprobs: mx.array, top_k: int) -> mx.array:
    """Keep exactly the `top_k` most likely tokens (all of them when `top_k` >= V)."""
    if _checks.check_top_k(top_k) == 0:
        return logprobs
    return _top_k(logprobs, top_k)


def apply_xtc(
    logprobs: mx.array,
    probability: float,
    threshold: float,
    special_tokens: Sequence[int] = (),
    *,
    key: mx.array,
) -> mx.array:
    """Exclude Top Choices: with chance `probability` (one uniform draw from `key`), mask every
    token above `threshold` except the least likely of them; `special_tokens` are never masked."""
    _checks.check_xtc_probability(probability)
    _checks.check_xtc_threshold(threshold)
    special = _checks.check_token_ids("xtc_special_tokens", special_tokens)
    return _xtc(logprobs, probability, threshold, special, _checks.check_key(key))


def greedy_sampler(logprobs: mx.array) -> mx.array:
    """Argmax over the last axis: the temperature-0 sampler, which makes no random draw."""
    return mx.argmax(logprobs, axis=-1)


# (use_top_p, use_min_p, use_xtc, top_k, min_tokens_to_keep, xtc_special_tokens): Python
# constants, so each combination is traced once and shared by every sampler that uses it.
_Structure = tuple[bool, bool, bool, int, int, tuple[int, ...]]
# (1/temperature, top_p, log(min_p), xtc_probability, xtc_threshold) as scalar arrays: inputs,
# not constants, so a new temperature or top_p reuses the compiled kernels instead of
# compiling new ones.
_Values = tuple[mx.array, mx.array, mx.array, mx.array, mx.array]


def _sample_step(
    logprobs: mx.array, key: mx.array, values: _Values, structure: _Structure
) -> tuple[mx.array, mx.array]:
    inv_temperature, top_p, log_min_p, xtc_probability, xtc_threshold = values
    use_top_p, use_min_p, use_xtc, top_k, min_tokens_to_keep, special_tokens = structure
    if use_top_p:
        logprobs = _top_p(logprobs, top_p)
    if use_min_p:
        logprobs = _min_p(logprobs, log_min_p, min_tokens_to_keep)
    if use_xtc:
        # The global key sequence does `key, sub = split(key)` and draws from `sub`; XTC's
        # draw comes before the categorical one, as in mlx-lm.
        key, sub = mx.random.split(key)
        logprobs = _xtc(logprobs, xtc_probability, xtc_threshold, special_tokens, sub)
    if top_k > 0:
        logprobs = _top_k(logprobs, top_k)
    key, sub = mx.random.split(key)
    return mx.random.categorical(logprobs * inv_temperature, key=sub), key


_compiled_sample_step = mx.compile(_sample_step)


def make_sampler(
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    min_tokens_to_keep: int = 1,
    top_k: int = 0,
    xtc_probability: float = 0.0,
    xtc_threshold: float = 0.1,
    xtc_special_tokens: Sequence[int] = (),
    seed: int | None = None,
    key: mx.array | None = None,
) -> Sampler:
    """Build a sampler for one generation.

    The sampler takes log-probabilities of shape (B, V) (a single row (V,) gives a scalar id)
    and returns token ids of shape (B,). It owns its PRNG key: `key` if given, else
    ``mx.random.key(seed)``, else a key from fresh entropy. Off values: ``temperature=0``
    (greedy argmax, no random draw and no other filter), ``top_p=1``, ``min_p=0``,
    ``top_k=0``, ``xtc_probability=0``. XTC draws one number per call for the whole batch.
    Use one sampler per generation: calling it advances its key.
    """
    _checks.check_temperature(temperature)
    _checks.check_top_p(top_p)
    _checks.check_min_p(min_p)
    _checks.check_min_tokens_to_keep(min_tokens_to_keep)
    _checks.check_top_k(top_k)
    _checks.check_xtc_probability(xtc_probability)
    _checks.check_xtc_threshold(xtc_threshold)
    special = _checks.check_token_ids("xtc_special_tokens", xtc_special_tokens)
    if seed is not None and key is not None:
        raise ValueError("pass seed or key to make_sampler, not both")
    if seed is not None:
        _checks.check_seed(seed)
    if key is not None:
        _checks.check_key(key)
    if temperature == 0:
        return greedy_sampler
    if key is not None:
        state = key
    elif seed is not None:
        state = mx.random.key(int(seed))
    else:
        state = mx.random.key(secrets.randbits(64))

    # Options of filters that are off stay out of the structure, so they cause no new trace.
    structure: _Structure = (
        top_p < 1.0,
        min_p > 0.0,
        xtc_probability > 0.0,
        int(top_k),
        int(min_tokens_to_keep) if min_p > 0.0 else 1,
        special if xtc_probability > 0.0 else (),
    )
    log_min_p = math.log(min_p) if min_p > 0 else 0.0
    values_by_dtype: dict[mx.Dtype, _Values] = {}

    def values_for(dtype: mx.Dtype) -> _Values:
        # Each scalar takes the dtype it meets in mlx-lm's arithmetic (a Python float there):
        # the logprobs dtype, or float32 where it meets top-p's mass or XTC's uniform draw.
        values = (
            mx.array(1.0 / temperature, dtype=dtype),
            mx.array(top_p, dtype=mx.float32),
            mx.array(log_min_p, dtype=dtype),
            mx.array(xtc_probability, dtype=mx.float32),
            mx.array(xtc_threshold, dtype=dtype),
        )
        values_by_dtype[dtype] = values
        return values

    def sampler(logprobs: mx.array) -> mx.array:
        nonlocal state
        values = values_by_dtype.get(logprobs.dtype) or values_for(logprobs.dtype)
        tokens, state = _compiled_sample_step(logprobs, state, values, structure)
        return tokens

    return sampler
