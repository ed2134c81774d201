"""One rank of a sharded generation run, launched by the distributed tests (and usable by hand):

    mlx.launch --backend ring -n 2 -- python lockstep_worker.py --model DIR --out result.json

Rank 0 loads its shard, checks that every rank loaded the same model, generates for a few
prompts at once (greedy; one request cancelled after ``--cancel-after`` tokens) through
`DistributedEngine`, and writes the tokens as JSON to ``--out``; the other ranks follow. On a
rank failure rank 0 writes the failure and the requests it ended instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx

from mlx_harmony.generate.batch import BatchOutput, BatchRequest
from mlx_harmony.generate.distributed import (
    EXIT_RANK_FAILURE,
    DistributedEngine,
    RankFailedError,
    ShardedBatchTokenGenerator,
    make_engine,
    run_follower,
)
from mlx_harmony.generate.loading import LoadedModel
from mlx_harmony.generate.sharded import check_same_model, load_sharded
from mlx_harmony.harmony_format import Message, render_prompt

QUESTIONS = (
    "What time is it?",
    "Tell me about the moon.",
    "How do I bake bread?",
    "Why is the sky blue? Answer briefly please.",
)


def prompts() -> list[list[int]]:
    """The test's prompts: different texts, so different lengths and answers."""
    return [list(render_prompt([Message.user(q)])) for q in QUESTIONS]


def _write(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--cancel-after", type=int, default=5)
    parser.add_argument("--step-timeout", type=float, default=30.0)
    parser.add_argument(
        "--api",
        choices=("engine", "generator"),
        default="engine",
        help="drive DistributedEngine directly, or ShardedBatchTokenGenerator from 4 threads",
    )
    args = parser.parse_args()

    group = mx.distributed.init()
    rank = group.rank()
    loaded = load_sharded(args.model, group)
    options = {"max_batch_size": 8, "prefill_step_size": 64}
    salt = os.environ.get("MLX_HARMONY_TEST_SALT_RANK")
    if salt is not None and int(salt) == rank:
        options["salt"] = "different"
    try:
        check_same_model(loaded, options, group)
    except Exception as error:
        print(f"rank {rank}: {error}", file=sys.stderr, flush=True)
        return 3
    engine = make_engine(loaded.model, max_batch_size=8, prefill_step_size=64)
    timeouts = {"step_timeout_s": args.step_timeout, "heartbeat_s": 0.5, "grace_s": 3.0}
    if rank != 0:
        return run_follower(engine, group, **timeouts)
    if args.api == "generator":
        return _run_generator(args, loaded, group, timeouts)

    tokens: dict[int, list[int]] = {}
    reasons: dict[int, str] = {}
    failed: dict[str, object] = {}

    def on_failure(error: RankFailedError) -> None:
        failed["error"] = str(error)
        failed["ended"] = sorted(uid for uid in tokens if uid not in reasons)
        failed["pid"] = os.getpid()
        _write(args.out, {"failure": failed, "tokens": tokens})

    dist = DistributedEngine(engine, group, **timeouts, on_failure=on_failure)
    cancelled = 0

    def cancel_check() -> bool:
        return len(tokens[cancelled]) >= args.cancel_after

    for i, prompt in enumerate(prompts()):
        cancel = cancel_check if i == cancelled else None
        uid = dist.insert(BatchRequest(prompt, max_tokens=args.max_tokens, cancel=cancel))
        tokens[uid] = []
    started = time.perf_counter()
    marker = args.out.with_suffix(".started")
    try:
        while len(reasons) < len(tokens):
            outputs: list[BatchOutput] = dist.step()
            for output in outputs:
                if output.token is not None:
                    tokens[output.uid].append(output.token)
                if output.finish_reason is not None:
                    reasons[output.uid] = output.finish_reason.value
            if not marker.exists() and any(tokens.values()):
                marker.write_text(str(os.getpid()))
        dist.close()
    except RankFailedError:
        return EXIT_RANK_FAILURE
    _write(
        args.out,
        {
            "tokens": tokens,
            "reasons": reasons,
            "seconds": time.perf_counter() - started,
            "ranks": group.size(),
        },
    )
    return 0


def _run_generator(
    args: argparse.Namespace,
    loaded: LoadedModel,
    group: mx.distributed.Group,
    timeouts: dict[str, float],
) -> int:
    """Rank 0 through the server's interface: one thread per request, as HTTP handlers."""
    generator = ShardedBatchTokenGenerator(
        loaded, group=group, **timeouts, max_batch_size=8, prefill_step_size=64
    )
    tokens: dict[int, list[int]] = {i: [] for i in range(len(QUESTIONS))}
    reasons: dict[int, str] = {}
    errors: dict[int, str] = {}

    def run(i: int, prompt: list[int]) -> None:
        cancel = threading.Event()
        try:
            for event in generator.stream(
                prompt_tokens=prompt,
                max_tokens=args.max_tokens,
                stop_tokens=[],
                loop_detection="off",
                cancel=cancel,
            ):
                if event.token is not None:
                    tokens[i].append(event.token)
                if event.stop_reason is not None:
                    reasons[i] = event.stop_reason.value
                if i == 0 and len(tokens[i]) >= args.cancel_after:
                    cancel.set()
        except Exception as error:
            errors[i] = f"{type(error).__name__}: {error}"

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=item) for item in enumerate(prompts())]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    generator.close()
    _write(
        args.out,
        {
            "tokens": tokens,
            "reasons": reasons,
            "errors": errors,
            "seconds": seconds,
            "ranks": group.size(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
