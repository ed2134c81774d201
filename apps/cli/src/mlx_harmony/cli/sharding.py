"""Run the chat and the one-shot command on a model sharded over the ranks of ``mlx.launch``.

Started alone, nothing here imports MLX. Started as one of several ranks, rank 0 owns the
terminal (flags, files, input, output, the chat log): it finds the model, refuses what cannot
work sharded, then sends every other rank a *plan* (the model to load, tensor or pipeline
parallel, the engine options, the step timeout) with `broadcast_bytes`. Every rank loads only
its shard (`load_sharded`) and checks that all loaded the same (`check_same_model`). Rank 0
then chats through mlx-generate's `ShardedBatchTokenGenerator`; the others run its follower
loop (`run_follower`), the same engine steps in lockstep, and never read the terminal.

When rank 0 quits (Ctrl-D, the answer printed, or an error before the model loads) the others
exit with status 0; a rank that dies or hangs makes rank 0 say so and exit with status 75
(`EXIT_RANK_FAILURE`) within ``GRACE_S`` (plus ``--step-timeout`` for a hung rank).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from prompt_toolkit.input import Input, create_pipe_input

from .launch import CliError, Launch, ModelLocation, debug_options, make_tools

if TYPE_CHECKING:
    import mlx.core as mx

    from mlx_harmony.controller import ChatBackend
    from mlx_harmony.generate.distributed import RankFailedError

__all__ = [
    "GRACE_S",
    "HEARTBEAT_S",
    "RankZero",
    "add_sharding_options",
    "check_sharding_flags",
    "launched_group",
    "line_input",
    "run_other_rank",
    "run_ranked",
]

_LAUNCHER_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")

HEARTBEAT_S = 1.0
"""Rank 0 sends an empty step this often while idle (the chat waiting for input), so a dead
rank is found before the next question."""
GRACE_S = 5.0
"""After a rank fails, the seconds rank 0 has to print the error before it exits."""
DEFAULT_STEP_TIMEOUT_S = 60.0
PREFILL_STEP_SIZE = 2048
"""`TokenGenerator`'s prefill chunk: the same on every rank, and the same as one process."""
PROMPT_CACHE_SIZE = 4
"""Cached prompt prefixes: one conversation, plus its retries and tool rounds."""

# (GeneratorOptions field, its flag, why it cannot run sharded)
_REFUSED_OPTIONS = (
    ("max_kv_size", "--max-kv-size", "a rotating KV cache runs only in the one-process loop"),
    ("kv_bits", "--kv-bits", "a quantized KV cache runs only in the one-process loop"),
    ("adapter_path", "--adapter-path", "adapters are not applied to a shard"),
    (
        "prompt_cache_file",
        "--prompt-cache-file",
        "the saved cache would have to be loaded on every rank alike",
    ),
    ("mlock", "--mlock", "the other ranks would not wire their shards"),
    ("draft_model", "--draft-model", "speculative decoding runs only in one process"),
    ("prompt_lookup", "--prompt-lookup", "speculative decoding runs only in one process"),
)


def add_sharding_options(parser: argparse.ArgumentParser) -> None:
    """``--pipeline`` and ``--step-timeout``: they apply under ``mlx.launch`` only."""
    group = parser.add_argument_group(
        "sharding", "Under mlx.launch with several ranks, the model is sharded over them."
    )
    group.add_argument(
        "--pipeline",
        action="store_true",
        help="Pipeline parallel (a run of layers per rank) instead of tensor parallel; "
        "gpt-oss has no pipeline in mlx-lm.",
    )
    group.add_argument(
        "--step-timeout",
        type=float,
        metavar="SECONDS",
        help=f"The longest one engine step may take before a rank counts as hung (default "
        f"{DEFAULT_STEP_TIMEOUT_S:g}; above your longest prefill chunk).",
    )


@contextmanager
def line_input(stream: TextIO) -> Iterator[Input]:
    """The chat's input from `stream` read line by line, each line one message, the end of
    `stream` Ctrl-D: for rank 0 under ``mlx.launch``, whose stdin is the launcher's pipe (the
    launcher's terminal stays in line mode, so Enter arrives as a newline, which the chat's
    prompt would take for a new line inside the message)."""
    with create_pipe_input() as pipe:

        def feed() -> None:
            try:
                for line in stream:
                    pipe.send_text(line.rstrip("\r\n") + "\r")
                pipe.send_text("\x04")
            except (OSError, ValueError):  # the chat ended first and closed the pipe
                pass

        threading.Thread(target=feed, name="mlx-harmony-stdin", daemon=True).start()
        yield pipe


def launched_group() -> mx.distributed.Group | None:
    """The group of ranks `mlx.launch` started this process in; None when it runs alone (then
    MLX is not even imported, unless a launcher's variables are set)."""
    if not any(name in os.environ for name in _LAUNCHER_VARIABLES):
        return None
    import mlx.core as mx

    group = mx.distributed.init()
    return group if group.size() > 1 else None


def check_sharding_flags(args: argparse.Namespace) -> None:
    """Refuse the sharding flags in a process that runs alone, and a bad step timeout."""
    timeout = args.step_timeout
    if timeout is not None and timeout <= 0:
        raise CliError(f"--step-timeout must be positive, got {timeout:g}", exit_status=2)
    flags = (("--pipeline", args.pipeline), ("--step-timeout", timeout))
    given = [flag for flag, value in flags if value]
    if given and launched_group() is None:
        raise CliError(
            f"{' and '.join(given)} apply to a model sharded over the ranks of mlx.launch, and "
            "this process runs alone; start it with `mlx.launch -n 2 -- ...` or leave them out",
            exit_status=2,
        )


def _refusals(launch: Launch, location: ModelLocation, size: int) -> list[str]:
    args = launch.args
    problems = []
    if location.server is not None:
        problems.append(
            "--server: under mlx.launch the model runs here, sharded over the ranks; drop "
            "--server, or run the command without mlx.launch"
        )
    constraint = getattr(args, "constraint", None)
    if constraint is not None:
        flag = "--json-schema" if args.json_schema is not None else "--grammar"
        problems.append(f"{flag}: the grammar mask cannot travel to the other ranks")
    options = launch.config.generator_options()
    for name, flag, why in _REFUSED_OPTIONS:
        if getattr(options, name, None) not in (None, False):
            problems.append(f"{flag} ({name} in the prompt config): {why}")
    if launch.config.lazy:
        problems.append(
            "lazy (prompt config): every rank reads its whole shard at start; leave it unset"
        )
    return [f"{p} (a model sharded over {size} ranks)" for p in problems]


class RankZero:
    """Rank 0 of a sharded chat or one-shot run: its `backend_factory` sends the plan, loads
    rank 0's shard and builds the `LocalBackend` over a `ShardedBatchTokenGenerator`. Call
    `finish()` at the end, whatever happened: it releases the other ranks when no plan went
    out (an error before the model loaded)."""

    def __init__(self, group: mx.distributed.Group, prog: str) -> None:
        self.group = group
        self.prog = prog
        self.failure: RankFailedError | None = None
        self._sent = False
        self._lock = threading.Lock()

    def _send(self, plan: dict[str, Any]) -> bool:
        from mlx_harmony.generate.distributed import broadcast_bytes

        with self._lock:
            if self._sent:
                return False
            self._sent = True
            broadcast_bytes(json.dumps(plan).encode(), self.group)
            return True

    def finish(self) -> None:
        """Release the other ranks if they still wait for a plan (they exit with 0)."""
        self._send({"stop": True})

    def _failed(self, failure: RankFailedError) -> None:
        from mlx_harmony.generate.distributed import EXIT_RANK_FAILURE

        self.failure = failure
        print(
            f"\n{self.prog}: error: the sharded model is lost ({failure}); exiting with status "
            f"{EXIT_RANK_FAILURE}",
            file=sys.stderr,
            flush=True,
        )

    def backend_factory(
        self,
        launch: Launch,
        location: ModelLocation,
        *,
        on_close: Callable[[Callable[[], Any]], None],
    ) -> ChatBackend:
        """`make_backend`'s sharded twin (a `BackendFactory`)."""
        from mlx_harmony.controller import LocalBackend
        from mlx_harmony.generate import ModelLoadError
        from mlx_harmony.generate.distributed import ShardedBatchTokenGenerator
        from mlx_harmony.generate.sharded import check_same_model, load_sharded

        size = self.group.size()
        problems = _refusals(launch, location, size)
        if problems:
            raise CliError("; ".join(problems), exit_status=2)
        model = location.name
        if location.check_demo:
            from mlx_harmony.demo_model import ensure_demo_model

            model = os.fspath(ensure_demo_model(progress=False))
        assert model is not None  # a local model always has a name
        options = launch.config.generator_options()
        args = launch.args
        step_timeout = args.step_timeout or DEFAULT_STEP_TIMEOUT_S
        engine = {
            "max_batch_size": 1,
            "prefill_step_size": PREFILL_STEP_SIZE,
            "prompt_cache_size": PROMPT_CACHE_SIZE,
            "prompt_cache_bytes": None,
            "reseed_each_turn": options.reseed_each_turn,
        }
        plan = {"model": model, "pipeline": args.pipeline, "engine": engine}
        plan["step_timeout_s"] = step_timeout
        if not self._send(plan):  # the chat ended first and released the other ranks
            raise CliError("the chat ended before the model loaded")
        try:
            loaded = load_sharded(model, self.group, pipeline=args.pipeline)
            check_same_model(loaded, engine, self.group)
        except ModelLoadError as error:
            raise CliError(str(error)) from None
        except RuntimeError as error:  # ModelMismatchError, or a rank that left the group
            raise CliError(str(error)) from None
        tools = make_tools(launch)
        if tools is not None:
            on_close(tools.close)
        try:
            generator = ShardedBatchTokenGenerator(
                loaded,
                options,
                group=self.group,
                step_timeout_s=step_timeout,
                heartbeat_s=HEARTBEAT_S,
                grace_s=GRACE_S,
                max_batch_size=1,
                prefill_step_size=PREFILL_STEP_SIZE,
                prompt_cache_size=PROMPT_CACHE_SIZE,
                on_failure=self._failed,
            )
        except ValueError as error:  # a chat template for a Harmony model, ...
            raise CliError(str(error), exit_status=2) from None
        on_close(generator.close)  # tells the other ranks to stop
        return LocalBackend(
            generator, tools=tools, debug=debug_options(args, launch.config.effective())
        )


def run_other_rank(group: mx.distributed.Group, prog: str) -> int:
    """A rank other than 0: wait for rank 0's plan, load this rank's shard and follow rank 0's
    engine steps until it stops (0) or a rank fails (75)."""
    from mlx_harmony.generate import ModelLoadError
    from mlx_harmony.generate.distributed import broadcast_bytes, make_engine, run_follower
    from mlx_harmony.generate.sharded import check_same_model, load_sharded

    rank = group.rank()

    def say(message: str) -> None:
        print(f"{prog}[rank {rank}]: {message}", file=sys.stderr, flush=True)

    plan = json.loads(broadcast_bytes(None, group))
    if plan.get("stop"):
        return 0  # rank 0 stopped before loading a model; it says why
    layout = "pipeline" if plan["pipeline"] else "tensor"
    say(f"loading this rank's shard of {plan['model']} ({layout} parallel, {group.size()} ranks)")
    try:
        loaded = load_sharded(plan["model"], group, pipeline=plan["pipeline"])
        check_same_model(loaded, plan["engine"], group)
    except (ModelLoadError, RuntimeError) as error:
        say(str(error))
        return 1
    timeout = plan["step_timeout_s"]
    return run_follower(
        make_engine(loaded.model, **plan["engine"]),
        group,
        step_timeout_s=timeout,
        heartbeat_s=HEARTBEAT_S,
        grace_s=GRACE_S,
    )


def run_ranked(prog: str, run: Callable[[RankZero | None], int]) -> int:
    """`run` on rank 0 (with its `RankZero`) or alone (with None); a follower rank when this
    process is one of several but not rank 0. The exit status: `run`'s, or 75 when a rank was
    lost."""
    group = launched_group()
    if group is not None and group.rank() != 0:
        return run_other_rank(group, prog)
    lead = RankZero(group, prog) if group is not None else None
    try:
        status = run(lead)
    finally:
        if lead is not None:
            lead.finish()
    if lead is not None and lead.failure is not None:
        from mlx_harmony.generate.distributed import EXIT_RANK_FAILURE

        return EXIT_RANK_FAILURE
    return status
