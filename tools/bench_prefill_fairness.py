"""How long a short request waits behind a long prompt, and what it costs the long one.

    uv run python tools/bench_prefill_fairness.py                       # demo model, 20k tokens
    uv run python tools/bench_prefill_fairness.py --model PATH --long 100000

Runs mlx-generate's `BatchTokenGenerator` (the server's engine) on one model, rounds of:

- `long alone`: one request with a `--long`-token prompt; its time to first token (its prefill);
- `long + short`: the same long request, and `--delay` seconds after it starts, a request with a
  `--short`-token prompt; the short one's time to first token (its wait) and the long one's.

The long one's slowdown is its time to first token with the short one beside it over its time
alone. Greedy, no stop tokens, `--tokens` new tokens each; prompts are random token ids, and the
prompt cache is off so every round prefills everything. Prints a table, writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any


def _prompt(n: int, seed: int, vocab: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, vocab - 1) for _ in range(n)]


def _first_token_s(
    generator: Any, prompt: list[int], tokens: int, out: dict[str, float], name: str, started: float
) -> None:
    """Stream `prompt`; record seconds from `started` to the first token under `name`."""
    for event in generator.stream(prompt_tokens=prompt, max_tokens=tokens, stop_tokens=()):
        if event.token is not None and name not in out:
            out[name] = time.perf_counter() - started


def run_round(
    generator: Any, long: list[int], short: list[int] | None, *, delay: float, tokens: int
) -> dict[str, float]:
    """One round; seconds to first token of ``long`` (from its start) and ``short`` (from its
    own start)."""
    times: dict[str, float] = {}
    started = time.perf_counter()
    worker = threading.Thread(
        target=_first_token_s, args=(generator, long, tokens, times, "long", started)
    )
    worker.start()
    if short is not None:
        time.sleep(delay)
        short_started = time.perf_counter()
        _first_token_s(generator, short, tokens, times, "short", short_started)
    worker.join()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: the demo model)")
    parser.add_argument("--long", type=int, default=20_000, help="long prompt tokens (20000)")
    parser.add_argument("--short", type=int, default=8, help="short prompt tokens (8)")
    parser.add_argument("--delay", type=float, default=0.3, help="seconds before the short one")
    parser.add_argument("--tokens", type=int, default=4, help="new tokens per request (4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind (3)")
    parser.add_argument("--prefill-step", type=int, default=1024, help="prefill chunk (1024)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    from mlx_harmony.generate import BatchTokenGenerator

    if args.model is None:
        from mlx_harmony.demo_model import ensure_demo_model

        model_path: str = str(ensure_demo_model(progress=False))
    else:
        model_path = args.model
    generator = BatchTokenGenerator(
        model_path, max_batch_size=4, prefill_step_size=args.prefill_step, prompt_cache_size=0
    )
    vocab = int(generator.loaded.config.get("vocab_size", 200_000))
    long = _prompt(args.long, 1, vocab)
    short = _prompt(args.short, 2, vocab)
    run_round(generator, short, None, delay=0, tokens=args.tokens)  # warm-up
    alone: list[float] = []
    together: list[dict[str, float]] = []
    for _ in range(args.rounds):
        alone.append(run_round(generator, long, None, delay=0, tokens=args.tokens)["long"])
        together.append(run_round(generator, long, short, delay=args.delay, tokens=args.tokens))
    generator.close()

    long_alone = statistics.median(alone)
    long_with = statistics.median(t["long"] for t in together)
    short_wait = statistics.median(t["short"] for t in together)
    result = {
        "model": model_path,
        "machine": platform.platform(),
        "long_tokens": args.long,
        "short_tokens": args.short,
        "prefill_step": args.prefill_step,
        "long_alone_ttft_s": alone,
        "long_with_short_ttft_s": [t["long"] for t in together],
        "short_wait_s": [t["short"] for t in together],
        "median": {
            "long_alone_ttft_s": long_alone,
            "long_with_short_ttft_s": long_with,
            "short_wait_s": short_wait,
            "long_slowdown": long_with / long_alone if long_alone else None,
        },
    }
    print(f"long prompt {args.long} tokens, short {args.short}, chunk {args.prefill_step}")
    print(f"  long alone, time to first token      {long_alone:8.3f} s")
    print(
        f"  long beside short, time to first token {long_with:6.3f} s "
        f"(x{long_with / long_alone:.3f})"
    )
    print(f"  short request's wait (time to first token) {short_wait:.3f} s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
