"""The real chat app on a pipe input and a dummy output: commands, input editing, history,
cancellation, saving and resuming. The model is the controller's FakeBackend (or a
LocalBackend on a ScriptedGenerator where the turn logic matters)."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.history import FileHistory

from mlx_harmony.chat_history import load_chat, new_chat, save_chat
from mlx_harmony.cli.chat import DEMO_NOTE, main
from mlx_harmony.cli.launch import CliError
from mlx_harmony.cli.render import HIDDEN_THINKING, THINKING_HEADING
from mlx_harmony.cli.testing import CTRL_D, ENTER, ESC_ENTER, TAB, UP, Shows, run_chat
from mlx_harmony.controller import FinishReason, LocalBackend
from mlx_harmony.controller.testing import FakeBackend, FakeReply, Script, ScriptedGenerator

QUIT = "\\quit" + ENTER


def user_texts(backend: FakeBackend) -> list[str]:
    return [r.turn.user.text for r in backend.requests]


# -- commands and input -------------------------------------------------------------------------


def test_a_message_streams_thinking_then_the_answer() -> None:
    backend = FakeBackend([FakeReply(answer="Hello **friend**.", thinking="Greet back.")])
    run = run_chat([], "Hi!" + ENTER + QUIT, backend=backend)
    assert run.status == 0
    screen = run.screen
    assert screen.index(THINKING_HEADING) < screen.index("Greet back.") < screen.index("Hello")
    assert "Hello friend." in screen  # markdown rendered
    assert user_texts(backend) == ["Hi!"]


def test_commands_change_the_session_and_quit_ends_it() -> None:
    backend = FakeBackend(["ok"])
    keys = (
        "\\help"
        + ENTER
        + "\\set temperature 0.25"
        + ENTER
        + "\\reasoning high"
        + ENTER
        + "\\show temperature"
        + ENTER
        + "\\frobnicate"
        + ENTER
        + "Go"
        + ENTER
        + QUIT
        + "never sent"
        + ENTER
    )
    run = run_chat([], keys, backend=backend)
    assert run.status == 0
    assert "\\retry" in run.screen  # \help lists the commands
    assert "temperature = 0.25" in run.screen
    assert "Unknown command \\frobnicate" in run.screen
    [request] = backend.requests
    assert request.config.setting("temperature") == 0.25
    assert request.config.reasoning_effort == "high"
    assert user_texts(backend) == ["Go"]


def test_ctrl_d_leaves_and_ctrl_c_at_the_prompt_clears_the_line() -> None:
    backend = FakeBackend(["ok"])
    run = run_chat([], "typo" + "\x03" + "Real question" + ENTER + CTRL_D, backend=backend)
    assert run.status == 0
    assert user_texts(backend) == ["Real question"]


def test_enter_sends_and_esc_enter_adds_a_line() -> None:
    backend = FakeBackend(["ok"])
    run_chat([], "line one" + ESC_ENTER + "line two" + ENTER + QUIT, backend=backend)
    assert user_texts(backend) == ["line one\nline two"]


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_tab_completes_commands() -> None:
    backend = FakeBackend()
    keys = [
        "\\reas",
        TAB,
        Shows("\\reasoning"),
        " hi",
        TAB,
        Shows("\\reasoning high"),
        ENTER + QUIT,
    ]
    run = run_chat([], keys, backend=backend)
    assert run.frontend.config.reasoning_effort == "high"


def test_input_history_persists_across_sessions(tmp_path: Path) -> None:
    path = tmp_path / "history"
    first = FakeBackend(["one"])
    run_chat([], "What is MLX?" + ENTER + QUIT, backend=first, history=FileHistory(str(path)))
    second = FakeBackend(["two"])
    # Up recalls the last line (\quit), Up again the question before it.
    run_chat([], UP + UP + ENTER + QUIT, backend=second, history=FileHistory(str(path)))
    assert user_texts(second) == ["What is MLX?"]


def test_the_toolbar_shows_model_reasoning_context_and_speed() -> None:
    run = run_chat(["--reasoning-effort", "low"], "Hi" + ENTER + QUIT, backend=FakeBackend(["Yo"]))
    bar = run.session.toolbar()
    assert "demo model" in bar
    assert "reasoning low" in bar
    assert "context" in bar
    assert "tok/s" not in bar
    assert run.session.ready


def test_a_failing_turn_is_reported_and_the_chat_goes_on() -> None:
    backend = FakeBackend([FakeReply(error=RuntimeError("the GPU caught fire")), "Fine now."])
    run = run_chat([], "One" + ENTER + "Two" + ENTER + QUIT, backend=backend)
    assert "Error: the GPU caught fire" in run.screen
    assert "Fine now." in run.screen
    assert len(run.frontend.turns) == 1


def test_a_model_that_fails_to_load_ends_the_chat_with_status_1() -> None:
    def broken(launch: Any) -> Any:
        raise CliError("model folder /nowhere does not exist")

    run = run_chat([], "Hi" + ENTER + QUIT, backend=broken)
    assert run.status == 1
    assert "Cannot start the chat: model folder /nowhere does not exist" in run.screen


def test_the_greeting_and_the_demo_note_come_first(write_json: Any) -> None:
    config = write_json("config.json", {"assistant_greeting": "Hello, I am **Harmony**."})
    run = run_chat(["--prompt-config", str(config)], QUIT)
    assert run.screen.index("demo model") < run.screen.index("Hello, I am Harmony.")
    assert " ".join(DEMO_NOTE.split()[:6]) in " ".join(run.screen.split())


def test_a_resumed_chat_does_not_greet_again(write_json: Any, tmp_path: Path) -> None:
    config = write_json("config.json", {"assistant_greeting": "Welcome!"})
    chat_file = tmp_path / "chat.json"
    argv = ["--prompt-config", str(config), "--chat", str(chat_file)]
    first = run_chat(argv, "Hi" + ENTER + QUIT, backend=FakeBackend(["Hello."]))
    assert "Welcome!" in first.screen
    again = run_chat(argv, QUIT)
    assert "Welcome!" not in again.screen
    assert "Resumed 1 turn" in again.screen


def test_hide_thinking_and_no_markdown() -> None:
    reply = FakeReply(answer="Some **bold** text.", thinking="secret plan")
    run = run_chat(
        ["--hide-thinking", "--no-markdown"], "Hi" + ENTER + QUIT, backend=FakeBackend([reply])
    )
    assert HIDDEN_THINKING in run.screen
    assert "secret plan" not in run.screen
    assert "Some **bold** text." in run.screen


# -- cancellation -------------------------------------------------------------------------------


class InterruptingGenerator(ScriptedGenerator):
    """Sends SIGINT to the process after a few tokens, as Ctrl-C in a terminal does, then
    waits until the chat has set the generation's cancel flag."""

    def __init__(self, *scripts: Script, after: int = 20, presses: int = 1) -> None:
        super().__init__(scripts)
        self.after = after
        self.presses = presses
        self.cancel_seen = False

    def stream(self, *, cancel: Any = None, **kwargs: Any) -> Any:
        events = super().stream(cancel=cancel, **kwargs)

        def run() -> Any:
            for i, event in enumerate(events):
                yield event
                if i == self.after and self.calls and len(self.calls) == 1:
                    for _ in range(self.presses):  # a generation slow to stop: more presses
                        signal.raise_signal(signal.SIGINT)
                        deadline = time.monotonic() + 5
                        while not cancel.is_set() and time.monotonic() < deadline:
                            time.sleep(0.01)
                        time.sleep(0.3)
                    self.cancel_seen = cancel.is_set()

        return run()


def test_ctrl_c_cancels_the_generation_and_keeps_the_chat(tmp_path: Path) -> None:
    story = " ".join(f"word{i}" for i in range(300))
    generator = InterruptingGenerator(
        Script.harmony(story, analysis="A story."), Script.harmony("Sure, here it is.")
    )
    backend = LocalBackend(generator)
    chat_file = tmp_path / "chat.json"
    keys = "Tell me a story" + ENTER + "Something short" + ENTER + QUIT
    run = run_chat(["--chat", str(chat_file)], keys, backend=backend)
    assert threading.current_thread() is threading.main_thread()
    assert generator.cancel_seen
    assert run.status == 0
    assert "⏹ cancelled" in run.screen
    assert "word0" in run.screen
    assert "word299" not in run.screen
    assert "Sure, here it is." in run.screen  # the chat went on
    assert len(run.frontend.turns) == 2
    log = load_chat(chat_file)
    assert [m.content for m in log.messages if m.role == "user"] == [
        "Tell me a story",
        "Something short",
    ]
    first_answer = next(m for m in log.messages if m.role == "assistant" and m.channel == "final")
    assert first_answer.model_dump().get("finish_reason") == FinishReason.CANCELLED.value
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


# -- saving and resuming ------------------------------------------------------------------------


def test_chat_saves_after_every_exchange_and_resumes_with_its_model(tmp_path: Path) -> None:
    chat_file = tmp_path / "chat.json"
    model = tmp_path / "my-model"
    model.mkdir()
    first = FakeBackend([FakeReply(answer="Paris.", thinking="Easy.")])
    run = run_chat(
        ["--chat", str(chat_file), "--model", str(model), "--temperature", "0.3"],
        "Capital of France?" + ENTER + CTRL_D,
        backend=first,
    )
    assert run.status == 0
    assert f"Chat saved in {chat_file}." in run.screen
    log = load_chat(chat_file)  # valid chat-log v3
    assert log.schema_version == 3
    assert [(m.role, m.content) for m in log.messages] == [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
    ]
    assert log.messages[1].analysis == "Easy."
    assert log.header.model_path == str(model.resolve())
    assert log.header.hyperparameters["temperature"] == 0.3

    # Resume: no model flag, so the chat's model; its last-used temperature; its history.
    second = FakeBackend(["Rome."])
    run = run_chat(["--chat", str(chat_file)], "And Italy?" + ENTER + QUIT, backend=second)
    assert "Resumed 1 turn from" in run.screen
    assert run.calls[0]["location"].path == model.resolve()
    [request] = second.requests
    assert request.config.setting("temperature") == 0.3
    assert [t.user.text for t in request.history] == ["Capital of France?"]
    log = load_chat(chat_file)
    assert [m.content for m in log.messages if m.role == "user"] == [
        "Capital of France?",
        "And Italy?",
    ]


def test_resuming_a_chat_that_names_no_model_fails_clearly(tmp_path: Path) -> None:
    chat_file = tmp_path / "old.json"
    save_chat(new_chat(), chat_file)
    with pytest.raises(CliError, match=r"old\.json does not name its model.*--model"):
        run_chat(["--chat", str(chat_file)], QUIT)


def test_main_reports_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chat_file = tmp_path / "old.json"
    save_chat(new_chat(), chat_file)
    assert main(["--chat", str(chat_file)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlx-harmony-chat: error: ")
    assert err.count("\n") == 1
    assert main(["--top-p", "7"]) == 2
    assert main([]) == 1  # pytest's stdin is not a terminal
    assert "the chat needs a terminal" in capsys.readouterr().err


def test_save_conversation_writes_after_each_exchange_and_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "new.json"
    run_chat(
        ["--save-conversation", str(target)],
        "One" + ENTER + "Two" + ENTER + QUIT,
        backend=FakeBackend(["1", "2"]),
    )
    assert [m.content for m in load_chat(target).messages] == ["One", "1", "Two", "2"]
    with pytest.raises(CliError, match="exists and would be overwritten"):
        run_chat(["--save-conversation", str(target)], QUIT)


def test_load_conversation_continues_a_chat_and_save_writes_it_back(tmp_path: Path) -> None:
    source = tmp_path / "old.json"
    log = new_chat(model_path="some/model", hyperparameters={"top_k": 7})
    log.append_user("Hello")
    log.append_assistant("Hi!", hyperparameters={"top_k": 7})
    save_chat(log, source)
    model = tmp_path / "model"
    model.mkdir()
    backend = FakeBackend(["Sure."])
    keys = "Continue" + ENTER + "\\save" + ENTER + QUIT
    run = run_chat(
        ["--load-conversation", str(source), "--model", str(model)], keys, backend=backend
    )
    assert backend.requests[0].config.setting("top_k") == 7  # the chat's last-used value
    assert [t.user.text for t in backend.requests[0].history] == ["Hello"]
    assert "Saved 4 messages to" in run.screen
    saved = load_chat(source)
    assert [m.content for m in saved.messages] == ["Hello", "Hi!", "Continue", "Sure."]
    assert saved.header.model_path == str(model.resolve())  # the model now in use


def test_load_conversation_alone_does_not_autosave(tmp_path: Path) -> None:
    source = tmp_path / "old.json"
    log = new_chat(model_path=str(tmp_path))
    log.append_user("Hello")
    log.append_assistant("Hi!")
    save_chat(log, source)
    before = source.read_bytes()
    run_chat(
        ["--load-conversation", str(source)], "More" + ENTER + QUIT, backend=FakeBackend(["x"])
    )
    assert source.read_bytes() == before


def test_a_missing_load_conversation_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="no such file"):
        run_chat(["--load-conversation", str(tmp_path / "nope.json")], QUIT)


def test_a_broken_chat_file_is_reported_not_overwritten(tmp_path: Path) -> None:
    chat_file = tmp_path / "chat.json"
    chat_file.write_text('{"schema_version": 2, "header": ')
    with pytest.raises(CliError, match="cannot load the chat"):
        run_chat(["--chat", str(chat_file)], QUIT)
    assert chat_file.read_text() == '{"schema_version": 2, "header": '
    with pytest.raises(CliError, match=r"cannot load the chat: .*Is a directory"):
        run_chat(["--chat", str(tmp_path)], QUIT)  # a folder


def test_clear_and_undo_keep_the_saved_chat_in_step(tmp_path: Path) -> None:
    chat_file = tmp_path / "chat.json"
    keys = "One" + ENTER + "Two" + ENTER + "\\undo" + ENTER + QUIT
    run_chat(["--chat", str(chat_file)], keys, backend=FakeBackend(["1", "2"]))
    assert [m.content for m in load_chat(chat_file).branch()] == ["One", "1"]
    data = json.loads(chat_file.read_text())
    assert data["schema_version"] == 3


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_second_ctrl_c_warns_and_a_third_leaves() -> None:
    story = " ".join(f"word{i}" for i in range(300))
    generator = InterruptingGenerator(Script.harmony(story), presses=2)
    run = run_chat([], "Story" + ENTER + QUIT, backend=LocalBackend(generator))
    assert "Stopping… (Ctrl-C again to quit)" in run.screen
    assert "⏹ cancelled" in run.screen
    assert run.status == 0

    generator = InterruptingGenerator(Script.harmony(story), presses=3)
    with pytest.raises(KeyboardInterrupt):
        run_chat([], "Story" + ENTER + QUIT, backend=LocalBackend(generator))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_failed_save_keeps_the_chat_so_it_can_be_saved_elsewhere(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the chat's folder should be")
    other = tmp_path / "rescued.json"
    keys = "Hello" + ENTER + f"\\save {other}" + ENTER + QUIT
    run = run_chat(
        ["--save-conversation", str(blocker / "chat.json")], keys, backend=FakeBackend(["Hi."])
    )
    assert "Error:" in run.screen  # the autosave failed, said so, and the chat went on
    assert "\\save PATH writes it elsewhere" in run.screen
    assert [m.content for m in load_chat(other).messages] == ["Hello", "Hi."]
