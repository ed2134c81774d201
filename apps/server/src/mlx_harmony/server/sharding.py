"""Serve one model sharded over the ranks of ``mlx.launch`` (tensor or pipeline parallel).

When `mx.distributed.init()` reports several ranks, every rank loads only its shard of the
default model (`load_sharded`) and checks that all ranks loaded the same model and options
(`check_same_model`). Rank 0 then serves HTTP as usual, with a `ShardedServerGenerator` in
place of the `BatchTokenGenerator`; the other ranks run mlx-generate's follower loop (the same
engine steps in lockstep) and never bind a port. A rank that dies or hangs ends the requests
in flight with a 503 and the process with status 75 (mlx-generate's `EXIT_RANK_FAILURE`);
rank 0's shutdown (SIGTERM, Ctrl-C) stops the followers with status 0.

One model per launch: other model folders and profiles are not served, since every rank would
have to load them together.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict

import mlx.core as mx

from mlx_harmony.generate import StreamEvent
from mlx_harmony.generate.batch import DEFAULT_PREFILL_BATCH_SIZE
from mlx_harmony.generate.constrain import ConstraintError
from mlx_harmony.generate.distributed import (
    RankFailedError,
    ShardedBatchTokenGenerator,
    make_engine,
    run_follower,
)

from .errors import APIError
from .models import ModelEntry, ModelRegistry, demo_model_folder, generator_options
from .settings import ServerSettings

if TYPE_CHECKING:
    from mlx_harmony.generate.constrain import ConstraintSpec

__all__ = [
    "HEARTBEAT_S",
    "EngineOptions",
    "ShardedServerGenerator",
    "check_flags",
    "launched_group",
    "rank_failed",
    "serve_sharded",
]

HEARTBEAT_S = 1.0
"""Rank 0 sends an empty step this often while idle, so a dead follower is found early."""
GRACE_S = 5.0
"""After a rank fails, the seconds rank 0 has to answer the requests in flight before it exits."""
PREFILL_STEP_SIZE = 1024
"""The engine's prefill chunk: the same on every rank (`BatchTokenGenerator`'s default)."""


def launched_group() -> mx.distributed.Group | None:
    """The group `mlx.launch` set up for this process, None when it runs alone."""
    group = mx.distributed.init()
    return group if group.size() > 1 else None


def rank_failed(error: BaseException) -> APIError:
    """The 503 a request gets when a rank of the sharded model died or hung."""
    return APIError(
        503,
        f"the sharded model is lost ({error}); the server is exiting, restart the launch",
        code="rank_failed",
    )


class ShardedServerGenerator(ShardedBatchTokenGenerator):
    """Rank 0's generator: `ShardedBatchTokenGenerator` whose streams fail with the server's
    503 when a rank is lost, and which refuses constrained decoding (the server answers 400: a
    grammar mask is a Python callable that cannot travel to the other ranks)."""

    def compile_constraint(self, constraint: ConstraintSpec) -> NoReturn:
        raise ConstraintError(
            "structured outputs (response_format, strict or forced tool calls) are not "
            "available on a sharded model: the grammar mask cannot travel to the other ranks; "
            "leave them out, or serve the model in one process"
        )

    def stream(
        self,
        *,
        prompt_tokens: Sequence[int],
        constraint: ConstraintSpec | None = None,
        **kwargs: Any,
    ) -> Generator[StreamEvent, None, None]:
        if constraint is not None:
            self.compile_constraint(constraint)
        failure = self.failure
        if failure is not None:
            raise rank_failed(failure)
        try:
            yield from super().stream(prompt_tokens=prompt_tokens, **kwargs)
        except RankFailedError as error:
            raise rank_failed(error) from error


class EngineOptions(TypedDict):
    """`make_engine`'s options: `check_same_model` compares them across ranks."""

    max_batch_size: int
    prefill_step_size: int
    prefill_batch_size: int
    prompt_cache_size: int
    prompt_cache_bytes: int | None
    reseed_each_turn: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every rank derives alike from the same command line."""

    entry: ModelEntry
    path: str
    engine: EngineOptions


def _plan(settings: ServerSettings, registry: ModelRegistry) -> _Plan:
    entry = registry.default
    options = generator_options(entry)
    if options.max_kv_size is not None:
        raise ValueError(
            f"max_kv_size={options.max_kv_size} (prompt config): a rotating KV cache does not "
            "batch, and a sharded model runs only the batch engine; leave max_kv_size unset"
        )
    path = str(demo_model_folder()) if entry.is_demo else entry.model
    engine = EngineOptions(
        max_batch_size=settings.max_concurrency,
        prefill_step_size=PREFILL_STEP_SIZE,
        prefill_batch_size=settings.prompt_concurrency or DEFAULT_PREFILL_BATCH_SIZE,
        prompt_cache_size=settings.prompt_cache_size,
        prompt_cache_bytes=settings.prompt_cache_bytes,
        reseed_each_turn=options.reseed_each_turn,
    )
    return _Plan(entry, path, engine)


def serve_sharded(
    settings: ServerSettings,
    group: mx.distributed.Group,
    *,
    pipeline: bool,
    step_timeout_s: float,
    log_level: str = "info",
) -> int:
    """Every rank's whole life in a sharded launch; the exit status (see the module doc)."""
    from mlx_harmony.controller import ConfigError
    from mlx_harmony.generate import ModelLoadError
    from mlx_harmony.generate.sharded import check_same_model, load_sharded

    rank, size = group.rank(), group.size()
    say = _say(rank)
    try:
        registry = settings.registry()
        plan = _plan(settings, registry)
    except (ConfigError, ValueError) as error:
        say(str(error))
        return 2
    layout = "pipeline" if pipeline else "tensor"
    say(f"loading this rank's shard of {plan.path} ({layout} parallel over {size} ranks)")
    try:
        loaded = load_sharded(plan.path, group, pipeline=pipeline)
        check_same_model(loaded, plan.engine, group)
    except (ModelLoadError, RuntimeError) as error:
        say(str(error))  # RuntimeError: ModelMismatchError, or a rank that left the group
        return 1
    single = ModelRegistry(registry.default, created=registry.created)
    if rank != 0:
        engine = make_engine(loaded.model, **plan.engine)
        return run_follower(
            engine, group, step_timeout_s=step_timeout_s, heartbeat_s=HEARTBEAT_S, grace_s=GRACE_S
        )
    generator = ShardedServerGenerator(
        loaded,
        generator_options(plan.entry),  # its reseed_each_turn is plan.engine's
        group=group,
        step_timeout_s=step_timeout_s,
        heartbeat_s=HEARTBEAT_S,
        grace_s=GRACE_S,
        max_batch_size=plan.engine["max_batch_size"],
        prefill_step_size=plan.engine["prefill_step_size"],
        prefill_batch_size=plan.engine["prefill_batch_size"],
        prompt_cache_size=plan.engine["prompt_cache_size"],
        prompt_cache_bytes=plan.engine["prompt_cache_bytes"],
    )
    try:
        return _serve_http(settings, single, generator, log_level=log_level)
    finally:
        generator.close()  # tells the followers to stop (a no-op once the lifespan closed it)


def _serve_http(
    settings: ServerSettings,
    registry: ModelRegistry,
    generator: ShardedServerGenerator,
    *,
    log_level: str,
) -> int:
    import uvicorn

    from .app import create_app
    from .cli import uvicorn_options

    entry = registry.default

    def loader(wanted: ModelEntry) -> ShardedServerGenerator:
        if wanted.model != entry.model:  # the registry names only the default: a safeguard
            raise ValueError(f"a sharded server serves only {entry.id!r}, not {wanted.id!r}")
        return generator

    app = create_app(replace(settings, preload=True), loader=loader, registry=registry)
    where = f"http://{settings.host}:{settings.port}/v1"
    print(
        f"mlx-harmony-server: OpenAI API at {where} (rank 0 of {generator.group.size()})",
        file=sys.stderr,
    )
    options = uvicorn_options(settings, log_level=log_level)
    uvicorn.run(app, **options)
    return 0


def _say(rank: int) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(f"mlx-harmony-server[rank {rank}]: {message}", file=sys.stderr, flush=True)

    return say


def check_flags(args: argparse.Namespace, group: mx.distributed.Group | None) -> str | None:
    """The error for sharding flags given to a process that runs alone, else None."""
    if group is not None:
        return None
    given = [
        flag
        for flag, value in (("--pipeline", args.pipeline), ("--step-timeout", args.step_timeout))
        if value
    ]
    if not given:
        return None
    return (
        f"{' and '.join(given)} apply to a model sharded over the ranks of mlx.launch, and "
        "this process runs alone; start it with mlx.launch (mlx.launch -n 2 -- "
        "mlx-harmony-server ...) or leave them out"
    )
