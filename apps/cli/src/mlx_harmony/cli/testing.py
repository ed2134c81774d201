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

__all__ = ["CTRL_D", "ENTER", "ESC_ENTER", "TAB", "UP", "ChatRun", "run_chat"]

ENTER = "\r"
ESC_ENTER = "\x1b\r"
CTRL_D = "\x04"
UP = "\x1b[A"
TAB = "\t"


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
    keys: str | Sequence[str],
    *,
    backend: ChatBackend | Callable[[Launch], ChatBackend] | None = None,
    history: History | None = None,
    width: int = 100,
    pause: float = 0.3,
) -> ChatRun:
    """Run ``mlx-harmony-chat argv`` with `keys` typed, on `backend` (a `FakeBackend` with no
    replies unless given, or a function of the `Launch` that builds one). `keys` should end
    the chat (``\\quit`` or Ctrl-D). A list of key chunks is typed one chunk every `pause`
    seconds, for what needs time between keys (completion menus)."""
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
    with create_pipe_input() as pipe:
        pipe.send_text(chunks[0])

        def type_the_rest() -> None:
            for chunk in chunks[1:]:
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
    return ChatRun(status, buffer.getvalue(), session, calls)
