"""Logits processors: hand-written cases, agreement with mlx-lm, batches, purity, validation."""

from __future__ import annotations

import re

import mlx.core as mx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx_lm import sample_utils

from mlx_harmony.sampling import (
    make_frequency_penalty,
    make_logit_bias,
    make_logits_processors,
    make_presence_penalty,
    make_repetition_penalty,
)


def _logits(shape: tuple[int, ...], seed: int) -> mx.array:
    return mx.random.normal(shape, key=mx.random.key(seed)) * 3


def _tokens(shape: tuple[int, ...], vocab: int, seed: int) -> mx.array:
    return mx.random.randint(0, vocab, shape, key=mx.random.key(seed))


def _theirs(processors, tokens: mx.array, logits: mx.array) -> mx.array:
    # mlx-lm's processors write into the logits they get: hand them a copy.
    logits = mx.array(logits)
    for processor in processors:
        logits = processor(tokens, logits)
    return logits


def _ours(processors, tokens: mx.array, logits: mx.array) -> mx.array:
    for processor in processors:
        logits = processor(tokens, logits)
    return logits


def _same(a: mx.array, b: mx.array) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and mx.array_equal(a, b).item()


# --- hand-written cases ---------------------------------------------------------------------


def test_presence_penalty_counts_each_token_once() -> None:
    result = make_presence_penalty(0.5, context_size=5)(mx.array([0, 0, 0, 1, 1]), mx.zeros((1, 4)))
    assert result.tolist() == [[-0.5, -0.5, 0.0, 0.0]]


def test_frequency_penalty_counts_every_occurrence() -> None:
    result = make_frequency_penalty(0.5, context_size=5)(
        mx.array([0, 0, 0, 1, 1]), mx.zeros((1, 4))
    )
    assert result.tolist() == [[-1.5, -1.0, 0.0, 0.0]]


def test_repetition_penalty_shrinks_towards_zero_from_both_sides() -> None:
    logits = mx.array([[2.0, -2.0, 2.0, -2.0]])
    result = make_repetition_penalty(2.0, context_size=5)(mx.array([0, 1, 1]), logits)
    assert result.tolist() == [[1.0, -4.0, 2.0, -2.0]]


def test_only_the_last_context_size_tokens_count() -> None:
    result = make_frequency_penalty(1.0, context_size=2)(mx.array([0, 0, 2, 3]), mx.zeros((1, 4)))
    assert result.tolist() == [[0.0, 0.0, -1.0, -1.0]]


def test_logit_bias_adds_to_the_named_tokens() -> None:
    result = make_logit_bias({1: 2.0, 3: -float("inf")})(mx.array([0]), mx.zeros((1, 4)))
    assert result.tolist() == [[0.0, 2.0, 0.0, -float("inf")]]


def test_empty_history_leaves_logits_alone() -> None:
    logits = _logits((1, 8), 0)
    for make in (make_repetition_penalty, make_presence_penalty, make_frequency_penalty):
        assert make(1.5)(mx.array([], dtype=mx.int32), logits) is logits
        assert make(1.5)(mx.zeros((2, 0), dtype=mx.int32), logits) is logits


def test_processors_do_not_modify_their_input() -> None:
    logits = _logits((1, 16), 1)
    original = mx.array(logits)
    mx.eval(original)
    tokens = mx.array([1, 2, 3, 3])
    _ours(
        make_logits_processors(
            logit_bias={0: 1.0},
            repetition_penalty=1.3,
            presence_penalty=0.5,
            frequency_penalty=0.5,
        ),
        tokens,
        logits,
    )
    assert _same(logits, original)


# --- agreement with mlx-lm ------------------------------------------------------------------

ALL_ON = {
    "logit_bias": {0: -1.5, 7: 2.0, 63: 0.25},
    "repetition_penalty": 1.3,
    "repetition_context_size": 12,
    "presence_penalty": 0.7,
    "presence_context_size": 9,
    "frequency_penalty": 0.3,
    "frequency_context_size": 30,
}
SINGLES = {
    "logit_bias": {"logit_bias": ALL_ON["logit_bias"]},
    "repetition": {"repetition_penalty": 1.3, "repetition_context_size": 12},
    "repetition below one": {"repetition_penalty": 0.8},
    "presence": {"presence_penalty": 0.7, "presence_context_size": 9},
    "negative presence": {"presence_penalty": -0.5},
    "frequency": {"frequency_penalty": 0.3, "frequency_context_size": 30},
    "all": ALL_ON,
}


@pytest.mark.parametrize("case", list(SINGLES))
@pytest.mark.parametrize("history", [0, 1, 5, 40])
def test_processors_match_mlx_lm(case: str, history: int) -> None:
    options = SINGLES[case]
    vocab = 64
    # A small vocabulary and a long history: plenty of repeated tokens.
    tokens, logits = _tokens((history,), vocab, history), _logits((1, vocab), history)
    ours = make_logits_processors(**options)
    theirs = sample_utils.make_logits_processors(**options)
    assert len(ours) == len(theirs)
    assert _same(_ours(ours, tokens, logits), _theirs(theirs, tokens, logits))


@pytest.mark.parametrize("dtype", [mx.bfloat16, mx.float16])
def test_processors_match_mlx_lm_in_half_precision(dtype: mx.Dtype) -> None:
    tokens, logits = _tokens((30,), 64, 0), _logits((1, 64), 0).astype(dtype)
    ours = _ours(make_logits_processors(**ALL_ON), tokens, logits)
    assert _same(ours, _theirs(sample_utils.make_logits_processors(**ALL_ON), tokens, logits))


def test_one_history_applies_to_every_row_like_mlx_lm() -> None:
    tokens, logits = _tokens((25,), 64, 1), _logits((3, 64), 1)
    ours = _ours(make_logits_processors(**ALL_ON), tokens, logits)
    assert _same(ours, _theirs(sample_utils.make_logits_processors(**ALL_ON), tokens, logits))


def test_one_history_per_row_matches_mlx_lm_row_by_row() -> None:
    tokens, logits = _tokens((3, 25), 64, 2), _logits((3, 64), 2)
    ours = _ours(make_logits_processors(**ALL_ON), tokens, logits)
    theirs = sample_utils.make_logits_processors(**ALL_ON)
    rows = [_theirs(theirs, tokens[b], logits[b : b + 1]) for b in range(3)]
    assert _same(ours, mx.concatenate(rows, axis=0))


def test_a_single_row_of_logits_works() -> None:
    tokens, logits = _tokens((25,), 64, 3), _logits((64,), 3)
    ours = _ours(make_logits_processors(**ALL_ON), tokens, logits)
    theirs = _theirs(sample_utils.make_logits_processors(**ALL_ON), tokens, logits[None])
    assert _same(ours, theirs[0])


def test_a_python_list_history_works() -> None:
    tokens, logits = _tokens((25,), 64, 4), _logits((1, 64), 4)
    processors = make_logits_processors(**ALL_ON)
    assert _same(_ours(processors, tokens.tolist(), logits), _ours(processors, tokens, logits))


@settings(max_examples=30, deadline=None)
@given(
    history=st.lists(st.integers(0, 15), max_size=30),
    penalty=st.floats(0.0, 2.0, allow_nan=False),
    context_size=st.integers(1, 40),
)
def test_frequency_penalty_subtracts_penalty_times_count(
    history: list[int], penalty: float, context_size: int
) -> None:
    result = make_frequency_penalty(penalty, context_size=context_size)(
        mx.array(history, dtype=mx.int32), mx.zeros((1, 16))
    )
    recent = history[-context_size:]
    expected = [-penalty * recent.count(token) for token in range(16)]
    assert result.reshape(-1).tolist() == pytest.approx(expected, abs=1e-5)


# --- make_logits_processors: what is on -----------------------------------------------------


def test_off_values_add_no_processor() -> None:
    assert make_logits_processors() == []
    assert (
        make_logits_processors(
            logit_bias={},
            repetition_penalty=1.0,
            presence_penalty=0.0,
            frequency_penalty=0.0,
        )
        == []
    )
    assert len(make_logits_processors(**ALL_ON)) == 4


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"repetition_penalty": 0.0}, "repetition_penalty must be a finite number > 0, got 0.0"),
        ({"repetition_penalty": -1.0}, "repetition_penalty must be a finite number > 0"),
        ({"presence_penalty": float("nan")}, "presence_penalty must be a finite number, got nan"),
        ({"repetition_context_size": 0}, "repetition_context_size must be an integer >= 1, got 0"),
        ({"frequency_context_size": 2.0}, "frequency_context_size must be an integer >= 1"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias keys must be token ids (integers >= 0), got -1"),
        ({"logit_bias": {3: float("nan")}}, "logit_bias[3] must be a number"),
    ],
)
def test_make_logits_processors_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make_logits_processors(**options)


def test_logit_bias_past_the_vocabulary_is_refused() -> None:
    processor = make_logit_bias({7: 1.0})
    with pytest.raises(ValueError, match="token id 7 but the vocabulary has 5 tokens"):
        processor(mx.array([0]), mx.zeros((1, 5)))
