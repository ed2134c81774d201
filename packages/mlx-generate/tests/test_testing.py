"""ScriptedGenerator: TokenGenerator's API over scripted completions, no model."""

from __future__ import annotations

import threading

import pytest

from mlx_harmony.generate import CacheReuseMode, StopReason
from mlx_harmony.generate.testing import ScriptedGenerator

ANSWER = (
    "<|channel|>analysis<|message|>The user greets.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Hello there!<|return|>"
)


def test_a_harmony_completion_plays_to_its_stop_token() -> None:
    generator = ScriptedGenerator([ANSWER])
    prompt = generator.encode("<|start|>user<|message|>Hi<|end|><|start|>assistant")
    events = list(generator.stream(prompt_tokens=prompt, max_tokens=100))
    last = events[-1]
    assert last.stop_reason is StopReason.STOP
    assert last.token == 200002
    assert last.text == ""
    assert "".join(e.text for e in events) == ANSWER.removesuffix("<|return|>")
    assert last.stats is not None
    assert last.stats.stop_token == 200002
    assert last.stats.completion_tokens == len(generator.encode(ANSWER))
    assert generator.calls[0].prompt_tokens == prompt
    assert generator.remaining == 0


def test_a_tool_call_stops_on_call() -> None:
    call = "<|channel|>commentary to=functions.get_time<|message|>{}<|call|>"
    generator = ScriptedGenerator([call])
    tokens = list(generator.generate(prompt_tokens=[1, 2], max_tokens=100))
    assert tokens[-1] == 200012
    assert generator.last_stats is not None
    assert generator.last_stats.stop_reason is StopReason.STOP


def test_limits_strings_and_cancellation_behave_like_the_real_loop() -> None:
    generator = ScriptedGenerator([ANSWER] * 3)
    list(generator.generate(prompt_tokens=[1], max_tokens=3))
    assert generator.last_stats is not None
    assert generator.last_stats.stop_reason is StopReason.LENGTH
    assert generator.last_stats.completion_tokens == 3

    events = list(generator.stream(prompt_tokens=[1], stop_strings=["greets"]))
    assert "".join(e.text for e in events) == "<|channel|>analysis<|message|>The user "
    assert events[-1].stats is not None
    assert events[-1].stats.stop_string == "greets"

    cancel = threading.Event()
    seen = []
    for token in generator.generate(prompt_tokens=[1], cancel=cancel):
        seen.append(token)
        if len(seen) == 2:
            cancel.set()
    assert len(seen) == 2
    assert generator.last_stats.stop_reason is StopReason.CANCELLED


def test_a_scripted_loop_is_detected() -> None:
    generator = ScriptedGenerator([[5, 6, 7] * 40], is_harmony=False, stop_tokens=[])
    tokens = list(generator.generate(prompt_tokens=[1], loop_detection="full"))
    assert generator.last_stats is not None
    assert generator.last_stats.stop_reason is StopReason.LOOP_DETECTED
    assert len(tokens) == 48


def test_reuse_is_reported_across_calls() -> None:
    generator = ScriptedGenerator([[10, 11, 200002], [12, 200002]], is_harmony=False)
    list(generator.generate(prompt_tokens=[1, 2, 3]))
    list(generator.generate(prompt_tokens=[1, 2, 3, 10, 11, 200002, 4]))
    stats = generator.last_stats
    assert stats is not None
    assert stats.cache_reuse is CacheReuseMode.EXTEND
    assert stats.reused_prompt_tokens == 6


def test_running_out_of_completions_says_so() -> None:
    generator = ScriptedGenerator([[1, 2]], is_harmony=False)
    list(generator.generate(prompt_tokens=[1]))
    with pytest.raises(RuntimeError, match="ran out of completions after 1 calls"):
        generator.generate(prompt_tokens=[1]).__next__()
