"""Sampler and logits-processor call times: mlx_harmony.sampling against mlx_lm.sample_utils.

Run: uv run python tools/bench_sampling.py [--vocab 201088] [--iters 50] [--fresh 3]

Both sides run on the same log-probabilities in one process, alternating call by call after a
warm-up, so machine load hits both alike. Each timing covers the call and the mx.eval of its
result. ratio = theirs / ours: above 1 means ours is faster. The "first call, new value" row
times the first call of samplers built with temperatures never used before (each run adds a few
kernels to MLX's on-disk kernel cache).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import mlx.core as mx
from mlx_lm import sample_utils

from mlx_harmony import sampling

SAMPLER_CONFIGS: dict[str, dict[str, float]] = {
    "greedy": {"temperature": 0.0},
    "temperature": {"temperature": 1.0},
    "temperature+top_p": {"temperature": 0.8, "top_p": 0.9},
    "top_k": {"temperature": 1.0, "top_k": 50},
    "min_p": {"temperature": 1.0, "min_p": 0.05},
    "full chain": {
        "temperature": 0.8,
        "top_p": 0.95,
        "min_p": 0.02,
        "top_k": 50,
        "xtc_probability": 0.5,
        "xtc_threshold": 0.1,
    },
}

PROCESSOR_CONFIGS: dict[str, dict[str, object]] = {
    "repetition_penalty": {"repetition_penalty": 1.1},
    "all processors": {
        "logit_bias": {0: -1.0, 7: 2.0, 999: 0.5},
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.3,
    },
}


def _lm_sampler_options(options: dict[str, float]) -> dict[str, float]:
    theirs = dict(options)
    theirs["temp"] = theirs.pop("temperature")
    return theirs


def _time(call: Callable[[], mx.array]) -> float:
    start = time.perf_counter()
    mx.eval(call())
    return time.perf_counter() - start


def _compare(
    ours: Callable[[], mx.array], theirs: Callable[[], mx.array], *, iters: int, warmup: int
) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        mx.eval(ours())
        mx.eval(theirs())
    ours_times, theirs_times = [], []
    for i in range(iters):
        # Alternate which side goes first, so neither always runs on a warmer cache.
        if i % 2:
            ours_times.append(_time(ours))
            theirs_times.append(_time(theirs))
        else:
            theirs_times.append(_time(theirs))
            ours_times.append(_time(ours))
    return ours_times, theirs_times


def _row(name: str, ours: list[float], theirs: list[float]) -> str:
    """Medians per side; the ratio is the median of the per-pair ratios, so a load spike that
    hits one pair does not tilt it."""
    ratio = statistics.median(t / o for o, t in zip(ours, theirs, strict=True))
    o, t = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
    return f"| {name:<20} | {o:9.3f} | {t:9.3f} | {ratio:5.2f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=201088, help="vocabulary size V")
    parser.add_argument("--iters", type=int, default=50, help="timed calls per side")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per side")
    parser.add_argument("--context", type=int, default=100, help="token history length")
    parser.add_argument(
        "--fresh", type=int, default=3, help="samplers with never-seen temperatures per side"
    )
    args = parser.parse_args(argv)

    logits = mx.random.normal((1, args.vocab), key=mx.random.key(0)) * 4
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    tokens = mx.random.randint(0, args.vocab, (args.context,), key=mx.random.key(1))
    mx.eval(logprobs, tokens)

    print(
        f"device: {mx.default_device()}, mlx {mx.__version__}, logprobs (1, {args.vocab}) float32"
    )
    print(
        f"median ms per call over {args.iters} alternating pairs;"
        " ratio = median of theirs / ours per pair\n"
    )
    print("| sampler              |   ours ms | mlx-lm ms | ratio |")
    print("|----------------------|-----------|-----------|-------|")
    for name, options in SAMPLER_CONFIGS.items():
        ours = sampling.make_sampler(**options, seed=0)
        mx.random.seed(0)
        theirs = sample_utils.make_sampler(**_lm_sampler_options(options))
        times = _compare(
            lambda s=ours: s(logprobs),
            lambda s=theirs: s(logprobs),
            iters=args.iters,
            warmup=args.warmup,
        )
        print(_row(name, *times))

    # mlx-lm bakes temperature and top_p into its compiled kernels as constants, so every new
    # value compiles new kernels; ours passes them as inputs and reuses the kernels.
    print("\n| first call, new value |   ours ms | mlx-lm ms | ratio |")
    print("|----------------------|-----------|-----------|-------|")
    rng = random.Random()
    ours_times, theirs_times = [], []
    for _ in range(args.fresh):
        temperature = round(rng.uniform(0.5, 0.99), 12)
        ours = sampling.make_sampler(temperature=temperature, top_p=0.9, seed=0)
        theirs = sample_utils.make_sampler(temp=temperature, top_p=0.9)
        ours_times.append(_time(lambda s=ours: s(logprobs)))
        theirs_times.append(_time(lambda s=theirs: s(logprobs)))
    print(_row("temperature+top_p", ours_times, theirs_times))

    print(f"\n| processors (T={args.context:<4})  |   ours ms | mlx-lm ms | ratio |")
    print("|----------------------|-----------|-----------|-------|")
    for name, options in PROCESSOR_CONFIGS.items():
        ours_chain = sampling.make_logits_processors(**options)
        theirs_chain = sample_utils.make_logits_processors(**options)

        def run(chain: list[sampling.LogitsProcessor]) -> mx.array:
            # mlx-lm's processors write into the logits they get: give each call its own copy.
            x = logits * 1
            mx.eval(x)
            start = time.perf_counter()
            for processor in chain:
                x = processor(tokens, x)
            mx.eval(x)
            return time.perf_counter() - start

        for _ in range(args.warmup):
            run(ours_chain)
            run(theirs_chain)
        ours_times, theirs_times = [], []
        for i in range(args.iters):
            pair = (ours_chain, theirs_chain) if i % 2 else (theirs_chain, ours_chain)
            first, second = run(pair[0]), run(pair[1])
            ours_times.append(first if i % 2 else second)
            theirs_times.append(second if i % 2 else first)
        print(_row(name, ours_times, theirs_times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
