"""Two conversations with the same long instructions: what the second one prefills.

    python tools/bench_shared_prefix.py                        # 5,000-token shared prefix
    python tools/bench_shared_prefix.py --shared-tokens 1500   # CPU-sized
    python tools/bench_shared_prefix.py --shape gpt-oss-20b --dtype bfloat16
    python tools/bench_shared_prefix.py --model PATH

A Harmony-shaped prompt: a system message and a developer message (together `--shared-tokens`
long, like an agent's instructions and tool definitions), then a user message that differs per
conversation. Each conversation runs as the batch engine runs a request over a
`SharedPromptCache`: fetch the longest cached prefix, prefill the rest up to the last token,
store the prompt. Variants, each on its own empty shared cache:

- `checkpoints`: prefill stops after the system and developer messages and snapshots the
  sliding-window layers there (`prefill.harmony_message_boundaries`, `max_boundaries=2`);
- `plain`: no checkpoints (the shared cache as it was: a wrapped window cannot go back).

Reported for the second conversation: prompt tokens, tokens reused, tokens prefilled, prefill
time; and the bytes the checkpoints hold against the bytes of the cache entries.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx

START, END, MESSAGE = 200006, 200007, 200008


def _build(args: argparse.Namespace) -> tuple[Any, str]:
    from mlx_harmony.generate import load_model

    if args.model:
        return load_model(args.model), Path(args.model).name
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    dtype = getattr(mx, args.dtype) if args.dtype else None
    model, config = build_random_model(args.shape, seed=0, dtype=dtype, quantize_bits=args.bits)
    folder = Path(tempfile.mkdtemp(prefix="bench-shared-prefix-"))
    save_model(model, config, folder, cache_dir=folder / "tokenizer-cache")
    return load_model(folder), f"random {args.shape}" + (f" {args.bits}-bit" if args.bits else "")


def _message(role: int, body: list[int]) -> list[int]:
    return [START, role, MESSAGE, *body, END]


def _prompts(shared_tokens: int, user_tokens: int) -> tuple[list[int], list[int], int]:
    system_len = shared_tokens * 3 // 4
    system = _message(17, [1000 + i % 5000 for i in range(system_len - 4)])
    developer = _message(18, [7000 + i % 5000 for i in range(shared_tokens - system_len - 4)])
    shared = system + developer

    def conversation(base: int) -> list[int]:
        return shared + _message(19, [base + i for i in range(user_tokens)]) + [START, 20]

    return conversation(20000), conversation(30000), len(shared)


def _run(
    loaded: Any, shared: Any, prompt: list[int], args: argparse.Namespace, marks: bool
) -> dict:
    from mlx_harmony.generate import make_cache
    from mlx_harmony.generate.prefill import harmony_message_boundaries, prefill

    t0 = time.perf_counter()
    hit = shared.fetch(prompt)
    caches = hit.caches if hit is not None else make_cache(loaded.model)
    reused = hit.reused if hit is not None else 0
    boundaries = harmony_message_boundaries(prompt, max_boundaries=2) if marks else ()
    snapshots = prefill(
        loaded.model,
        caches,
        prompt[reused:-1],
        start=reused,
        prefill_step_size=args.prefill_step_size,
        checkpoints=boundaries,
    )
    elapsed = time.perf_counter() - t0
    shared.insert(prompt[:-1], caches, single_tail=False, checkpoints=snapshots)
    return {
        "prompt": len(prompt),
        "reused": reused,
        "prefilled": len(prompt) - 1 - reused,
        "s": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    from mlx_harmony.generate import SharedPromptCache

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="an MLX gpt-oss folder instead of a random shape")
    parser.add_argument("--shape", default="tiny", help="random gpt-oss preset (tiny, gpt-oss-20b)")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--bits", type=int, default=None, help="quantize the random weights")
    parser.add_argument("--shared-tokens", type=int, default=5000)
    parser.add_argument("--user-tokens", type=int, default=60)
    parser.add_argument("--prefill-step-size", type=int, default=2048)
    args = parser.parse_args(argv)

    loaded, label = _build(args)
    first, second, shared_len = _prompts(args.shared_tokens, args.user_tokens)
    print(f"model: {label} on {mx.default_device()} (mlx {mx.__version__})")
    print(f"shared prefix {shared_len} tokens (system + developer), prompts {len(second)}")
    header = (
        f"{'variant':>12} {'reused':>7} {'prefilled':>10} {'prefill s':>10} "
        f"{'entries MB':>11} {'checkpoints MB':>15}"
    )
    print("second conversation:")
    print(header)
    print("-" * len(header))
    for name, marks in (("checkpoints", True), ("plain", False)):
        shared = SharedPromptCache()
        _run(loaded, shared, first, args, marks)
        row = _run(loaded, shared, second, args, marks)
        ckpt = shared.checkpoint_nbytes
        print(
            f"{name:>12} {row['reused']:>7} {row['prefilled']:>10} {row['s']:>10.3f} "
            f"{(shared.nbytes - ckpt) / 2**20:>11.2f} {ckpt / 2**20:>15.2f}"
        )
        mx.clear_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
