"""Drive the real chat in tests: typed keys in through a pipe, the screen out as text.

    result = run_chat(["--temperature", "0.5"], "Hi!\r\\quit\r", backend=FakeBackend(["Hello."]))
    assert "Hello." in result.screen

The session is the one `mlx-harmony-chat` runs (`create_chat_session`), on prompt-toolkit's
``create_pipe_input()`` and ``DummyOutput()`` and a rich console writing to a string; only the
backend is replaced (the controller's `FakeBackend`, or a `LocalBackend` on a scripted
generator).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prompt_toolkit.history import History, InMemoryHistory
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from mlx_harmony.controller import ChatBackend
from mlx_harmony.controller.testing import FakeBackend

from .chat import create_chat_session
from .frontend import ChatFrontend
from .launch import Launch, ModelLocation
from .session import ChatSession

__all__ = ["CTRL_D", "ENTER", "ESC_ENTER", "TAB", "UP", "ChatRun", "Shows", "run_chat"]

ENTER = "\r"
ESC_ENTER = "\x1b\r"
CTRL_D = "\x04"
UP = "\x1b[A"
TAB = "\t"


@dataclass(frozen=True)
class Shows:
    """A step in a list of key chunks: wait until the input line reads `text` (completion runs
    on the event loop, so a fixed pause between keys loses the race on a busy machine)."""

    text: str
    timeout_s: float = 20.0


@dataclass
class ChatRun:
    """What one run of the chat did."""

    status: int
    screen: str
    session: ChatSession
    calls: list[dict[str, Any]] = field(default_factory=list)

    @property
    def frontend(self) -> ChatFrontend | None:
        return self.session.frontend


def run_chat(
    argv: Sequence[str],
    keys: str | Sequence[str | Shows],
    *,
    backend: ChatBackend | Callable[[Launch], ChatBackend] | None = None,
    history: History | None = None,
    width: int = 100,
    pause: float = 0.3,
) -> ChatRun:
    """Run ``mlx-harmony-chat argv`` with `keys` typed, on `backend` (a `FakeBackend` with no
    replies unless given, or a function of the `Launch` that builds one). `keys` should end
    the chat (``\\quit`` or Ctrl-D). A list of key chunks is typed one chunk every `pause`
    seconds; a `Shows` in it waits for the input line to read its text first."""
    backend = backend if backend is not None else FakeBackend()
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    calls: list[dict[str, Any]] = []

    def factory(
        launch: Launch, location: ModelLocation, *, on_close: Callable[..., Any]
    ) -> ChatBackend:
        calls.append({"launch": launch, "location": location, "on_close": on_close})
        return backend(launch) if callable(backend) else backend

    chunks = [keys] if isinstance(keys, str) else list(keys)
    failures: list[AssertionError] = []
    with create_pipe_input() as pipe:
        first = chunks[0]
        if isinstance(first, str):  # typed ahead: the chat reads it as soon as it starts
            pipe.send_text(first)
            chunks = chunks[1:]

        def type_the_rest() -> None:
            for chunk in chunks:
                if isinstance(chunk, Shows):
                    try:
                        _wait_for_line(session, chunk)
                    except AssertionError as failure:
                        failures.append(failure)
                        pipe.send_text("\x03" + CTRL_D)  # clear the line and leave
                        return
                    continue
                time.sleep(pause)
                pipe.send_text(chunk)

        typist = threading.Thread(target=type_the_rest, daemon=True)
        session = create_chat_session(
            list(argv),
            input=pipe,
            output=DummyOutput(),
            console=console,
            history=history if history is not None else InMemoryHistory(),
            backend_factory=factory,
        )
        typist.start()
        status = session.run()
        typist.join()
    if failures:
        raise failures[0]
    return ChatRun(status, buffer.getvalue(), session, calls)


def _wait_for_line(session: ChatSession, shows: Shows) -> None:
    deadline = time.monotonic() + shows.timeout_s
    line = session.prompt_session.default_buffer
    while line.text != shows.text:
        if time.monotonic() > deadline:
            raise AssertionError(f"the input line reads {line.text!r}, not {shows.text!r}")
        time.sleep(0.02)
