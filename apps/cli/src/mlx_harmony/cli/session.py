"""The interactive chat: a prompt-toolkit prompt in front of the controller's front-end loop.

`make_chat_session` builds a `ChatSession` from a `ChatFrontend` (or a function that builds
one, which then runs in the background so the prompt shows before the model is loaded) and
the terminal's input and output. Tests pass prompt-toolkit's ``create_pipe_input()`` and
``DummyOutput()`` and a rich console writing to a string, and drive the real session.

One worker thread owns the front end and so all model work (MLX included): the main thread
reads input and renders events, the worker runs `ChatFrontend.handle` and hands the events
over a queue. Ctrl-C while a reply is generated sets the generation's cancel flag (the turn
ends as cancelled, the chat stays); at the prompt it clears the line; Ctrl-D or ``\\quit``
leaves. Saving after every exchange is the front end's ``autosave``.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.keys import Keys
from prompt_toolkit.output import Output
from rich.console import Console

from mlx_harmony.cli.frontend import ChatFrontend
from mlx_harmony.controller import (
    CommandOutput,
    PromptConfig,
    Quit,
    StatsEvent,
    TurnDone,
    complete_command,
)

from .render import Renderer, RenderOptions

__all__ = [
    "PROMPT",
    "ChatSession",
    "CommandCompleter",
    "WorkerError",
    "make_chat_session",
    "make_key_bindings",
]

PROMPT = "> "
CONTINUATION = "… "
_POLL_S = 0.05


class CommandCompleter(Completer):
    """Completes chat commands, setting names and reasoning efforts (`complete_command`)."""

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterable[Completion]:
        before = document.text_before_cursor
        if "\n" in before:
            return
        word = before.rsplit(" ", 1)[-1]
        for candidate in complete_command(before):
            yield Completion(candidate, start_position=-len(word))


def make_key_bindings() -> KeyBindings:
    """Enter sends; Esc-Enter (Alt-Enter in most terminals) and Ctrl-J add a line."""
    bindings = KeyBindings()

    @bindings.add("enter")
    def _send(event: KeyPressEvent) -> None:
        event.current_buffer.validate_and_handle()

    @bindings.add("escape", "enter")
    @bindings.add("c-j")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    @bindings.add(Keys.Vt100MouseEvent)
    def _stray_escape(event: KeyPressEvent) -> None:
        """A raw escape sequence such as ``ESC[31m`` (typed, or pasted without bracketed
        paste) reads like a mouse report; the chat has no mouse support, so drop it instead
        of letting prompt-toolkit's mouse handler fail and lose the line."""

    return bindings


def valid_text(text: str) -> tuple[str, int]:
    """`text` with each lone surrogate (how the terminal input passes on bytes that are not
    UTF-8) replaced by U+FFFD, and how many there were; the model and the chat log need real
    UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text, 0
    chars = ["\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text]
    return "".join(chars), sum(1 for c in text if 0xD800 <= ord(c) <= 0xDFFF)


@dataclass(frozen=True)
class WorkerError:
    """A line failed with an exception (the chat goes on); shown as an error."""

    error: BaseException


class _LoadFailedError(Exception):
    pass


_DONE = object()


def _release_mlx_streams() -> None:
    """mlx-generate's `release_thread_streams`, when this process ran a model at all."""
    generate = sys.modules.get("mlx_harmony.generate")
    if generate is None:
        return
    with contextlib.suppress(Exception):
        generate.release_thread_streams()


class _Worker:
    """The thread that owns the front end: builds it (loading the model), then handles lines."""

    def __init__(
        self,
        frontend: ChatFrontend | Callable[[], ChatFrontend],
        on_ready: Callable[[], None],
        on_exit: Callable[[], None],
    ) -> None:
        self._make = frontend if callable(frontend) else None
        self.frontend: ChatFrontend | None = None if callable(frontend) else frontend
        self.ready = threading.Event()
        self.cancel = threading.Event()
        self.error: BaseException | None = None
        self.context: tuple[int, int | None] | None = None
        self._on_ready = on_ready
        self._on_exit = on_exit
        self._jobs: queue.Queue[str | None] = queue.Queue()
        self._events: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="mlx-harmony-chat", daemon=True)
        self._start_lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        """Start the thread (once)."""
        with self._start_lock:
            if not self._thread.is_alive() and not self._started:
                self._started = True
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self.cancel.set()
            self._jobs.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            if self.frontend is None:
                assert self._make is not None
                self.frontend = self._make()
            self._count()
        except BaseException as error:
            self.error = error
        finally:
            self.ready.set()
            self._on_ready()
        try:
            self._serve()
        finally:
            with contextlib.suppress(Exception):
                self._on_exit()  # release the model on the thread that used it
            _release_mlx_streams()

    def _serve(self) -> None:
        while True:
            line = self._jobs.get()
            if line is None:
                return
            try:
                if self.error is not None:
                    self._events.put(WorkerError(self.error))
                elif self.cancel.is_set():
                    self._events.put(CommandOutput("Cancelled before it started."))
                else:
                    self._handle(line)
            except Exception as error:
                self._events.put(WorkerError(error))
            finally:
                self._events.put(_DONE)

    def _handle(self, line: str) -> None:
        assert self.frontend is not None
        ran_turn = False
        for event in self.frontend.handle(line, cancel=self.cancel):
            if isinstance(event, StatsEvent):
                info = event.info
                window = self.context[1] if self.context else None
                self.context = (info.prompt_tokens + info.completion_tokens, window)
            ran_turn = ran_turn or isinstance(event, TurnDone)
            self._events.put(event)
        if not ran_turn:  # a command may have changed the conversation or the settings
            self._count()

    def _count(self) -> None:
        front = self.frontend
        if front is None:
            return
        with contextlib.suppress(Exception):  # a count is only for the toolbar
            count = front.backend.count_tokens(
                front.turns, config=front.config, function_tools=front.function_tools
            )
            self.context = (count.prompt_tokens, count.max_context_tokens)

    def submit(self, line: str) -> Iterator[Any]:
        """Hand `line` to the worker and yield its events as they come (None every
        ``_POLL_S`` seconds without one, so the caller can look around)."""
        self.start()
        self.cancel.clear()
        self._jobs.put(line)
        while True:
            try:
                event = self._events.get(timeout=_POLL_S)
            except queue.Empty:
                yield None
                continue
            if event is _DONE:
                return
            yield event


class ChatSession:
    """A running chat; `run()` returns the exit status. Build it with `make_chat_session`."""

    def __init__(
        self,
        frontend: ChatFrontend | Callable[[], ChatFrontend],
        *,
        prompt_session: PromptSession[str],
        console: Console,
        renderer: Renderer,
        model_label: str,
        config: PromptConfig,
        intro: Iterable[str] = (),
        greeting: str | None = None,
        on_close: Iterable[Callable[[], None]] = (),
    ) -> None:
        self.prompt_session = prompt_session
        self.console = console
        self.renderer = renderer
        self.model_label = model_label
        self._config = config
        self._intro = tuple(intro)
        self._greeting = greeting
        self._on_close = list(on_close)
        self._close_lock = threading.Lock()
        self._worker = _Worker(frontend, self._loaded, self._release)
        self._interrupts = 0

    # -- state --------------------------------------------------------------------------------

    @property
    def frontend(self) -> ChatFrontend | None:
        """The front end once it is built (None while the model loads)."""
        return self._worker.frontend

    @property
    def ready(self) -> bool:
        return self._worker.ready.is_set()

    @property
    def config(self) -> PromptConfig:
        front = self.frontend
        return front.config if front is not None else self._config

    def toolbar(self) -> str:
        """The bottom toolbar: model, reasoning effort, context used, last speed."""
        parts = [self.model_label or "model"]
        if not self.ready:
            parts.append("loading…")
        elif self._worker.error is not None:
            parts.append("failed to load")
        parts.append(f"reasoning {self.config.effective().reasoning_effort}")
        context = self._worker.context
        if context is not None:
            used, window = context
            parts.append(f"context {used}" + (f"/{window}" if window else "") + " tokens")
        stats = self.renderer.last_stats
        if stats is not None and stats.decode_tokens_per_s > 0:
            parts.append(f"{stats.decode_tokens_per_s:.1f} tok/s")
        return " " + " · ".join(parts) + " "

    # -- running ------------------------------------------------------------------------------

    def _loaded(self) -> None:
        app = self.prompt_session.app
        loop = app.loop
        if not app.is_running or loop is None:
            return
        failed = self._worker.error is not None

        def notify() -> None:
            if not app.is_running:
                return
            if failed and not app.is_done:
                app.exit(exception=_LoadFailedError())
            else:
                app.invalidate()

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(notify)

    def _show_intro(self) -> None:
        for line in self._intro:
            self.renderer.note(line)
        if self._greeting:
            self.renderer.message(self._greeting)

    def _load_error(self) -> int:
        error = self._worker.error
        self.renderer.error(f"Cannot start the chat: {error}")
        return 1

    def _first_render(self, _: object) -> None:
        # Load the model once the prompt is drawn: before, its imports would slow the drawing.
        self.prompt_session.app.after_render -= self._first_render
        self._worker.start()

    def run(self) -> int:
        """Read lines and answer them until Ctrl-D or ``\\quit``."""
        if self._worker.frontend is not None:
            self._worker.start()
        else:
            self.prompt_session.app.after_render += self._first_render
        self._show_intro()
        try:
            while True:
                if self.ready and self._worker.error is not None:
                    return self._load_error()
                try:
                    text = self.prompt_session.prompt()
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    break
                except _LoadFailedError:
                    return self._load_error()
                if not text.strip():
                    continue
                if self.send(text):
                    break
            self._goodbye()
            return 0
        finally:
            self.close()

    def send(self, text: str) -> bool:
        """Handle one input line and render its events; True when the session should end."""
        self._interrupts = 0
        text, replaced = valid_text(text)
        if replaced:
            self.renderer.note(
                f"{replaced} character{'s' if replaced != 1 else ''} of the input "
                f"{'were' if replaced != 1 else 'was'} not valid UTF-8 and became \ufffd.",
                style="yellow",
            )
        quit_ = False
        self.renderer.use_config(self.config.effective())
        with self._interrupts_cancel():
            if not self.ready:
                with self.console.status("Loading the model…", spinner="dots"):
                    while not self._worker.ready.wait(_POLL_S):
                        pass
            if self._worker.error is not None:
                self._load_error()
                return True
            warned = False
            try:
                for event in self._worker.submit(text):
                    if self._interrupts >= 2 and not warned:
                        warned = True
                        self.renderer.note("Stopping… (Ctrl-C again to quit)", style="yellow")
                    if event is None:
                        continue
                    if isinstance(event, WorkerError):
                        self.renderer.close()
                        self.renderer.error(f"Error: {event.error}")
                        if isinstance(event.error, OSError):
                            self.renderer.note(
                                "The chat is kept in memory: \\save PATH writes it elsewhere.",
                                style="yellow",
                            )
                        continue
                    self.renderer.show(event)
                    quit_ = quit_ or isinstance(event, Quit)
            finally:
                self.renderer.close()
        return quit_

    @contextlib.contextmanager
    def _interrupts_cancel(self) -> Iterator[None]:
        """While a line runs, Ctrl-C (SIGINT) cancels the generation instead of raising;
        a third Ctrl-C gives up waiting and leaves."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        # no printing here: rich is not reentrant
        def interrupt(signum: int, frame: FrameType | None) -> None:
            self._interrupts += 1
            self._worker.cancel.set()
            if self._interrupts >= 3:
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _goodbye(self) -> None:
        front = self.frontend
        if front is not None and front.autosave and front.chat_path and front.log.messages:
            self.renderer.note(f"Chat saved in {front.chat_path}.")

    def _release(self) -> None:
        with self._close_lock:
            callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()

    def close(self) -> None:
        """Stop the worker and release what the session holds (tools, the model's memory):
        on the worker thread as it ends, else here."""
        self._worker.stop()
        self._release()


def make_chat_session(
    frontend: ChatFrontend | Callable[[], ChatFrontend],
    *,
    input: Input | None = None,
    output: Output | None = None,
    console: Console | None = None,
    history: History | None = None,
    render_options: RenderOptions | None = None,
    model_label: str = "",
    config: PromptConfig | None = None,
    intro: Iterable[str] = (),
    greeting: str | None = None,
    on_close: Iterable[Callable[[], None]] = (),
) -> ChatSession:
    """A chat session on the given terminal (defaults: the real one).

    `frontend` is a built `ChatFrontend`, or a function that builds one (loading the model):
    it then runs on the worker thread while the prompt is already shown. `config` is what the
    toolbar shows until the front end exists; `intro` lines and the `greeting` (markdown) are
    printed before the first prompt; `on_close` callbacks run when the session ends, on the
    worker thread (which used the model) when it ran.
    """
    console = console if console is not None else Console(highlight=False)
    renderer = Renderer(console, render_options)
    holder: list[ChatSession] = []
    prompt_session: PromptSession[str] = PromptSession(
        PROMPT,
        multiline=True,
        prompt_continuation=CONTINUATION,
        key_bindings=make_key_bindings(),
        completer=CommandCompleter(),
        complete_while_typing=True,
        history=history if history is not None else InMemoryHistory(),
        bottom_toolbar=lambda: holder[0].toolbar() if holder else "",
        refresh_interval=0.5,
        input=input,
        output=output,
    )
    if config is None:
        config = frontend.config if isinstance(frontend, ChatFrontend) else PromptConfig()
    session = ChatSession(
        frontend,
        prompt_session=prompt_session,
        console=console,
        renderer=renderer,
        model_label=model_label,
        config=config,
        intro=intro,
        greeting=greeting,
        on_close=on_close,
    )
    holder.append(session)
    return session
