"""Turns recorded in chat-history v2 logs, saved, loaded and continued."""

from __future__ import annotations

from mlx_harmony.chat_history import check_chat, load_chat, new_chat, save_chat
from mlx_harmony.controller import (
    PromptConfig,
    ToolRegistry,
    Turn,
    adapter_for,
    drop_last_turn,
    run_chat_turn,
    turns_from_log,
)
from mlx_harmony.controller.testing import Script, ScriptedGenerator
from mlx_harmony.harmony_format import RETURN, Message, get_encoding


def test_a_turn_with_a_tool_round_and_a_retry_is_saved_and_reloaded(tmp_path) -> None:
    generator = ScriptedGenerator(
        [
            Script.harmony(
                analysis="Need to compute.",
                call=("python", "print(2 ** 10)"),
                call_channel="analysis",
                constrain=None,
            ),
            Script.harmony(analysis="The tool said 1024."),  # no final: retried
            Script((*get_encoding().encode("It is 1024."), RETURN)),
            Script.harmony("Hello again.", analysis="Greeting."),
        ]
    )
    config = PromptConfig(temperature=0.5, max_tokens=300)
    log = new_chat(model_path="demo")
    adapter = adapter_for(generator)
    with ToolRegistry.from_flags(python=True) as tools:
        first = run_chat_turn(generator, adapter, "2**10?", config=config, tools=tools, log=log)
    second = run_chat_turn(generator, adapter, "Hi", history=[first.turn], config=config, log=log)
    path = tmp_path / "chat.json"
    save_chat(log, path)
    loaded = load_chat(path)
    assert [f for f in check_chat(loaded) if f.is_error] == []

    messages = loaded.messages
    kinds = [(m.role, m.channel, m.recipient, m.name) for m in messages]
    assert kinds == [
        ("user", None, None, None),
        ("assistant", "analysis", "python", None),
        ("tool", "analysis", None, "python"),
        ("assistant", "final", None, None),
        ("user", None, None, None),
        ("assistant", "final", None, None),
    ]
    user, call, tool, answer, _, hello = messages
    assert user.content == "2**10?"  # never a retry's instruction
    assert call.content == "print(2 ** 10)"
    assert call.analysis == "Need to compute."
    assert tool.tool_call_id == call.tool_call_id is not None
    assert tool.content.strip() == "1024"
    assert answer.content == "It is 1024."
    assert answer.analysis == "The tool said 1024."
    assert answer.tool_rounds == 1
    assert answer.retries == [r.to_dict() for r in first.retries]
    assert answer.retries[0]["reason"] == "no_final"
    assert answer.timing.generation_tokens == first.completion_tokens
    assert answer.timing.reused_prompt_tokens == first.reused_prompt_tokens
    assert answer.timing.generations == 3
    # hyperparameters: full values resolve on every turn, stored once
    assert loaded.effective_hyperparameters(3)["temperature"] == 0.5
    assert loaded.effective_hyperparameters(3)["max_tokens"] == 300
    assert call.hyperparameters is not None
    assert hello.hyperparameters is None
    assert loaded.header.hyperparameters["temperature"] == 0.5
    assert hello.timing.reused_prompt_tokens == second.reused_prompt_tokens > 0
    assert getattr(hello, "retries", None) is None

    turns = turns_from_log(loaded)
    assert len(turns) == 2
    assert turns[0].user == Message.user("2**10?")
    assert [m.channel for m in turns[0].replies] == [
        "analysis",
        "analysis",
        "analysis",
        "analysis",
        "final",
    ]
    assert turns[0].replies[1].recipient == "python"
    assert turns[0].replies[2] == Message.tool_result("python", tool.content, channel="analysis")
    assert turns[1].replies[-1] == Message.assistant("Hello again.")
    # the reloaded history renders as the live one did
    live = adapter.render([first.turn, second.turn, Turn(Message.user("next"))], config=config)
    again = adapter.render([*turns, Turn(Message.user("next"))], config=config)
    assert live == again


def test_returned_function_calls_and_truncation_are_recorded() -> None:
    log = new_chat()
    generator = ScriptedGenerator(
        [
            Script.harmony(call=("functions.lookup", '{"q": "x"}')),
            Script.harmony("cut off here", stop=False),
            Script.harmony("cut again and again", stop=False),
        ]
    )
    adapter = adapter_for(generator)
    first = run_chat_turn(generator, adapter, "Look it up", config=PromptConfig(), log=log)
    assert log.messages[-1].recipient == "functions.lookup"
    assert log.messages[-1].content_type == "<|constrain|>json"
    assert log.messages[-1].finish_reason == "tool_calls"
    run_chat_turn(
        generator, adapter, "Next", history=[first.turn], config=PromptConfig(max_tokens=5), log=log
    )
    last = log.messages[-1]
    assert last.truncated is True
    assert last.finish_reason == "length"
    assert last.content == "cut again and again"
    assert [r["reason"] for r in last.retries] == ["length"]


def test_drop_last_turn_leaves_the_user_message_and_its_replies_on_a_branch() -> None:
    log = new_chat()
    log.append_user("a")
    log.append_assistant("A")
    log.append_user("b")
    log.append_assistant("B", analysis="why")
    assert drop_last_turn(log) == 2
    assert [m.content for m in log.branch()] == ["a", "A"]
    assert [m.content for m in log.messages] == ["a", "A", "b", "B"]  # kept, on a branch
    assert drop_last_turn(log) == 2
    assert log.branch() == []
    assert drop_last_turn(log) == 0


def test_greetings_and_system_messages_are_not_turns() -> None:
    log = new_chat()
    log.append_system("sys")
    log.append_assistant("Welcome!")
    log.append_user("hi")
    log.append_assistant("", channel="analysis")
    log.append_assistant("hello")
    turns = turns_from_log(log)
    assert turns == (Turn(Message.user("hi"), (Message.analysis(""), Message.assistant("hello"))),)
