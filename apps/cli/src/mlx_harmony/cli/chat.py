"""``mlx-harmony-chat``: the interactive chat.

`main(argv)` is the console script; `create_chat_session(argv, input=..., output=...)` builds
the same session on any terminal, which is how the tests drive the real app.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prompt_toolkit.history import FileHistory, History
from prompt_toolkit.input import Input
from prompt_toolkit.output import DummyOutput, Output
from rich.console import Console

from mlx_harmony.cli.frontend import ChatFrontend

from .launch import (
    BackendFactory,
    CliError,
    Launch,
    ModelLocation,
    locate_model,
    make_backend,
    mlx_harmony_home,
    prepare,
)
from .options import build_chat_parser, parse_args
from .render import RenderOptions
from .session import ChatSession, make_chat_session
from .sharding import add_sharding_options, check_sharding_flags, line_input

if TYPE_CHECKING:
    from .sharding import RankZero

__all__ = ["BackendFactory", "create_chat_session", "default_history", "main"]

DEMO_NOTE = (
    "No --model, --profile or chat to resume: chatting with the tiny demo model (it knows a "
    "few canned answers). Try --model openai/gpt-oss-20b for a real one."
)


LINE_MODE_NOTE = (
    "Under mlx.launch the chat reads one message per line: Enter sends it, \\quit quits "
    "(the launcher does not pass Ctrl-D on)."
)


def default_history() -> History:
    """Input history kept across sessions in the mlx-harmony folder (``MLX_HARMONY_HOME``)."""
    home = mlx_harmony_home()
    home.mkdir(parents=True, exist_ok=True)
    return FileHistory(str(home / "chat-input-history"))


def _turns(launch: Launch) -> int:
    log = launch.log
    return 0 if log is None else sum(1 for m in log.messages if m.role == "user")


def _intro(launch: Launch, location: ModelLocation) -> list[str]:
    lines: list[str] = []
    if launch.settings.uses_demo_model and location.server is None:
        lines.append(DEMO_NOTE)
    if launch.log is not None:
        turns = _turns(launch)
        lines.append(f"Resumed {turns} turn{'s' if turns != 1 else ''} from {launch.chat_path}.")
    lines.extend(launch.notes)
    saving = f" · saving to {launch.chat_path}" if launch.autosave else ""
    lines.append(
        f"{location.label}{saving} · Enter sends, Esc-Enter adds a line · \\help lists "
        "commands · Ctrl-C stops a reply · Ctrl-D quits"
    )
    return lines


def create_chat_session(
    argv: Sequence[str] | None = None,
    *,
    input: Input | None = None,
    output: Output | None = None,
    console: Console | None = None,
    history: History | None = None,
    backend_factory: BackendFactory | None = None,
    line_mode: bool = False,
) -> ChatSession:
    """Parse `argv`, read the files it names, find the model and build the session; the
    model itself loads on the session's worker thread once `run()` starts.

    `line_mode` says that `input` brings one message per line (rank 0 under ``mlx.launch``).
    Raises `CliError` for a problem the user can fix and `SystemExit` for usage errors.
    """
    parser = build_chat_parser()
    add_sharding_options(parser)
    args = parse_args(parser, argv)
    check_sharding_flags(args)
    launch = prepare(args)
    location = locate_model(launch)
    factory = backend_factory or make_backend
    closers: list[Callable[[], Any]] = []

    def build_frontend() -> ChatFrontend:
        backend = factory(launch, location, on_close=closers.append)
        tools = dict(launch.settings.tools)
        if launch.log is not None:  # the header holds the values this session now runs with
            header = launch.log.header
            header.model_path = location.name
            header.prompt_config_path = launch.prompt_config_path
            header.tools = tools
        return ChatFrontend(
            backend,
            config=launch.config,
            log=launch.log,
            chat_path=launch.chat_path,
            autosave=launch.autosave,
            model_path=location.name,
            prompt_config_path=launch.prompt_config_path,
            tools=tools,
            profile_names=launch.profile_names,
        )

    def close() -> None:
        for callback in reversed(closers):
            callback()

    return make_chat_session(
        build_frontend,
        input=input,
        output=output,
        console=console,
        history=history if history is not None else default_history(),
        render_options=RenderOptions(markdown=args.markdown, show_thinking=not args.hide_thinking),
        model_label=location.label,
        config=launch.config,
        intro=[*_intro(launch, location), *([LINE_MODE_NOTE] if line_mode else [])],
        greeting=None if _turns(launch) else launch.config.assistant_greeting,
        on_close=[close],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chat; the exit status (0, 1 for an error, 2 for a usage error, 75 when a rank
    of a sharded model was lost).

    Under ``mlx.launch`` with several ranks the model is sharded over them (see `sharding`):
    rank 0 chats, the other ranks follow it. The launcher hands rank 0 its input through a
    pipe, so there the chat reads one message per line (no prompt line editing).
    """
    from .sharding import run_ranked

    return run_ranked("mlx-harmony-chat", lambda lead: _run_chat(argv, lead))


def _run_chat(argv: Sequence[str] | None, lead: RankZero | None) -> int:
    with contextlib.ExitStack() as stack:
        input: Input | None = None
        output: Output | None = None
        if lead is not None and not sys.stdin.isatty():  # mlx.launch's pipe
            input, output = stack.enter_context(line_input(sys.stdin)), DummyOutput()
        try:
            session = create_chat_session(
                argv,
                input=input,
                output=output,
                backend_factory=lead.backend_factory if lead is not None else None,
                line_mode=input is not None,
            )
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 1
        except CliError as error:
            print(f"mlx-harmony-chat: error: {error}", file=sys.stderr)
            return error.exit_status
        except KeyboardInterrupt:
            return 130
        if input is None and not sys.stdin.isatty():
            session.close()
            print(
                "mlx-harmony-chat: error: the chat needs a terminal; to answer a prompt from a "
                "pipe use mlx-harmony-generate",
                file=sys.stderr,
            )
            return 1
        try:
            return session.run()
        except KeyboardInterrupt:
            return 130
