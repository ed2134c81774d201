"""Samplers: hand-written distributions, agreement with mlx-lm, keys, batches, properties."""

from __future__ import annotations

import math
import re

import mlx.core as mx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_lm import sample_utils

from mlx_harmony.sampling import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    apply_xtc,
    greedy_sampler,
    make_sampler,
)


def _log(probs: list[float] | list[list[float]]) -> mx.array:
    array = mx.array(probs)
    return mx.log(array if array.ndim == 2 else array[None])


def _softmax_list(logprobs: mx.array) -> list[float]:
    return [round(p, 4) for p in mx.softmax(logprobs, axis=-1).reshape(-1).tolist()]


def _random_logprobs(shape: tuple[int, ...], seed: int, *, scale: float = 3.0) -> mx.array:
    logits = mx.random.normal(shape, key=mx.random.key(seed)) * scale
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def _same(a: mx.array, b: mx.array) -> bool:
    """Bitwise equal, with -inf matching -inf (array_equal already treats infs as equal)."""
    return a.shape == b.shape and a.dtype == b.dtype and mx.array_equal(a, b).item()


def _global_key() -> list[int]:
    return mx.random.state[0].tolist()


# --- the filters on four-token distributions (mlx-lm's test_sample_utils.py style) -------------


def test_top_p_keeps_the_smallest_set_that_reaches_the_mass() -> None:
    assert _softmax_list(apply_top_p(_log([0.9, 0.0, 0.0, 0.1]), 0.3)) == [1.0, 0.0, 0.0, 0.0]
    assert _softmax_list(apply_top_p(_log([0.0, 0.5, 0.4, 0.1]), 0.6)) == [0.0, 0.5556, 0.4444, 0.0]
    assert _softmax_list(apply_top_p(_log([0.0, 0.5, 0.4, 0.1]), 0.95)) == [0.0, 0.5, 0.4, 0.1]


def test_top_p_of_one_keeps_everything() -> None:
    logprobs = _log([0.1, 0.2, 0.3, 0.4])
    assert _same(apply_top_p(logprobs, 1.0), logprobs)


def test_min_p_drops_tokens_below_a_fraction_of_the_top_one() -> None:
    assert _softmax_list(apply_min_p(_log([0.9, 0.0, 0.0, 0.1]), 0.8)) == [1.0, 0.0, 0.0, 0.0]
    # 0.2 / 0.5 = 0.4 >= 0.3 survives, 0.1 / 0.5 = 0.2 < 0.3 does not.
    assert _softmax_list(apply_min_p(_log([0.5, 0.2, 0.2, 0.1]), 0.3)) == [
        0.5556,
        0.2222,
        0.2222,
        0.0,
    ]


def test_min_p_keeps_min_tokens_to_keep() -> None:
    kept = apply_min_p(_log([0.7, 0.2, 0.06, 0.04]), 0.9, min_tokens_to_keep=3)
    assert mx.isfinite(kept).reshape(-1).tolist() == [True, True, True, False]


def test_top_k_keeps_exactly_k() -> None:
    assert _softmax_list(apply_top_k(_log([0.6, 0.0, 0.1, 0.3]), 2)) == [0.6667, 0.0, 0.0, 0.3333]
    assert _softmax_list(apply_top_k(_log([[0.9, 0.0, 0.0, 0.1], [0.0, 0.8, 0.0, 0.2]]), 1)) == [
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        1.0,
        0.0,
        0.0,
    ]


def test_top_k_at_or_above_the_vocabulary_keeps_everything() -> None:
    logprobs = _log([0.1, 0.2, 0.3, 0.4])
    assert _same(apply_top_k(logprobs, 4), logprobs)
    assert _same(apply_top_k(logprobs, 100), logprobs)


def test_xtc_excludes_the_top_choices_above_the_threshold() -> None:
    key = mx.random.key(0)
    logprobs = _log([0.4, 0.3, 0.15, 0.15])
    # Tokens above 0.2: 0.4 and 0.3; all but the least likely of them (0.3) are excluded.
    assert _softmax_list(apply_xtc(logprobs, 1.0, 0.2, key=key)) == [0.0, 0.5, 0.25, 0.25]
    # Above 0.1 every token qualifies; only the two at 0.15 survive.
    assert _softmax_list(apply_xtc(logprobs, 1.0, 0.1, key=key)) == [0.0, 0.0, 0.5, 0.5]
    # Special tokens are never excluded.
    assert _softmax_list(apply_xtc(logprobs, 1.0, 0.1, [0], key=key)) == [
        round(4 / 7, 4),
        0.0,
        round(1.5 / 7, 4),
        round(1.5 / 7, 4),
    ]
    # With probability 0 nothing changes.
    assert _same(apply_xtc(logprobs, 0.0, 0.1, key=key), logprobs)


# --- the filters agree with mlx-lm's to the bit -------------------------------------------------


# Half precision compiles its own kernels on both sides (seconds each on a cold kernel cache).
HALF = pytest.mark.slow


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [mx.float32, pytest.param(mx.bfloat16, marks=HALF)])
def test_filters_match_mlx_lm(seed: int, dtype: mx.Dtype) -> None:
    logprobs = _random_logprobs((3, 257), seed).astype(dtype)
    for top_p in (0.5, 0.9):
        assert _same(apply_top_p(logprobs, top_p), sample_utils.apply_top_p(logprobs, top_p))
    for min_p, keep in ((0.05, 1), (0.2, 4)):
        ours = apply_min_p(logprobs, min_p, keep)
        assert _same(ours, sample_utils.apply_min_p(logprobs, min_p, keep))
    for top_k in (1, 7):
        assert _same(apply_top_k(logprobs, top_k), sample_utils.apply_top_k(logprobs, top_k))
    ours = apply_xtc(logprobs, 1.0, 0.02, [3], key=mx.random.key(seed))
    assert _same(ours, sample_utils.apply_xtc(logprobs, 1.0, 0.02, [3]))


# --- make_sampler agrees with mlx-lm's sampler under mx.random.seed -----------------------------

# (ours, mlx-lm's) options. A fixed set: mlx-lm compiles a kernel per distinct value.
SAMPLER_CASES = {
    "temperature": ({"temperature": 1.0}, {"temp": 1.0}),
    "low temperature": ({"temperature": 0.3}, {"temp": 0.3}),
    "top_p": ({"temperature": 0.7, "top_p": 0.9}, {"temp": 0.7, "top_p": 0.9}),
    "min_p": (
        {"temperature": 1.0, "min_p": 0.1, "min_tokens_to_keep": 3},
        {"temp": 1.0, "min_p": 0.1, "min_tokens_to_keep": 3},
    ),
    "top_k": ({"temperature": 1.0, "top_k": 5}, {"temp": 1.0, "top_k": 5}),
    "xtc": (
        {"temperature": 1.0, "xtc_probability": 0.5, "xtc_threshold": 0.05},
        {"temp": 1.0, "xtc_probability": 0.5, "xtc_threshold": 0.05},
    ),
    "full chain": (
        {
            "temperature": 0.9,
            "top_p": 0.95,
            "min_p": 0.02,
            "top_k": 20,
            "xtc_probability": 0.5,
            "xtc_threshold": 0.05,
            "xtc_special_tokens": (3,),
        },
        {
            "temp": 0.9,
            "top_p": 0.95,
            "min_p": 0.02,
            "top_k": 20,
            "xtc_probability": 0.5,
            "xtc_threshold": 0.05,
            "xtc_special_tokens": [3],
        },
    ),
}


def _draws(sampler, logprobs: mx.array, calls: int) -> list:
    return [sampler(logprobs).tolist() for _ in range(calls)]


@pytest.mark.parametrize("case", list(SAMPLER_CASES))
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_make_sampler_matches_mlx_lm_seeded(case: str, seed: int) -> None:
    ours_options, theirs_options = SAMPLER_CASES[case]
    logprobs = _random_logprobs((4, 300), 100 + seed)
    mx.random.seed(seed)
    theirs = _draws(sample_utils.make_sampler(**theirs_options), logprobs, 8)
    ours = _draws(make_sampler(**ours_options, seed=seed), logprobs, 8)
    assert ours == theirs


@HALF
@pytest.mark.parametrize("case", ["top_p", "full chain"])
@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_make_sampler_matches_mlx_lm_in_half_precision(case: str, dtype: mx.Dtype) -> None:
    ours_options, theirs_options = SAMPLER_CASES[case]
    logprobs = _random_logprobs((4, 300), 5).astype(dtype)
    mx.random.seed(3)
    theirs = _draws(sample_utils.make_sampler(**theirs_options), logprobs, 6)
    assert _draws(make_sampler(**ours_options, seed=3), logprobs, 6) == theirs


def test_make_sampler_matches_mlx_lm_on_a_single_row() -> None:
    ours_options, theirs_options = SAMPLER_CASES["full chain"]
    logprobs = _random_logprobs((300,), 9)
    mx.random.seed(4)
    theirs = _draws(sample_utils.make_sampler(**theirs_options), logprobs, 5)
    ours = make_sampler(**ours_options, seed=4)
    assert ours(logprobs).shape == ()
    mx.random.seed(4)
    assert _draws(make_sampler(**ours_options, seed=4), logprobs, 5) == theirs


def test_xtc_draw_comes_before_the_categorical_draw() -> None:
    # XTC applies on about half the calls here; if our draws were out of order or missing, the
    # categorical noise would shift and the tokens would part from mlx-lm's within a few calls.
    ours_options, theirs_options = SAMPLER_CASES["xtc"]
    logprobs = mx.log(mx.array([[0.3, 0.25, 0.2, 0.15, 0.1]]))
    mx.random.seed(11)
    theirs = _draws(sample_utils.make_sampler(**theirs_options), logprobs, 40)
    assert _draws(make_sampler(**ours_options, seed=11), logprobs, 40) == theirs
    assert len({tuple(t) for t in theirs}) > 1


# --- batches and shapes ---------------------------------------------------------------------


def test_batched_logprobs_give_one_token_per_row() -> None:
    # Rows with a single possible token: any filter, any key, the token is forced.
    vocab, forced = 64, [5, 0, 63]
    logprobs = mx.put_along_axis(
        mx.full((3, vocab), -float("inf")), mx.array(forced)[:, None], mx.zeros((3, 1)), axis=-1
    )
    for options in ({"temperature": 1.0}, SAMPLER_CASES["full chain"][0]):
        tokens = make_sampler(**options, seed=0)(logprobs)
        assert tokens.shape == (3,)
        assert tokens.tolist() == forced


# --- keys: determinism, independence, the global state ------------------------------------------


def test_same_seed_gives_the_same_tokens() -> None:
    logprobs = _random_logprobs((2, 500), 0, scale=1.0)
    options = SAMPLER_CASES["full chain"][0]
    first = _draws(make_sampler(**options, seed=42), logprobs, 10)
    assert _draws(make_sampler(**options, seed=42), logprobs, 10) == first
    assert _draws(make_sampler(**options, seed=43), logprobs, 10) != first


def test_key_and_seed_are_the_same_thing() -> None:
    logprobs = _random_logprobs((1, 500), 1, scale=1.0)
    by_seed = _draws(make_sampler(temperature=1.0, seed=5), logprobs, 10)
    assert _draws(make_sampler(temperature=1.0, key=mx.random.key(5)), logprobs, 10) == by_seed


def test_interleaved_samplers_do_not_share_random_state() -> None:
    logprobs = _random_logprobs((1, 500), 2, scale=1.0)
    alone_a = _draws(make_sampler(temperature=1.0, seed=1), logprobs, 10)
    alone_b = _draws(make_sampler(temperature=1.0, key=mx.random.key(2)), logprobs, 10)
    a, b = (
        make_sampler(temperature=1.0, seed=1),
        make_sampler(temperature=1.0, key=mx.random.key(2)),
    )
    interleaved_a, interleaved_b = [], []
    for _ in range(10):
        interleaved_a.append(a(logprobs).tolist())
        mx.random.uniform()  # someone else using the global state in between
        interleaved_b.append(b(logprobs).tolist())
    assert interleaved_a == alone_a
    assert interleaved_b == alone_b
    assert alone_a != alone_b


def test_samplers_never_touch_the_global_random_state() -> None:
    mx.random.seed(123)
    before = _global_key()
    logprobs = _random_logprobs((2, 100), 3)
    for options in SAMPLER_CASES.values():
        _draws(make_sampler(**options[0], seed=0), logprobs, 3)
    _draws(make_sampler(temperature=1.0), logprobs, 3)
    assert _global_key() == before


def test_unseeded_samplers_draw_fresh_keys() -> None:
    # 10 draws from 1000 equally likely tokens: two samplers agreeing by chance is ~1e-30.
    logprobs = mx.full((1, 1000), -math.log(1000))
    assert _draws(make_sampler(temperature=1.0), logprobs, 10) != _draws(
        make_sampler(temperature=1.0), logprobs, 10
    )


def test_temperature_zero_is_argmax_without_random_draws() -> None:
    logprobs = _random_logprobs((3, 50), 4)
    mx.random.seed(0)
    before = _global_key()
    sampler = make_sampler(temperature=0.0, top_p=0.5, top_k=3, seed=1)
    assert sampler is greedy_sampler
    assert sampler(logprobs).tolist() == mx.argmax(logprobs, axis=-1).tolist()
    assert _global_key() == before


# --- properties -----------------------------------------------------------------------------


@st.composite
def _distributions(draw: st.DrawFn) -> mx.array:
    vocab = draw(st.sampled_from([4, 16, 64]))
    # Distinct values, so "the k most likely" is well defined.
    values = draw(
        st.lists(
            st.floats(-20, 5, allow_nan=False, width=32),
            min_size=vocab,
            max_size=vocab,
            unique=True,
        )
    )
    logits = mx.array(values)[None]
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


@settings(max_examples=40, deadline=None)
@given(logprobs=_distributions(), k=st.integers(1, 70))
def test_top_k_keeps_exactly_the_k_largest(logprobs: mx.array, k: int) -> None:
    kept = mx.isfinite(apply_top_k(logprobs, k)).reshape(-1).tolist()
    vocab = len(kept)
    assert sum(kept) == min(k, vocab)
    largest = set(mx.argsort(-logprobs, axis=-1).reshape(-1).tolist()[: min(k, vocab)])
    assert {i for i, keep in enumerate(kept) if keep} == largest


@settings(max_examples=40, deadline=None)
@given(
    logprobs=_distributions(),
    top_k=st.sampled_from([0, 1, 3]),
    min_p=st.sampled_from([0.0, 0.1, 0.5]),
    top_p=st.sampled_from([1.0, 0.5, 0.9]),
    seed=st.integers(0, 2**32),
)
def test_sampled_tokens_are_always_allowed(
    logprobs: mx.array, top_k: int, min_p: float, top_p: float, seed: int
) -> None:
    probs = mx.exp(logprobs).reshape(-1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    allowed = set(order)
    if top_p < 1.0:
        mass, nucleus = 0.0, set()
        for i in order:
            nucleus.add(i)
            mass += probs[i]
            if mass >= top_p * (1 + 1e-4):
                break
        # Ties with the last token in the nucleus may take its place (the order among equal
        # probabilities is the sort's choice, not the sampler's).
        edge = min(probs[i] for i in nucleus)
        nucleus |= {i for i, p in enumerate(probs) if p == edge}
        allowed &= nucleus
    if min_p > 0:
        allowed &= {i for i, p in enumerate(probs) if p >= min_p * max(probs) * (1 - 1e-4)}
    if top_k:
        # Ties at the k-th place (float32 normalisation can merge close values) may go either way.
        allowed &= {i for i, p in enumerate(probs) if p >= probs[order[top_k - 1]]}
    sampler = make_sampler(temperature=1.0, top_p=top_p, min_p=min_p, top_k=top_k, seed=seed)
    for _ in range(5):
        assert sampler(logprobs).item() in allowed


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -0.1}, "temperature must be a finite number >= 0, got -0.1"),
        ({"temperature": float("inf")}, "temperature must be a finite number >= 0"),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0 (1.0 turns it off)"),
        ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5"),
        ({"min_p": -0.1}, "min_p must be in [0, 1], got -0.1"),
        ({"min_tokens_to_keep": 0}, "min_tokens_to_keep must be an integer >= 1, got 0"),
        ({"top_k": -1}, "top_k must be an integer >= 0, got -1"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0, got 2.5"),
        ({"xtc_probability": 2}, "xtc_probability must be in [0, 1], got 2"),
        ({"xtc_threshold": 0.6}, "xtc_threshold must be in [0, 0.5], got 0.6"),
        ({"xtc_special_tokens": [-1]}, "xtc_special_tokens must hold token ids"),
        ({"seed": -1}, "seed must be an integer in [0, 18446744073709551615], got -1"),
        ({"seed": 1, "key": mx.random.key(1)}, "pass seed or key to make_sampler, not both"),
        ({"key": mx.zeros((3,))}, "key must be a PRNG key from mx.random.key(seed)"),
    ],
)
def test_make_sampler_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_sampler(**options)


def test_xtc_special_tokens_past_the_vocabulary_are_refused() -> None:
    sampler = make_sampler(temperature=1.0, xtc_probability=0.5, xtc_special_tokens=(10,), seed=0)
    with pytest.raises(ValueError, match="token id 10 but the vocabulary has 5 tokens"):
        sampler(mx.zeros((1, 5)))
