"""ContextBudget and fit_context on a counting renderer."""

from __future__ import annotations

import pytest

from mlx_harmony.controller import (
    DEFAULT_MAX_TOKENS,
    ContextBudget,
    ContextOverflowError,
    PromptConfig,
    Turn,
    fit_context,
)
from mlx_harmony.harmony_format import Message

PREFIX = 10


def make_renderer(sizes: dict[str, int], calls: list[int]):
    """Each turn costs sizes[turn.user] tokens; the fixed part PREFIX."""

    def render(turns):
        calls.append(len(turns))
        return [0] * (PREFIX + sum(sizes[t.user.text] for t in turns))

    return render


def turns(*names: str) -> list[Turn]:
    return [Turn(Message.user(name)) for name in names]


def test_everything_fits_without_dropping() -> None:
    calls: list[int] = []
    tokens, dropped = fit_context(
        make_renderer({"a": 5, "b": 5}, calls), turns("a", "b"), budget=ContextBudget(100, 10)
    )
    assert (len(tokens), dropped, calls) == (20, 0, [2])


def test_the_oldest_turns_go_first_and_as_few_as_needed() -> None:
    sizes = dict.fromkeys("abcdefgh", 10)
    calls: list[int] = []
    # limit 60: prefix 10 + 5 turns of 10
    tokens, dropped = fit_context(
        make_renderer(sizes, calls), turns(*"abcdefgh"), budget=ContextBudget(70, 10)
    )
    assert dropped == 3
    assert len(tokens) == 60
    assert len(calls) <= 2 + 3  # full, newest alone, then a binary search


def test_uneven_turns() -> None:
    sizes = {"a": 50, "b": 1, "c": 1, "d": 30}
    tokens, dropped = fit_context(
        make_renderer(sizes, []), turns("a", "b", "c", "d"), budget=ContextBudget(52, 10)
    )
    assert dropped == 1
    assert len(tokens) == 42


def test_the_newest_turn_alone_too_long_names_the_sizes() -> None:
    with pytest.raises(ContextOverflowError) as info:
        fit_context(
            make_renderer({"a": 1, "b": 100}, []), turns("a", "b"), budget=ContextBudget(64, 16)
        )
    error = info.value
    assert error.prompt_tokens == 110
    assert "110 tokens" in str(error)
    assert "48 allowed" in str(error)
    assert "max_context_tokens 64 - max_context_tokens_margin 16" in str(error)


def test_no_window_means_no_trimming() -> None:
    tokens, dropped = fit_context(
        make_renderer({"a": 10**6}, []), turns("a"), budget=ContextBudget(None)
    )
    assert dropped == 0
    assert len(tokens) == PREFIX + 10**6


def test_budget_from_config() -> None:
    config = PromptConfig(max_context_tokens=1000, max_context_tokens_margin=100)
    assert ContextBudget.from_config(config, context_length=5000) == ContextBudget(1000, 100)
    assert ContextBudget.from_config(PromptConfig(), context_length=5000) == ContextBudget(
        5000, 512
    )
    assert ContextBudget.from_config(PromptConfig(), context_length=None) == ContextBudget(None, 0)
    # a model window smaller than the default margin keeps no margin
    assert ContextBudget.from_config(PromptConfig(), context_length=300) == ContextBudget(300, 0)
    with pytest.raises(ValueError, match="must be larger than max_context_tokens_margin"):
        ContextBudget.from_config(
            PromptConfig(max_context_tokens=100, max_context_tokens_margin=100)
        )


def test_max_new_tokens_uses_the_room_left() -> None:
    budget = ContextBudget(1000, 100)
    assert budget.max_new_tokens(900, 500) == 100
    assert budget.max_new_tokens(100, 500) == 500
    assert budget.max_new_tokens(100, None) == 900
    assert ContextBudget(None).max_new_tokens(100, None) == DEFAULT_MAX_TOKENS
    assert ContextBudget(None).max_new_tokens(100, 7) == 7
