"""A real uvicorn server on 127.0.0.1 (a free port, in a thread) around a scripted model.

`EchoGenerator` is the controller's `ScriptedGenerator` taught to answer any prompt: it reads
the last user message (or tool result) from the prompt and replies with reasoning, then an
answer that quotes it; with function tools declared and "time" in the question it calls the
first tool. Queued `Script`s (``generator.add(...)``) win over the echo. With ``hold_after=N``
each generation hands out N tokens, then waits on the `gate` event until the test calls
``release()``: requests overlap, and a test sees a stream while it is still being generated,
without sleeping.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from mlx_harmony.controller.testing import Script, ScriptedGenerator
from mlx_harmony.server import ServerSettings, create_app
from mlx_harmony.server.models import ModelEntry

_USER = re.compile(r"<\|start\|>user<\|message\|>(.*?)<\|end\|>", re.S)
_TOOL = re.compile(r"<\|start\|>functions\.(\w+) to=assistant.*?<\|message\|>(.*?)<\|end\|>", re.S)
_FUNCTION = re.compile(r"type (\w+) = ")


@dataclass
class StreamRecord:
    """One generation the scripted model ran: its prompt, tokens handed out, how it ended."""

    prompt: str
    tokens: int = 0
    stop_reason: str | None = None
    cancelled: bool = False


class EchoGenerator(ScriptedGenerator):
    """See the module docstring."""

    def __init__(self, *, hold_after: int | None = None, context_length: int | None = None) -> None:
        super().__init__(context_length=context_length)
        self.hold_after = hold_after
        self.gate = threading.Event()
        if hold_after is None:
            self.gate.set()
        self.records: list[StreamRecord] = []
        self.threads: set[str] = set()
        self.loaded = type("Loaded", (), {"config": {"vocab_size": 201088}, "path": "echo"})()

    def _reply(self, prompt: str) -> Script:
        tail = prompt[prompt.rfind("<|start|>user") :]
        tool = list(_TOOL.finditer(tail))
        if tool:
            return Script.harmony(
                f"The tool {tool[-1].group(1)} said: {tool[-1].group(2)}",
                analysis="I have the tool result.",
            )
        users = _USER.findall(prompt)
        question = users[-1] if users else ""
        functions = _FUNCTION.findall(prompt)
        if functions and "time" in question.lower():
            return Script.harmony(
                analysis="The user wants the time; I call the tool.",
                call=(f"functions.{functions[0]}", '{"timezone": "UTC"}'),
            )
        return Script.harmony(f"You said: {question}", analysis=f"The user said {question!r}.")

    def stream(self, *, prompt_tokens: Any, **kwargs: Any) -> Iterator[Any]:
        self.threads.add(threading.current_thread().name)
        prompt = self.decode(list(prompt_tokens))
        if not self.remaining:
            self.add(self._reply(prompt))
        record = StreamRecord(prompt)
        self.records.append(record)
        events = super().stream(prompt_tokens=prompt_tokens, **kwargs)
        return self._timed(events, record)

    def release(self) -> None:
        """Let every held generation go on (and later ones run without holding)."""
        self.gate.set()

    @property
    def held(self) -> bool:
        return not self.gate.is_set()

    def _timed(self, events: Iterator[Any], record: StreamRecord) -> Iterator[Any]:
        for n, event in enumerate(events):
            if self.hold_after is not None and n >= self.hold_after:
                assert self.gate.wait(30), "the test never released the held generation"
            if event.token is not None:
                record.tokens += 1
            if event.stop_reason is not None:
                record.stop_reason = str(event.stop_reason)
                record.cancelled = record.stop_reason == "cancelled"
            yield event


@dataclass
class RunningServer:
    url: str
    app: Any
    generator: Any
    log_file: Path | None = None
    loads: list[str] = field(default_factory=list)

    @property
    def worker(self) -> Any:
        return self.app.state.worker

    def log_lines(self) -> list[str]:
        assert self.log_file is not None
        return self.log_file.read_text().splitlines() if self.log_file.exists() else []


def _serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, int]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port


@pytest.fixture(scope="session")
def _stopping_servers() -> Iterator[list[threading.Thread]]:
    """Servers told to stop, joined at the end of the session: uvicorn takes 0.1-0.2 s to
    shut down (a tick, then a fixed pause), which would otherwise be paid by every test."""
    stopping: list[threading.Thread] = []
    yield stopping
    for thread in stopping:
        thread.join(30)


@pytest.fixture
def start_server(
    tmp_path: Path, _stopping_servers: list[threading.Thread]
) -> Iterator[Callable[..., RunningServer]]:
    """``start_server(generator=..., **settings)``: a running server; told to stop after the
    test (it shuts down while the next test runs).

    ``loader`` replaces the generator for tests of loading itself.
    """
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(
        generator: Any = None,
        *,
        loader: Callable[[ModelEntry], Any] | None = None,
        real: bool = False,
        **settings: Any,
    ) -> RunningServer:
        """``real=True``: load ``settings["model"]`` with mlx-generate's TokenGenerator."""
        generator = generator if generator is not None else EchoGenerator()
        settings.setdefault("log_file", str(tmp_path / f"requests-{len(running)}.log"))
        loads: list[str] = []

        def load(entry: ModelEntry) -> Any:
            loads.append(entry.id)
            return generator

        app = create_app(ServerSettings(**settings), loader=None if real else loader or load)
        server, thread, port = _serve(app)
        running.append((server, thread))
        return RunningServer(
            f"http://127.0.0.1:{port}",
            app,
            None if real else generator,
            Path(settings["log_file"]),
            loads,
        )

    yield start
    for server, thread in running:
        server.should_exit = True
        _stopping_servers.append(thread)


@pytest.fixture
def server(start_server: Callable[..., RunningServer]) -> RunningServer:
    return start_server()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


@pytest.fixture
def echo() -> type[EchoGenerator]:
    """The `EchoGenerator` class, to build one with options."""
    return EchoGenerator


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., bool]:
    return wait_for


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The trained demo model: ``MLX_HARMONY_DEMO_MODEL``, else built once per machine."""
    env = os.environ.get("MLX_HARMONY_DEMO_MODEL")
    if env:
        return Path(env)
    from mlx_harmony.demo_model import ensure_demo_model

    return Path(ensure_demo_model(progress=False))
