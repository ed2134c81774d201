"""The front-end loop: lines in, events out, every command, on fake and scripted backends."""

from __future__ import annotations

import json

import pytest

from mlx_harmony.chat_history import load_chat, new_chat, save_chat
from mlx_harmony.cli.frontend import ChatFrontend
from mlx_harmony.controller import (
    AnswerDelta,
    ChatBackend,
    CommandOutput,
    ContextBudget,
    ContextOverflowError,
    FinishReason,
    LocalBackend,
    PromptConfig,
    Quit,
    RetryEvent,
    ThinkingDelta,
    TurnDone,
)
from mlx_harmony.controller.testing import FakeBackend, FakeReply, Script, ScriptedGenerator
from mlx_harmony.harmony_format import Message


def outputs(events) -> list[CommandOutput]:
    return [e for e in events if isinstance(e, CommandOutput)]


def answer(events) -> str:
    return "".join(e.text for e in events if isinstance(e, AnswerDelta))


def test_the_backends_implement_the_protocol() -> None:
    assert isinstance(FakeBackend(), ChatBackend)
    assert isinstance(LocalBackend(ScriptedGenerator()), ChatBackend)


def test_a_message_runs_a_turn_and_is_recorded() -> None:
    backend = FakeBackend([FakeReply(answer="Hello there.", thinking="Be kind.")])
    front = ChatFrontend(backend, config=PromptConfig(temperature=0.4))
    events = list(front.handle("Hi!"))
    assert isinstance(events[-1], TurnDone)
    assert answer(events) == "Hello there."
    assert "".join(e.text for e in events if isinstance(e, ThinkingDelta)) == "Be kind."
    assert len(front.turns) == 1
    assert front.turns[0].user == Message.user("Hi!")
    assert [(m.role, m.content) for m in front.log.branch()] == [
        ("user", "Hi!"),
        ("assistant", "Hello there."),
    ]
    assert front.log.messages[1].analysis == "Be kind."
    assert backend.requests[0].config.setting("temperature") == 0.4
    # the next message sees the history
    backend.add("Second.")
    list(front.handle("Again"))
    assert backend.requests[1].history == front.turns[:1]


def test_blank_lines_do_nothing_and_double_backslash_lines_are_messages() -> None:
    backend = FakeBackend(["ok"])
    front = ChatFrontend(backend)
    assert list(front.handle("   ")) == []
    list(front.handle("\\\\frac is latex"))
    assert backend.requests[0].turn.user.text == "\\\\frac is latex"


def test_help_show_set_and_reasoning_change_the_next_request() -> None:
    backend = FakeBackend(["a"])
    front = ChatFrontend(backend)
    [help_out] = outputs(front.handle("\\help"))
    assert "\\retry" in help_out.text
    assert not help_out.error
    [out] = outputs(front.handle("\\set temperature 0.25"))
    assert out.text == "temperature = 0.25"
    assert not out.error
    [out] = outputs(front.handle("\\reasoning high"))
    assert "high" in out.text
    [shown] = outputs(front.handle("\\show temperature"))
    assert shown.text == "temperature = 0.25"
    [bad] = outputs(front.handle("\\set top_p 0"))
    assert bad.error
    assert "top_p must be in (0, 1]" in bad.text
    list(front.handle("go"))
    config = backend.requests[0].config
    assert config.setting("temperature") == 0.25
    assert config.reasoning_effort == "high"
    assert front.log.header.hyperparameters["temperature"] == 0.25


def test_unknown_commands_are_errors_that_suggest_the_right_one() -> None:
    front = ChatFrontend(FakeBackend())
    [out] = outputs(front.handle("\\retyr"))
    assert out.error
    assert "\\retry" in out.text


def test_undo_drops_the_last_turn_from_the_session_and_the_active_branch() -> None:
    front = ChatFrontend(FakeBackend(["one", "two"]))
    list(front.handle("first"))
    list(front.handle("second"))
    [out] = outputs(front.handle("\\undo"))
    assert not out.error
    assert [t.user.text for t in front.turns] == ["first"]
    assert [m.content for m in front.log.branch()] == ["first", "one"]
    list(front.handle("\\undo"))
    [empty] = outputs(front.handle("\\undo"))
    assert empty.error
    assert front.turns == ()
    assert front.log.branch() == []
    assert len(front.log.messages) == 4  # undone turns stay in the file, on their own branch


def test_retry_generates_the_last_reply_again_in_place() -> None:
    backend = FakeBackend(["one", "first try", "second try"])
    front = ChatFrontend(backend)
    list(front.handle("q1"))
    list(front.handle("q2"))
    events = list(front.handle("\\retry"))
    assert outputs(events)[0].text == "Generating the last reply again."
    assert answer(events) == "second try"
    request = backend.requests[-1]
    assert request.turn.user.text == "q2"
    assert request.turn.replies == ()
    assert [t.user.text for t in request.history] == ["q1"]
    assert [m.content for m in front.log.branch()] == ["q1", "one", "q2", "second try"]
    assert front.turns[-1].replies[-1].text == "second try"


def test_a_retry_that_fails_keeps_the_old_reply() -> None:
    error = ContextOverflowError(500, ContextBudget(400, 10))
    front = ChatFrontend(FakeBackend(["kept", FakeReply(error=error)]))
    list(front.handle("a question"))  # (a lone "q" leaves the chat, as in mlx-harmony 0.4)
    events = list(front.handle("\\retry"))
    assert outputs(events)[-1].error
    assert "500 tokens" in outputs(events)[-1].text
    assert front.turns[-1].replies[-1].text == "kept"
    assert [m.content for m in front.log.branch()] == ["a question", "kept"]


def test_a_message_too_long_for_the_context_is_an_error_and_changes_nothing() -> None:
    error = ContextOverflowError(900, ContextBudget(400, 10))
    front = ChatFrontend(FakeBackend([FakeReply(error=error)]))
    events = list(front.handle("very long"))
    assert len(events) == 1
    assert events[0].error
    assert "900 tokens" in events[0].text
    assert front.turns == ()
    assert front.log.messages == []


def test_save_and_load_round_trip(tmp_path) -> None:
    front = ChatFrontend(FakeBackend(["Hello."]), model_path="my-model")
    [no_path] = outputs(front.handle("\\save"))
    assert no_path.error
    assert "\\save PATH" in no_path.text
    list(front.handle("Hi"))
    path = tmp_path / "sub" / "chat.json"
    [saved] = outputs(front.handle(f"\\save {path}"))
    assert not saved.error
    assert str(path) in saved.text
    assert json.loads(path.read_text())["schema_version"] == 3
    assert load_chat(path).header.model_path == "my-model"

    backend = FakeBackend(["Welcome back."])
    other = ChatFrontend(backend)
    [loaded] = outputs(other.handle(f"\\load {path}"))
    assert not loaded.error
    assert "1 turn" in loaded.text
    assert backend.resets == 1
    assert [t.user.text for t in other.turns] == ["Hi"]
    list(other.handle("More"))
    assert [t.user.text for t in backend.requests[0].history] == ["Hi"]
    # \save with no path now writes to the loaded file
    outputs(other.handle("\\save"))
    assert [m.content for m in load_chat(path).branch()] == [
        "Hi",
        "Hello.",
        "More",
        "Welcome back.",
    ]


def test_load_errors_name_the_file(tmp_path) -> None:
    front = ChatFrontend(FakeBackend())
    [missing] = outputs(front.handle(f"\\load {tmp_path / 'nope.json'}"))
    assert missing.error
    assert "nope.json" in missing.text
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    [broken] = outputs(front.handle(f"\\load {bad}"))
    assert broken.error
    assert "bad.json" in broken.text
    [usage] = outputs(front.handle("\\load"))
    assert usage.error
    assert "\\load PATH" in usage.text


def test_clear_starts_a_new_log_and_resets_the_backend() -> None:
    backend = FakeBackend(["a"])
    front = ChatFrontend(backend)
    list(front.handle("x"))
    old_id = front.log.header.id
    [out] = outputs(front.handle("\\clear"))
    assert out.text == "Conversation cleared."
    assert front.turns == ()
    assert front.log.messages == []
    assert front.log.header.id != old_id
    assert backend.resets == 1


def test_tokens_reports_the_context_in_use() -> None:
    front = ChatFrontend(
        FakeBackend(["a"]),
        config=PromptConfig(max_context_tokens=1000, max_context_tokens_margin=100),
    )
    [before] = outputs(front.handle("\\tokens"))
    list(front.handle("hello"))
    [after] = outputs(front.handle("\\tokens"))
    used = [int(out.text.split()[1]) for out in (before, after)]
    assert used[0] < used[1]
    assert "of 1000 tokens" in after.text
    assert "past 900" in after.text


def test_quit_ends_run_and_later_lines_are_not_read() -> None:
    backend = FakeBackend(["a"])
    front = ChatFrontend(backend)
    read: list[str] = []

    def lines():
        for line in ["hello", "\\quit", "never"]:
            read.append(line)
            yield line

    events = list(front.run(lines()))
    assert isinstance(events[-1], Quit)
    assert read == ["hello", "\\quit"]
    assert front.quit
    assert len(backend.requests) == 1
    front2 = ChatFrontend(FakeBackend())
    assert isinstance(list(front2.handle("\\exit"))[-1], Quit)


def test_autosave_writes_after_every_turn(tmp_path) -> None:
    path = tmp_path / "auto.json"
    front = ChatFrontend(FakeBackend(["a", "b"]), chat_path=path, autosave=True)
    list(front.handle("1"))
    assert len(load_chat(path).messages) == 2
    list(front.handle("2"))
    list(front.handle("\\undo"))
    assert [m.content for m in load_chat(path).branch()] == ["1", "a"]


def test_a_saved_log_continues(tmp_path) -> None:
    log = new_chat()
    log.append_user("old question")
    log.append_assistant("old answer")
    path = tmp_path / "old.json"
    save_chat(log, path)
    backend = FakeBackend(["new answer"])
    front = ChatFrontend(backend, log=load_chat(path), chat_path=path)
    list(front.handle("new question"))
    assert backend.requests[0].history[0].replies[-1].text == "old answer"
    assert len(front.log.messages) == 4


def test_greeting_comes_from_the_config() -> None:
    assert (
        ChatFrontend(FakeBackend(), config=PromptConfig(assistant_greeting="Hi!")).greeting == "Hi!"
    )


# -- the same loop on the real turn logic ----------------------------------------------------------


def test_the_loop_on_a_local_backend_with_retry_and_tokens() -> None:
    generator = ScriptedGenerator(
        [
            Script.harmony("one two three four five six", stop=False),
            Script.harmony("Short."),
            Script.harmony("Again, short."),
        ]
    )
    backend = LocalBackend(generator, context_length=4096)
    front = ChatFrontend(backend, config=PromptConfig(max_tokens=8))
    events = list(front.handle("Talk"))
    assert [type(e) for e in events].count(RetryEvent) == 1
    done = events[-1]
    assert isinstance(done, TurnDone)
    assert done.result.final == "Short."
    assert front.log.messages[-1].retries[0]["reason"] == "length"
    [tokens] = outputs(front.handle("\\tokens"))
    assert "of 4096 tokens" in tokens.text
    events = list(front.handle("\\retry"))
    assert answer(events) == "Again, short."
    assert generator.calls[-1].max_tokens == 8  # the user's setting, not the retry's
    assert [m.content for m in front.log.branch()] == ["Talk", "Again, short."]
    list(front.handle("\\clear"))
    generator.add(Script.harmony("Fresh."))
    list(front.handle("New topic"))
    assert generator.cache_resets == 0
    # the new conversation still reuses the cached system prefix
    assert front.log.messages[-1].timing.reused_prompt_tokens > 0


def test_function_calls_end_the_turn_in_the_loop() -> None:
    generator = ScriptedGenerator([Script.harmony(call=("functions.now", "{}"))])
    front = ChatFrontend(LocalBackend(generator))
    done = list(front.handle("time?"))[-1]
    assert isinstance(done, TurnDone)
    assert done.result.finish_reason is FinishReason.TOOL_CALLS
    assert front.log.messages[-1].recipient == "functions.now"


@pytest.mark.parametrize("line", ["\\save a b", "\\tokens now"])
def test_command_argument_mistakes_are_reported(line: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    front = ChatFrontend(FakeBackend())
    events = outputs(front.handle(line))
    if line.startswith("\\tokens"):
        assert events[0].error
        assert "takes no argument" in events[0].text
    else:
        assert not events[0].error  # a path with a space is a path
        assert (tmp_path / "a b").is_file()
