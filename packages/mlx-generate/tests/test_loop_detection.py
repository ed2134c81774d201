from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_harmony.generate import LoopDetectionMode, LoopDetector, make_loop_detector


def _random_tokens(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 200_000) for _ in range(n)]


def test_a_repeated_sentence_is_a_loop_in_both_modes() -> None:
    sentence = _random_tokens(12, seed=1)
    tokens = _random_tokens(100) + sentence * 5
    for mode in ("cheap", "full"):
        detector = make_loop_detector(mode)
        assert detector.find_period(tokens) == 12
        assert detector(tokens)


def test_off_never_reports_a_loop() -> None:
    detector = make_loop_detector("off")
    assert detector.interval == 0
    assert not detector([7] * 500)


def test_three_repeats_are_needed() -> None:
    sentence = _random_tokens(20, seed=2)
    detector = make_loop_detector("full")
    assert not detector(_random_tokens(50) + sentence * 2)
    assert detector(_random_tokens(50) + sentence * 3)


def test_short_periods_need_the_minimum_span() -> None:
    detector = make_loop_detector("full", min_span=48)
    assert not detector(_random_tokens(30) + [5, 6] * 20)  # 40 tokens of "| -" is a table
    assert detector(_random_tokens(30) + [5, 6] * 24)


def test_full_finds_a_loop_whose_unit_repeats_the_ngram_inside() -> None:
    # The unit holds its last 8-gram twice, so the nearest earlier occurrence gives a false
    # period: cheap mode tries only that one, full mode tries every occurrence.
    gram = _random_tokens(8, seed=3)
    unit = gram + _random_tokens(5, seed=4) + gram
    tokens = _random_tokens(40) + unit * 4
    assert make_loop_detector("full").find_period(tokens) == len(unit)
    assert make_loop_detector("cheap").find_period(tokens) is None


@given(st.lists(st.integers(0, 200_000), min_size=0, max_size=600))
def test_random_text_is_not_a_loop(tokens: list[int]) -> None:
    # Distinct tokens cannot repeat: no loop whatever the mode.
    distinct = list(dict.fromkeys(tokens))
    assert not make_loop_detector("full")(distinct)
    assert not make_loop_detector("cheap")(distinct)


@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=40),
    st.integers(3, 8),
    st.lists(st.integers(0, 50), max_size=30),
)
def test_a_periodic_tail_is_found_by_full_mode(
    unit: list[int], repeats: int, prefix: list[int]
) -> None:
    tokens = prefix + unit * repeats
    detector = make_loop_detector("full", ngram=4, min_span=16, window=1024)
    found = detector.find_period(tokens)
    if len(unit) * repeats >= max(16, 3 * len(unit)):
        assert found is not None
        # The found period divides the tail it claims to repeat.
        tail = tokens[-max(3 * found, 16) :]
        assert tail[found:] == tail[:-found]


def test_cheap_mode_checks_every_k_tokens_full_every_token() -> None:
    assert make_loop_detector("cheap", check_every=16).interval == 16
    assert make_loop_detector("full").interval == 1


def test_bad_options_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="'sometimes'"):
        make_loop_detector("sometimes")
    with pytest.raises(ValueError, match="min_repeats"):
        LoopDetector(LoopDetectionMode.CHEAP, min_repeats=1)
    with pytest.raises(ValueError, match="window"):
        LoopDetector(LoopDetectionMode.CHEAP, window=20, min_span=48)
