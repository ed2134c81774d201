"""decide_retry and looks_complete: each path as a pure function."""

from __future__ import annotations

import pytest

from mlx_harmony.controller import (
    RetryPolicy,
    RetryReason,
    TurnOutput,
    decide_retry,
    looks_complete,
)
from mlx_harmony.harmony_format import CALL, RETURN, ToolCall
from mlx_harmony.sampling import SamplingParams


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("The answer is 42.", True),
        ("Really?", True),
        ("Done!)", True),
        ('He said "stop."', True),
        ("**Bold end.**", True),
        ("Wait…", True),
        ("完成。", True),
        ("```python\nprint(1)\n```", True),
        ("", False),
        ("   ", False),
        ("The answer is", False),
        ("Steps:\n1. Mix", False),
        ("List:", False),
        ("```python\nprint(1)", False),
        ("Here is code.\n```python\nx = 1.", False),
    ],
)
def test_looks_complete(text: str, complete: bool) -> None:
    assert looks_complete(text) is complete


def cut(final: str = "", analysis: str = "", closed: bool = False) -> TurnOutput:
    return TurnOutput(final=final, analysis=analysis, truncated=True, final_closed=closed)


def test_length_with_a_complete_looking_answer_is_kept() -> None:
    assert decide_retry(cut("All good."), "length", max_tokens=100) is None


def test_length_with_a_closed_answer_is_kept_whatever_its_text() -> None:
    assert decide_retry(cut("no period", closed=True), "length", max_tokens=100) is None


def test_length_with_an_incomplete_answer_grows_max_tokens_and_asks_for_brevity() -> None:
    policy = RetryPolicy(length_growth=1.5)
    decision = decide_retry(cut("Half an"), "length", max_tokens=100, policy=policy)
    assert decision is not None
    assert decision.reason is RetryReason.LENGTH
    assert decision.max_tokens == 150
    assert decision.instruction == policy.concise_instruction
    assert not decision.keep_analysis
    assert not decision.force_final
    assert dict(decision.sampling) == {}


@pytest.mark.parametrize(
    ("cap", "policy_cap", "expected"),
    [(None, None, 200), (120, None, 120), (None, 130, 130), (500, 130, 130)],
)
def test_length_growth_is_capped(cap: int | None, policy_cap: int | None, expected: int) -> None:
    decision = decide_retry(
        cut("Half"),
        "length",
        max_tokens=100,
        policy=RetryPolicy(max_tokens_cap=policy_cap),
        max_tokens_cap=cap,
    )
    assert decision is not None
    assert decision.max_tokens == expected


def test_length_when_spent_while_thinking_asks_for_the_final_answer() -> None:
    output = cut(analysis="Thinking about")
    first = decide_retry(output, "length", max_tokens=50)
    assert first is not None
    assert first.reason is RetryReason.LENGTH
    second = decide_retry(output, "length", max_tokens=100, previous=[RetryReason.LENGTH])
    assert second is not None
    assert second.reason is RetryReason.NO_FINAL
    assert second.force_final
    assert second.keep_analysis
    third = decide_retry(
        output, "length", max_tokens=100, previous=[RetryReason.LENGTH, RetryReason.NO_FINAL]
    )
    assert third is None


def test_only_analysis_asks_for_the_final_answer_keeping_the_reasoning() -> None:
    output = TurnOutput(analysis="I think it is 4.", stop_token=RETURN)
    decision = decide_retry(output, "stop", max_tokens=64)
    assert decision is not None
    assert decision.reason is RetryReason.NO_FINAL
    assert decision.force_final
    assert decision.keep_analysis
    assert decision.max_tokens == 64
    assert decide_retry(output, "stop", max_tokens=64, previous=[RetryReason.NO_FINAL]) is None


def test_an_empty_reply_is_retried_without_reasoning_to_keep() -> None:
    decision = decide_retry(TurnOutput(stop_token=RETURN), "stop", max_tokens=64)
    assert decision is not None
    assert decision.reason is RetryReason.NO_FINAL
    assert not decision.keep_analysis


def test_answers_and_tool_calls_are_kept() -> None:
    assert decide_retry(TurnOutput(final="Hi.", stop_token=RETURN), "stop", max_tokens=9) is None
    call = ToolCall("functions.f", "{}")
    output = TurnOutput(tool_calls=(call,), stop_token=CALL, called_tool=True)
    assert decide_retry(output, "stop", max_tokens=9) is None


def test_a_loop_raises_the_penalty_for_the_retry_only() -> None:
    sampling = SamplingParams(repetition_penalty=1.15, repetition_context_size=200)
    decision = decide_retry(cut("la la la"), "loop_detected", max_tokens=80, sampling=sampling)
    assert decision is not None
    assert decision.reason is RetryReason.LOOP
    assert decision.sampling == {"repetition_penalty": 1.25, "repetition_context_size": 400}
    assert not decision.keep_analysis
    assert decision.max_tokens == 80
    assert sampling.repetition_penalty == 1.15  # the user's values are not touched
    weak = decide_retry(cut("x"), "loop_detected", max_tokens=80, sampling=SamplingParams())
    assert weak is not None
    assert weak.sampling == {"repetition_penalty": 1.2, "repetition_context_size": 256}


def test_cancelled_generations_are_never_retried() -> None:
    assert decide_retry(cut(""), "cancelled", max_tokens=10) is None


def test_each_reason_and_the_total_are_bounded() -> None:
    policy = RetryPolicy(max_retries=2, loop_retries=5)
    previous = [RetryReason.LOOP, RetryReason.LOOP]
    assert (
        decide_retry(cut("x"), "loop_detected", max_tokens=9, previous=previous, policy=policy)
        is None
    )
    assert decide_retry(
        cut("x"), "loop_detected", max_tokens=9, previous=previous[:1], policy=policy
    )
    off = RetryPolicy(length_retries=0, no_final_retries=0)
    assert decide_retry(cut("Half"), "length", max_tokens=9, policy=off) is None


def test_stop_reason_enums_are_accepted() -> None:
    class Reason:
        value = "loop_detected"

    decision = decide_retry(cut("x"), Reason(), max_tokens=9)  # type: ignore[arg-type]
    assert decision is not None
    assert decision.reason is RetryReason.LOOP


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_retries", -1, "max_retries must be an integer >= 0"),
        ("length_growth", 0.5, "length_growth must be >= 1"),
        ("max_tokens_cap", 0, "max_tokens_cap must be >= 1"),
        ("loop_repetition_penalty", 0.0, "loop_repetition_penalty must be > 0"),
        ("loop_repetition_context_size", 0, "loop_repetition_context_size must be >= 1"),
    ],
)
def test_policy_values_are_checked(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]
