"""Aggregate decode throughput of our batch engine against mlx-lm's, side by side in one run.

    python tools/bench_batch_engine.py --shape tiny
    python tools/bench_batch_engine.py --shape gpt-oss-20b --bits 4 --concurrency 1,2,4,8,16

For each concurrency C, C requests (random prompts of --prompt-len tokens, greedy, no stop
tokens, --tokens new tokens each) go into a fresh engine at once, and the clock runs from the
first step to the last token: aggregate tokens/s = C * tokens / time, prefill included (both
engines prefill the same prompts). Variants, on the same model object, alternating per round:

- `ours`: mlx_harmony.generate.BatchGenerator (short prompts that arrive together prefilled in
  one forward pass, up to `prefill_batch_size` 8; per-request samplers);
- `ours_one_at_a_time`: the same with ``prefill_batch_size=1`` (every prompt prefilled alone,
  between decode steps: the engine before 2026-12-06);
- `mlx_lm`: mlx_lm.generate.BatchGenerator (prompts prefilled in batches).

Each C gets a warm-up round first (MLX compiles kernels for every new batch shape). Prints a
table with ratios ours/mlx_lm and ours at C / ours at 1, and writes JSON with --out.

Imports only mlx, mlx-lm and this repo's mlx-generate and demo-model sources, so it runs on a GPU
machine with the sources on PYTHONPATH and no uv.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

import mlx.core as mx


def _prompts(n: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(1000, 199_000) for _ in range(length)] for _ in range(n)]


def run_ours(
    model: Any, prompts: list[list[int]], tokens: int, *, prefill_batch_size: int = 8
) -> tuple[float, int]:
    from mlx_harmony.generate import BatchGenerator, BatchRequest

    engine = BatchGenerator(
        model, max_batch_size=len(prompts), prefill_batch_size=prefill_batch_size
    )
    for prompt in prompts:
        engine.insert(BatchRequest(prompt=prompt, max_tokens=tokens))
    produced = 0
    start = time.perf_counter()
    while engine.has_work:
        produced += sum(o.token is not None for o in engine.step())
    return time.perf_counter() - start, produced


def run_mlx_lm(model: Any, prompts: list[list[int]], tokens: int) -> tuple[float, int]:
    from mlx_lm.generate import BatchGenerator

    engine = BatchGenerator(
        model,
        max_tokens=tokens,
        stop_tokens=[],
        completion_batch_size=len(prompts),
        prefill_batch_size=len(prompts),
    )
    engine.insert(prompts, max_tokens=[tokens] * len(prompts))
    produced = 0
    done = 0
    start = time.perf_counter()
    while done < len(prompts):
        for response in engine.next_generated():
            produced += 1
            if response.finish_reason is not None:
                done += 1
    elapsed = time.perf_counter() - start
    engine.close()
    return elapsed, produced


def run_ours_one_at_a_time(model: Any, prompts: list[list[int]], tokens: int) -> tuple[float, int]:
    """Ours as before 2026-12-06: every newcomer prefilled alone, between decode steps."""
    return run_ours(model, prompts, tokens, prefill_batch_size=1)


VARIANTS = {"ours": run_ours, "ours_one_at_a_time": run_ours_one_at_a_time, "mlx_lm": run_mlx_lm}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="tiny", help="random gpt-oss preset (tiny, gpt-oss-20b)")
    parser.add_argument("--dtype", default=None, help="bfloat16, float32 (default: by device)")
    parser.add_argument("--bits", type=int, default=None, help="quantize linear layers")
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from mlx_harmony.demo_model.random_model import build_random_model

    dtype = getattr(mx, args.dtype) if args.dtype else None
    t0 = time.perf_counter()
    model, _ = build_random_model(args.shape, seed=0, dtype=dtype, quantize_bits=args.bits)
    print(f"model built in {time.perf_counter() - t0:.1f} s on {mx.default_device()}", flush=True)
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, dict[str, list[float]]] = {}
    for c in levels:
        prompts = _prompts(c, args.prompt_len, seed=c)
        for run in VARIANTS.values():  # warm-up: compile this batch shape
            run(model, prompts, min(args.tokens, 8))
        rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
        names = list(VARIANTS)
        for r in range(args.rounds):
            k = r % len(names)
            for name in names[k:] + names[:k]:  # each variant goes first in turn
                elapsed, produced = VARIANTS[name](model, prompts, args.tokens)
                if produced != c * args.tokens:
                    raise RuntimeError(f"{name} produced {produced} of {c * args.tokens} tokens")
                rates[name].append(produced / elapsed)
        results[str(c)] = rates
        ratio = statistics.median(rates["ours"]) / statistics.median(rates["mlx_lm"])
        print(
            f"C={c:>2}: "
            + "  ".join(f"{n} {statistics.median(v):8.1f} tok/s" for n, v in rates.items())
            + f"  ours/mlx_lm {ratio:.2f}",
            flush=True,
        )
    base = statistics.median(results[str(levels[0])]["ours"])
    print(
        "\n| streams | ours tok/s | ours, one prefill at a time | mlx-lm tok/s | ours / mlx-lm "
        "| one at a time / mlx-lm | ours vs 1 stream |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        ours, alone, theirs = (
            statistics.median(results[str(c)][name])
            for name in ("ours", "ours_one_at_a_time", "mlx_lm")
        )
        print(
            f"| {c} | {ours:.1f} | {alone:.1f} | {theirs:.1f} | {ours / theirs:.2f} "
            f"| {alone / theirs:.2f} | {ours / base:.2f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "shape": args.shape,
                    "bits": args.bits,
                    "dtype": args.dtype,
                    "device": str(mx.default_device()),
                    "device_info": {k: str(v) for k, v in mx.device_info().items()},
                    "machine": platform.platform(),
                    "tokens": args.tokens,
                    "prompt_len": args.prompt_len,
                    "rates_tok_s": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
