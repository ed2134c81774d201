"""Hostile input at the prompt: raw escape sequences, bytes that are not UTF-8, ``\\save`` onto
things that are not files. None of it crashes the chat or loses the line."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from mlx_harmony.chat_history import load_chat
from mlx_harmony.cli.chat import create_chat_session
from mlx_harmony.cli.session import valid_text
from mlx_harmony.cli.testing import ENTER, run_chat
from mlx_harmony.controller.testing import FakeBackend

QUIT = "\\quit" + ENTER


def user_texts(backend: FakeBackend) -> list[str]:
    return [r.turn.user.text for r in backend.requests]


@pytest.mark.parametrize(
    ("keys", "sent"),
    [
        ("a\x1b[31mred", "ared"),  # read as a malformed mouse report before
        ("x\x1b[1;2;3Mz", "xz"),
        ("\x1b[200~pasted \x1b[31m text\x1b[201~", "pasted \x1b[31m text"),
    ],
)
def test_raw_escape_sequences_keep_the_line(keys: str, sent: str) -> None:
    backend = FakeBackend(["ok"])
    run = run_chat([], keys + ENTER + QUIT, backend=backend)
    assert run.status == 0
    assert "Unhandled exception" not in run.screen
    assert user_texts(backend) == [sent]


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    backend = FakeBackend(["ok"])
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, color_system=None, force_terminal=False)
    with create_pipe_input() as pipe:
        pipe.send_bytes(b"bad \xff\xfe bytes\r" + QUIT.encode())
        session = create_chat_session(
            [],
            input=pipe,
            output=DummyOutput(),
            console=console,
            history=InMemoryHistory(),
            backend_factory=lambda launch, location, *, on_close: backend,
        )
        assert session.run() == 0
    assert user_texts(backend) == ["bad \ufffd\ufffd bytes"]
    assert "2 characters of the input were not valid UTF-8" in buffer.getvalue()
    assert valid_text("ok \ud800") == ("ok \ufffd", 1)
    assert valid_text("fine é") == ("fine é", 0)


@pytest.mark.parametrize("kind", ["fifo", "folder", "devnull"])
def test_save_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        target = tmp_path / "pipe"
        os.mkfifo(target)
    elif kind == "folder":
        target = tmp_path / "folder"
        target.mkdir()
    else:
        target = Path(os.devnull)
    chat = tmp_path / "chat.json"
    keys = "Hello" + ENTER + f"\\save {target}" + ENTER + "Again" + ENTER + QUIT
    run = run_chat(["--chat", str(chat)], keys, backend=FakeBackend(["Hi.", "Yes."]))
    assert "it is not a regular file" in " ".join(run.screen.split())
    if kind == "fifo":
        assert target.is_fifo()  # still a pipe, not replaced by a file
    if kind == "devnull":
        assert target.is_char_device()
    # autosave stayed on the --chat file and has all of it
    assert [m.content for m in load_chat(chat).messages] == ["Hello", "Hi.", "Again", "Yes."]


def test_save_path_says_that_autosave_moves(tmp_path: Path) -> None:
    chat, other = tmp_path / "chat.json", tmp_path / "other.json"
    keys = "Hello" + ENTER + f"\\save {other}" + ENTER + "Again" + ENTER + QUIT
    run = run_chat(["--chat", str(chat)], keys, backend=FakeBackend(["Hi.", "Yes."]))
    screen = "".join(run.screen.split())  # long paths wrap anywhere
    assert f"Autosavenowwritesto{other}(nolongerto{chat})." in screen
    assert len(load_chat(other).messages) == 4
    assert len(load_chat(chat).messages) == 2
