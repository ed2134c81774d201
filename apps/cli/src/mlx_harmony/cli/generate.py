"""``mlx-harmony-generate``: one prompt in, the answer out.

The prompt comes from ``--prompt`` or stdin. The answer streams to stdout as plain text
(``--show-thinking`` streams the reasoning to stderr); ``--json`` prints one object instead,
with the reasoning, the answer, how the turn ended and its stats. It takes the chat's model,
prompt-config, sampling, tool and debug flags and runs the same chat turn, with retries and
tools, through the controller's front end.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from mlx_harmony.cli.frontend import ChatFrontend
from mlx_harmony.controller import (
    TRUNCATED_MARKER,
    AnswerDelta,
    CommandOutput,
    FinishReason,
    RetryEvent,
    ThinkingDelta,
    ToolCallEvent,
    TurnDone,
    TurnResult,
)

from .launch import BackendFactory, CliError, locate_model, make_backend, prepare
from .options import build_generate_parser, parse_args
from .render import one_line
from .sharding import add_sharding_options, check_sharding_flags

if TYPE_CHECKING:
    from .sharding import RankZero

__all__ = ["main", "result_json", "run_generate"]


def result_json(result: TurnResult, *, model: str | None) -> dict[str, Any]:
    """What ``--json`` prints."""
    return {
        "model": model,
        "final": result.final,
        "analysis": result.analysis,
        "finish_reason": result.finish_reason.value,
        "truncated": result.truncated,
        "tool_calls": [
            {"recipient": c.recipient, "arguments": c.arguments} for c in result.tool_calls
        ],
        "retries": [r.to_dict() for r in result.retries],
        "stats": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            **result.timing(),
        },
    }


def _stream(given: TextIO | None, default: TextIO | None, name: str) -> TextIO:
    """`given`, else the process's stream (None when Python runs without one)."""
    stream = given if given is not None else default
    if stream is None:
        raise CliError(f"there is no {name}: run the command with its {name} open")
    return stream


def run_generate(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    backend_factory: BackendFactory | None = None,
    prompt_from_stdin: bool = True,
) -> int:
    """`main` with its streams and backend given (tests); returns the exit status.
    ``prompt_from_stdin=False`` (under ``mlx.launch``, whose stdin pipe never ends) asks for
    ``--prompt``."""
    stdin = _stream(stdin, sys.stdin, "stdin")
    stdout = _stream(stdout, sys.stdout, "stdout")
    stderr = _stream(stderr, sys.stderr, "stderr")
    parser = build_generate_parser()
    add_sharding_options(parser)
    args = parse_args(parser, argv)
    check_sharding_flags(args)
    prompt = args.prompt
    if prompt is None:
        if not prompt_from_stdin:
            raise CliError(
                "give the prompt with --prompt TEXT: under mlx.launch, stdin is the launcher's "
                "pipe, which does not end",
                exit_status=2,
            )
        if stdin.isatty():
            raise CliError("give the prompt with --prompt TEXT, or pipe it on stdin")
        prompt = stdin.read()
    if not prompt.strip():
        raise CliError("the prompt is empty")
    launch = prepare(args, chat_files=False)
    location = locate_model(launch)
    closers: list[Callable[[], Any]] = []
    try:
        backend = (backend_factory or make_backend)(launch, location, on_close=closers.append)
        front = ChatFrontend(
            backend,
            config=launch.config,
            model_path=location.name,
            prompt_config_path=launch.prompt_config_path,
            tools=dict(launch.settings.tools),
        )
        if launch.settings.uses_demo_model:
            print("note: no --model or --profile: answering with the tiny demo model", file=stderr)
        for note in launch.notes:
            print(f"note: {note}", file=stderr)
        result = _run(front, prompt, args, stdout, stderr)
    finally:
        for close in reversed(closers):
            close()
    if result is None:
        return 1
    if args.json:
        json.dump(result_json(result, model=location.name), stdout, ensure_ascii=False, indent=2)
        stdout.write("\n")
    else:
        if result.truncated:
            stdout.write(f" {TRUNCATED_MARKER}")
        stdout.write("\n")
    stdout.flush()
    return 130 if result.finish_reason is FinishReason.CANCELLED else 0


def _run(
    front: ChatFrontend, prompt: str, args: Any, stdout: TextIO, stderr: TextIO
) -> TurnResult | None:
    cancel = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    result: TurnResult | None = None
    answer_started = False
    try:
        for event in front.send(prompt, cancel=cancel):
            if isinstance(event, ThinkingDelta) and args.show_thinking:
                stderr.write(event.text)
                stderr.flush()
            elif isinstance(event, AnswerDelta) and not args.json:
                text = event.text if answer_started else event.text.lstrip()
                answer_started = answer_started or bool(text)
                stdout.write(text)
                stdout.flush()
            elif isinstance(event, RetryEvent):
                print(f"\nnote: attempt {event.attempt}: {event.detail}", file=stderr)
            elif isinstance(event, ToolCallEvent):
                call = event.call
                print(f"note: tool {call.recipient}: {one_line(call.arguments, 80)}", file=stderr)
            elif isinstance(event, CommandOutput) and event.error:
                print(f"mlx-harmony-generate: error: {event.text}", file=stderr)
            elif isinstance(event, TurnDone):
                result = event.result
        if args.show_thinking and result is not None and result.analysis:
            stderr.write("\n")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Answer one prompt; the exit status (0, 1 for an error, 2 for a usage error, 130 when
    cancelled with Ctrl-C, 75 when a rank of a sharded model was lost).

    Under ``mlx.launch`` with several ranks the model is sharded over them (see `sharding`):
    rank 0 reads the prompt and prints the answer, the other ranks follow it.
    """
    from .sharding import run_ranked

    return run_ranked("mlx-harmony-generate", lambda lead: _main(argv, lead))


def _main(argv: Sequence[str] | None, lead: RankZero | None) -> int:
    try:
        if lead is None:
            return run_generate(argv)
        return run_generate(argv, backend_factory=lead.backend_factory, prompt_from_stdin=False)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except CliError as error:
        print(f"mlx-harmony-generate: error: {error}", file=sys.stderr)
        return error.exit_status
    except KeyboardInterrupt:
        return 130
