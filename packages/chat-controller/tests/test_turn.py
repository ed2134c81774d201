"""run_chat_turn on scripted generations: every retry path, tool rounds, trimming, events."""

from __future__ import annotations

import threading

import pytest

from mlx_harmony.controller import (
    AnswerDelta,
    ContextOverflowError,
    ContextTrimmed,
    FinishReason,
    HarmonyAdapter,
    PromptConfig,
    RetryEvent,
    RetryPolicy,
    RetryReason,
    StatsEvent,
    ThinkingDelta,
    ToolCallEvent,
    ToolRegistry,
    ToolResultEvent,
    Turn,
    TurnDone,
    adapter_for,
    as_turn,
    run_chat_turn,
    stream_chat_turn,
)
from mlx_harmony.controller.testing import Script, ScriptedGenerator, scripted_turns
from mlx_harmony.harmony_format import RETURN, FunctionTool, Message, get_encoding

LOOP_TEXT = "la la la la "


def tokens_of(text: str) -> list[int]:
    return list(get_encoding().encode(text, allowed_special="all"))


def answer_rest(text: str) -> Script:
    """The rest of a final message whose header the prompt already holds (forced answer)."""
    return Script((*tokens_of(text), RETURN))


def run(generator: ScriptedGenerator, turn, **options):
    events: list = []
    options.setdefault("config", PromptConfig())
    result = run_chat_turn(
        generator, adapter_for(generator), turn, on_event=events.append, **options
    )
    return result, events


# -- the plain path ----------------------------------------------------------------------------


def test_a_plain_turn_streams_thinking_before_the_answer_and_ends_with_turn_done() -> None:
    generator = ScriptedGenerator([Script.harmony("Paris.", analysis="The capital of France.")])
    result, events = run(generator, "Capital of France?")
    kinds = [type(e) for e in events]
    assert kinds[-1] is TurnDone
    assert kinds[-2] is StatsEvent
    last_thinking = max(i for i, k in enumerate(kinds) if k is ThinkingDelta)
    first_answer = min(i for i, k in enumerate(kinds) if k is AnswerDelta)
    assert last_thinking < first_answer
    assert (
        "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "The capital of France."
    )
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == "Paris."
    assert result.final == "Paris."
    assert result.finish_reason is FinishReason.STOP
    assert not result.truncated
    assert result.display_text == "Paris."
    assert [m.channel for m in result.turn.replies] == ["analysis", "final"]
    assert generator.calls[0].prompt_text.endswith(
        "<|start|>user<|message|>Capital of France?<|end|><|start|>assistant"
    )


def test_the_next_turn_drops_old_reasoning_and_reuses_the_prompt_cache() -> None:
    generator = ScriptedGenerator(
        [
            Script.harmony("Paris.", analysis="SECRET-THOUGHT"),
            Script.harmony("Berlin.", analysis="Germany."),
        ]
    )
    first, _ = run(generator, "Capital of France?")
    second, _ = run(generator, "And Germany?", history=[first.turn])
    prompt = generator.calls[1].prompt_text
    assert "SECRET-THOUGHT" not in prompt
    assert "<|channel|>final<|message|>Paris.<|end|>" in prompt
    # everything up to the end of the first prompt is served by the cache
    assert second.reused_prompt_tokens >= len(generator.calls[0].prompt_tokens)
    assert second.timing()["reused_prompt_tokens"] == second.reused_prompt_tokens


def test_settings_and_placeholders_reach_the_prompt_and_the_generator() -> None:
    config = PromptConfig(
        developer_instructions="Today is <|DATE|>. Be {style}.",
        placeholders={"style": "brief"},
        deterministic_time_enabled=True,
        deterministic_time_iso="2025-01-31T14:05:09+01:00",
        reasoning_effort="high",
        temperature=0.3,
        max_tokens=77,
        loop_detection="full",
        end_token_strings=["###"],
        example_dialogues=[
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey."}]
        ],
        assistant_greeting="Welcome!",
    )
    generator = ScriptedGenerator([Script.harmony("Ok.")])
    run(generator, "Go", config=config)
    call = generator.calls[0]
    text = call.prompt_text
    assert "Reasoning: high" in text
    assert "Today is 2025-01-31. Be brief." in text
    order = [
        text.index("<|start|>developer"),
        text.index("<|start|>user<|message|>Hi"),
        text.index("<|channel|>final<|message|>Hey."),
        text.index("Welcome!"),
        text.index("<|start|>user<|message|>Go"),
    ]
    assert order == sorted(order)
    assert call.sampling.temperature == 0.3
    assert call.max_tokens == 77
    assert call.loop_detection == "full"
    assert call.stop_strings == ("###",)
    assert RETURN in call.stop_tokens
    assert 200007 not in call.stop_tokens


def test_a_stop_string_ends_the_answer_before_it() -> None:
    generator = ScriptedGenerator([Script.harmony("Hello ### and more")])
    result, _ = run(generator, "Hi", config=PromptConfig(end_token_strings=["###"]))
    assert result.final == "Hello "
    assert result.finish_reason is FinishReason.STOP


def test_a_cancelled_turn_stops_without_retrying() -> None:
    cancel = threading.Event()
    cancel.set()
    generator = ScriptedGenerator([Script.harmony("never shown")])
    result, events = run(generator, "Hi", cancel=cancel)
    assert result.finish_reason is FinishReason.CANCELLED
    assert result.final == ""
    assert not any(isinstance(e, RetryEvent) for e in events)
    assert len(generator.calls) == 1


# -- length --------------------------------------------------------------------------------------


def test_length_with_an_incomplete_answer_retries_with_more_tokens_and_asks_for_brevity() -> None:
    generator = ScriptedGenerator(
        [
            Script.harmony("This answer goes on and on and on without end", stop=False),
            Script.harmony("Short answer."),
        ]
    )
    result, events = run(generator, "Explain", config=PromptConfig(max_tokens=8))
    first, second = generator.calls
    assert first.max_tokens == 8
    assert second.max_tokens == 16
    policy = RetryPolicy()
    assert policy.concise_instruction not in first.prompt_text
    assert f"Explain\n\n{policy.concise_instruction}<|end|>" in second.prompt_text
    assert "goes on and on" not in second.prompt_text
    retry = next(e for e in events if isinstance(e, RetryEvent))
    assert (retry.attempt, retry.reason, retry.max_tokens) == (2, RetryReason.LENGTH, 16)
    # events of the dropped attempt come before the RetryEvent; the kept ones after it
    after = events[events.index(retry) :]
    assert "".join(e.text for e in after if isinstance(e, AnswerDelta)) == "Short answer."
    assert result.final == "Short answer."
    assert result.finish_reason is FinishReason.STOP
    assert [(r.reason, r.attempt, r.max_tokens) for r in result.retries] == [
        (RetryReason.LENGTH, 1, 16)
    ]
    # the turn keeps the user's message as written
    assert result.turn.user == Message.user("Explain")


def test_length_with_an_answer_that_looks_complete_is_kept() -> None:
    script = Script.harmony("It is done.", stop=False)
    generator = ScriptedGenerator([script])
    result, events = run(generator, "Go", config=PromptConfig(max_tokens=len(script.tokens)))
    assert len(generator.calls) == 1
    assert not any(isinstance(e, RetryEvent) for e in events)
    assert result.final == "It is done."
    assert not result.truncated
    assert result.display_text == "It is done."


def test_length_after_a_closed_answer_is_kept_without_a_marker() -> None:
    script = Script.from_messages(
        [Message.assistant("Yes"), Message.analysis("and now some rambling that gets cut")],
        stop=False,
    )
    generator = ScriptedGenerator([script])
    result, _ = run(generator, "Go", config=PromptConfig(max_tokens=len(script.tokens) - 2))
    assert len(generator.calls) == 1
    assert result.final == "Yes"
    assert result.finish_reason is FinishReason.STOP
    assert not result.truncated


def test_length_retries_are_bounded_and_the_answer_is_marked_truncated() -> None:
    generator = ScriptedGenerator(
        [
            Script.harmony("one two three four five six seven eight nine ten", stop=False),
            Script.harmony(
                "uno dos tres cuatro cinco seis siete ocho nueve diez once doce trece", stop=False
            ),
        ]
    )
    result, _ = run(
        generator, "Count", config=PromptConfig(max_tokens=6), policy=RetryPolicy(length_retries=1)
    )
    assert len(generator.calls) == 2
    assert result.finish_reason is FinishReason.LENGTH
    assert result.truncated
    assert result.display_text.endswith("[truncated]")
    assert result.display_text.startswith(result.final.rstrip())


def test_length_growth_never_passes_the_context_window() -> None:
    generator = ScriptedGenerator(
        [Script.harmony("word " * 40, stop=False), Script.harmony("Fine.")]
    )
    config = PromptConfig(max_tokens=30, max_context_tokens=150, max_context_tokens_margin=20)
    run(generator, "Hi", config=config)
    first, second = generator.calls
    assert first.max_tokens == 30
    assert second.max_tokens <= 150 - len(second.prompt_tokens)
    assert second.max_tokens > 30


def test_thinking_cut_by_length_falls_back_to_asking_for_the_answer() -> None:
    generator = ScriptedGenerator(
        [
            Script.harmony(analysis="First I consider many many things", stop=False),
            Script.harmony(analysis="KEPT-THOUGHT Then I consider more things", stop=False),
            answer_rest("Forty-two."),
        ]
    )
    result, events = run(generator, "Answer?", config=PromptConfig(max_tokens=6))
    reasons = [e.reason for e in events if isinstance(e, RetryEvent)]
    assert reasons == [RetryReason.LENGTH, RetryReason.NO_FINAL]
    last = generator.calls[2].prompt_text
    assert last.endswith("<|start|>assistant<|channel|>final<|message|>")
    assert "KEPT-THOUGHT" in last
    assert "many many" not in last
    assert result.final == "Forty-two."
    assert result.finish_reason is FinishReason.STOP


# -- no final answer -------------------------------------------------------------------------------


def test_only_thinking_retries_by_starting_the_final_answer_and_keeps_the_reasoning() -> None:
    generator = ScriptedGenerator(
        [Script.harmony(analysis="The user wants 6*7, which is 42."), answer_rest("42.")]
    )
    result, events = run(generator, "6*7?")
    retry = next(e for e in events if isinstance(e, RetryEvent))
    assert retry.reason is RetryReason.NO_FINAL
    prompt = generator.calls[1].prompt_text
    assert prompt.endswith(
        "<|channel|>analysis<|message|>The user wants 6*7, which is 42.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>"
    )
    assert result.final == "42."
    assert [m.channel for m in result.turn.replies] == ["analysis", "final"]
    assert result.analysis == "The user wants 6*7, which is 42."


def test_no_final_retries_are_bounded() -> None:
    generator = ScriptedGenerator([Script.harmony(analysis="Hmm."), Script((RETURN,))])
    result, _ = run(generator, "?")
    assert len(generator.calls) == 2
    assert result.finish_reason is FinishReason.NO_FINAL
    assert result.final == ""


def test_retries_can_be_turned_off() -> None:
    generator = ScriptedGenerator([Script.harmony(analysis="Hmm.")])
    result, _ = run(generator, "?", policy=RetryPolicy(max_retries=0))
    assert len(generator.calls) == 1
    assert result.finish_reason is FinishReason.NO_FINAL


# -- loops ---------------------------------------------------------------------------------------


def test_a_loop_retries_with_a_stronger_penalty_without_the_looping_text() -> None:
    generator = ScriptedGenerator(
        [
            Script.looping(LOOP_TEXT, channel="final"),
            Script.harmony("A calm answer."),
            Script.harmony("Next answer."),
        ]
    )
    config = PromptConfig(repetition_penalty=1.05, repetition_context_size=32, temperature=0.7)
    result, events = run(generator, "Sing", config=config)
    looping, retried = generator.calls[:2]
    assert looping.sampling.repetition_penalty == 1.05
    assert retried.sampling.repetition_penalty == pytest.approx(1.2)
    assert retried.sampling.repetition_context_size == 256
    assert retried.sampling.temperature == 0.7  # only the penalty changed
    assert "la la" not in retried.prompt_text
    assert RetryPolicy().loop_instruction in retried.prompt_text
    retry = next(e for e in events if isinstance(e, RetryEvent))
    assert retry.reason is RetryReason.LOOP
    assert retry.sampling == {"repetition_penalty": 1.2, "repetition_context_size": 256}
    assert result.final == "A calm answer."
    assert result.retries[0].sampling["repetition_penalty"] == pytest.approx(1.2)

    # the next turn runs with the user's settings again, and a clean history
    run(generator, "Again", config=config, history=[result.turn])
    after = generator.calls[2]
    assert after.sampling.repetition_penalty == 1.05
    assert after.sampling.repetition_context_size == 32
    assert RetryPolicy().loop_instruction not in after.prompt_text
    assert "la la" not in after.prompt_text


def test_a_loop_that_persists_is_shown_truncated() -> None:
    generator = ScriptedGenerator(
        [Script.looping(LOOP_TEXT, channel="final"), Script.looping("no no ", channel="final")]
    )
    result, _ = run(generator, "Sing")
    assert len(generator.calls) == 2
    assert result.finish_reason is FinishReason.LOOP
    assert result.display_text.endswith("[truncated]")


# -- tools ---------------------------------------------------------------------------------------


def python_call(code: str) -> Script:
    return Script.harmony(
        analysis="Let me compute.", call=("python", code), call_channel="analysis", constrain=None
    )


def test_a_python_call_runs_and_its_result_is_fed_back() -> None:
    generator = ScriptedGenerator([python_call("print(6 * 7)"), Script.harmony("It is 42.")])
    with ToolRegistry.from_flags(python=True) as tools:
        result, events = run(generator, "6*7?", tools=tools)
    assert "# Tools" in generator.calls[0].prompt_text
    assert "## python" in generator.calls[0].prompt_text
    second = generator.calls[1].prompt_text
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42<|end|>" in second
    assert "Let me compute." in second  # reasoning of the turn in progress stays
    call_event = next(e for e in events if isinstance(e, ToolCallEvent))
    result_event = next(e for e in events if isinstance(e, ToolResultEvent))
    assert call_event.handled
    assert call_event.call.recipient == "python"
    assert result_event.result.content.strip() == "42"
    assert not result_event.result.error
    assert events.index(call_event) < events.index(result_event)
    assert result.final == "It is 42."
    assert result.tool_rounds == 1
    roles = [(m.role.value, m.channel, m.recipient) for m in result.turn.replies]
    assert roles == [
        ("assistant", "analysis", None),
        ("assistant", "analysis", "python"),
        ("tool", "analysis", "assistant"),
        ("assistant", "final", None),
    ]


def test_a_python_timeout_is_reported_to_the_model() -> None:
    generator = ScriptedGenerator(
        [python_call("while True:\n    pass"), Script.harmony("It timed out.")]
    )
    with ToolRegistry.from_flags(python=True, python_timeout_s=0.5) as tools:
        result, events = run(generator, "loop forever", tools=tools)
    tool_result = next(e for e in events if isinstance(e, ToolResultEvent)).result
    assert tool_result.error
    assert "timed out after 0.5 s" in tool_result.content
    assert tool_result.content in generator.calls[1].prompt_text
    assert result.final == "It timed out."


def test_an_escaping_patch_is_refused_and_nothing_is_written(tmp_path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    patch = "*** Begin Patch\n*** Add File: ../outside.txt\n+gotcha\n*** End Patch\n"
    generator = ScriptedGenerator(
        [
            Script.harmony(call=("functions.apply_patch", patch)),
            Script.harmony("I cannot write outside the workspace."),
        ]
    )
    with ToolRegistry.from_flags(apply_patch=True, workspace=workspace) as tools:
        result, events = run(generator, "Write outside", tools=tools)
    assert "apply_patch" in generator.calls[0].prompt_text  # declared in the developer message
    tool_result = next(e for e in events if isinstance(e, ToolResultEvent)).result
    assert tool_result.error
    assert "outside" in tool_result.content
    assert not (tmp_path / "outside.txt").exists()
    assert result.tool_rounds == 1


def test_tool_rounds_are_capped_and_the_model_must_answer() -> None:
    generator = ScriptedGenerator(
        [
            python_call("print(1)"),
            python_call("print(2)"),
            python_call("print(3)"),
            answer_rest("Done."),
        ]
    )
    with ToolRegistry.from_flags(python=True) as tools:
        result, events = run(generator, "Go", tools=tools, max_tool_rounds=2)
    results = [e.result for e in events if isinstance(e, ToolResultEvent)]
    assert [r.error for r in results] == [False, False, True]
    assert "2 tool calls" in results[2].content
    assert "print(3)" not in "".join(r.content for r in results)
    assert generator.calls[3].prompt_text.endswith("<|channel|>final<|message|>")
    assert result.final == "Done."
    assert result.tool_rounds == 2
    assert result.finish_reason is FinishReason.STOP


def test_a_model_that_keeps_calling_tools_after_the_cap_ends_the_turn() -> None:
    still_calling = Script.from_messages(
        [
            Message.assistant("x"),
            Message.tool_call("python", "print(9)", channel="analysis", constrain=None),
        ]
    )
    forced = Script(still_calling.tokens[3:])  # the forced final header is in the prompt
    generator = ScriptedGenerator([python_call("print(1)"), forced])
    with ToolRegistry.from_flags(python=True) as tools:
        result, _ = run(generator, "Go", tools=tools, max_tool_rounds=0)
    assert result.finish_reason is FinishReason.TOOL_LIMIT
    assert result.tool_rounds == 0


def test_function_tools_are_returned_to_the_caller_and_the_turn_continues_with_results() -> None:
    weather = FunctionTool(
        "get_weather",
        "Current weather",
        {"type": "object", "properties": {"city": {"type": "string"}}},
    )
    generator = ScriptedGenerator(
        [Script.harmony(call=("functions.get_weather", '{"city": "Paris"}'))]
    )
    with ToolRegistry.from_flags(python=True) as tools:
        result, events = run(generator, "Weather?", tools=tools, function_tools=[weather])
    assert "type get_weather" in generator.calls[0].prompt_text
    assert result.finish_reason is FinishReason.TOOL_CALLS
    assert [c.recipient for c in result.tool_calls] == ["functions.get_weather"]
    assert next(e for e in events if isinstance(e, ToolCallEvent)).handled is False
    assert not any(isinstance(e, ToolResultEvent) for e in events)

    # the caller runs the function and continues the same turn
    turn = Turn(
        result.turn.user,
        (*result.turn.replies, Message.tool_result("get_weather", '{"temp": 21}')),
    )
    generator.add(Script.harmony("21 degrees."))
    done, _ = run(generator, turn, function_tools=[weather])
    assert "functions.get_weather to=assistant" in generator.calls[1].prompt_text
    assert done.final == "21 degrees."
    assert not done.user_is_new
    assert [m.text for m in done.new_replies] == ["21 degrees."]


def test_the_native_adapter_gets_no_tools_and_reads_plain_text() -> None:
    generator = ScriptedGenerator([Script.text("Hello there.")], is_harmony=False)
    with ToolRegistry.from_flags(python=True) as tools:
        result, events = run(
            generator, "Hi", tools=tools, config=PromptConfig(developer_instructions="Be nice.")
        )
    prompt = generator.calls[0].prompt_text
    assert prompt.startswith("<|start|>system<|message|>Be nice.<|end|><|start|>user<|message|>Hi")
    assert "python" not in prompt
    assert result.final == "Hello there."
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == "Hello there."


# -- context ---------------------------------------------------------------------------------------


def long_history(n: int) -> tuple[Turn, ...]:
    return scripted_turns(
        [(f"question {i} " + "blah " * 30, f"answer {i} " + "yada " * 30) for i in range(n)]
    )


def test_old_turns_are_dropped_to_fit_the_context_but_the_prefix_stays() -> None:
    history = long_history(6)
    config = PromptConfig(
        max_context_tokens=400,
        max_context_tokens_margin=50,
        developer_instructions="Stay on topic.",
        example_dialogues=[
            [
                {"role": "user", "content": "EXAMPLE-Q"},
                {"role": "assistant", "content": "EXAMPLE-A"},
            ]
        ],
    )
    generator = ScriptedGenerator([Script.harmony("ok")])
    result, events = run(generator, "newest", history=history, config=config)
    prompt = generator.calls[0]
    assert len(prompt.prompt_tokens) <= 350
    trimmed = next(e for e in events if isinstance(e, ContextTrimmed))
    assert trimmed.dropped_turns == result.dropped_turns > 0
    assert trimmed.limit == 350
    kept = len(history) - result.dropped_turns
    text = prompt.prompt_text
    assert "Stay on topic." in text
    assert "EXAMPLE-Q" in text
    assert "newest" in text
    assert "question 0 " not in text
    assert f"question {len(history) - kept} " in text
    # the most turns that fit: one more would not
    adapter = HarmonyAdapter()
    longer = adapter.render([*history[-kept - 1 :], Turn(Message.user("newest"))], config=config)
    assert len(longer) > 350
    assert prompt.max_tokens <= 400 - len(prompt.prompt_tokens)


def test_a_turn_too_long_for_the_context_is_refused_before_generating() -> None:
    generator = ScriptedGenerator([Script.harmony("never")])
    config = PromptConfig(max_context_tokens=200, max_context_tokens_margin=50)
    with pytest.raises(
        ContextOverflowError, match=r"max_context_tokens 200 - max_context_tokens_margin 50"
    ) as info:
        run(generator, "word " * 300, history=long_history(2), config=config)
    assert info.value.prompt_tokens > 150
    assert generator.calls == []


def test_the_models_context_length_is_the_default_window() -> None:
    generator = ScriptedGenerator([Script.harmony("ok")], context_length=300)
    result, _ = run(
        generator, "newest", history=long_history(4), config=PromptConfig(), context_length=300
    )
    assert result.dropped_turns > 0
    # the config's 512-token margin does not fit a 300-token window, so none is kept
    assert 250 < len(generator.calls[0].prompt_tokens) <= 300


def test_stream_chat_turn_is_lazy_and_ends_with_turn_done() -> None:
    generator = ScriptedGenerator([Script.harmony("Hi.")])
    stream = stream_chat_turn(generator, adapter_for(generator), "Hello", config=PromptConfig())
    assert generator.calls == []
    events = list(stream)
    assert isinstance(events[-1], TurnDone)
    assert sum(isinstance(e, TurnDone) for e in events) == 1


def test_as_turn_accepts_text_messages_and_turns() -> None:
    assert as_turn("hi") == Turn(Message.user("hi"))
    assert as_turn(Message.user("hi")) == Turn(Message.user("hi"))
    going_on = Turn(Message.user("hi"), (Message.assistant("x"),))
    assert as_turn(going_on) is going_on
    with pytest.raises(ValueError, match="a turn starts with a user message"):
        as_turn(Message.assistant("no"))
    with pytest.raises(TypeError, match="got int"):
        as_turn(3)  # type: ignore[arg-type]
