"""Sharded (tensor parallel) decoding speed: ours (`DistributedEngine`) beside mlx-lm's
`sharded_load` + `stream_generate` / `batch_generate`, on the same model, in one run.

Run it under `mlx.launch` on N ranks, or plainly for the one-process numbers:

    # a random gpt-oss-120b-shaped 4-bit model (built once; any MLX gpt-oss folder works too)
    mlx-harmony-random-model /data/oss120 --shape gpt-oss-120b --bits 4
    mlx.launch --backend nccl -n 4 -- python tools/bench_sharded.py --model /data/oss120
    python tools/bench_sharded.py --model /data/oss120            # one process (if it fits)

    # CPU smoke test: a tiny shape on two ranks over the ring backend
    mlx-harmony-random-model /tmp/tiny --shape tiny
    mlx.launch --backend ring -n 2 -- python tools/bench_sharded.py --model /tmp/tiny

Rank 0 prints one JSON object: per implementation and stream count, the wall time, the
generated tokens, tokens/s (all streams together, prefill included) and the time to first token.
Prompts are random token ids of ``--prompt-tokens``; decoding is greedy with no stop tokens, so
every stream makes exactly ``--max-tokens`` tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time

import mlx.core as mx


def _prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    rng = random.Random(0)
    return [[rng.randrange(1000, vocab - 1000) for _ in range(length)] for _ in range(n)]


def _ours(args: argparse.Namespace, group: mx.distributed.Group) -> dict[str, dict[str, float]]:
    from mlx_harmony.generate.batch import BatchRequest
    from mlx_harmony.generate.distributed import DistributedEngine, make_engine, run_follower
    from mlx_harmony.generate.sharded import check_same_model, load_sharded

    loaded = load_sharded(args.model, group)
    options = {"max_batch_size": max(args.streams), "prefill_step_size": 2048}
    check_same_model(loaded, options, group)
    engine = make_engine(loaded.model, **options, prompt_cache_size=0)
    vocab = int(loaded.config["vocab_size"])
    results: dict[str, dict[str, float]] = {}
    if group.rank() != 0:
        code = run_follower(engine, group, step_timeout_s=600)
        if code:
            sys.exit(code)
        return results
    dist = DistributedEngine(engine, group, step_timeout_s=600)
    for streams in [1, *args.streams]:  # the first 1-stream run warms up
        prompts = _prompts(streams, args.prompt_tokens, vocab)
        start = time.perf_counter()
        first: dict[int, float] = {}
        ended = 0
        for prompt in prompts:
            dist.insert(BatchRequest(prompt, max_tokens=args.max_tokens))
        while ended < streams:
            for output in dist.step():
                if output.token is not None and output.uid not in first:
                    first[output.uid] = time.perf_counter() - start
                ended += output.finish_reason is not None
        wall = time.perf_counter() - start
        results[f"{streams}"] = {
            "wall_s": round(wall, 3),
            "tokens": streams * args.max_tokens,
            "tok_s": round(streams * args.max_tokens / wall, 2),
            "ttft_s": round(sum(first.values()) / len(first), 4),
        }
    dist.close()
    return results


def _mlx_lm(args: argparse.Namespace, group: mx.distributed.Group) -> dict[str, dict[str, float]]:
    from mlx_lm import batch_generate, load, stream_generate
    from mlx_lm.utils import sharded_load

    if group.size() > 1:
        model, tokenizer, config = sharded_load(args.model, None, group, return_config=True)
    else:
        model, tokenizer, config = load(args.model, return_config=True)
    vocab = int(config["vocab_size"])
    results: dict[str, dict[str, float]] = {}
    for streams in [1, *args.streams]:
        prompts = _prompts(streams, args.prompt_tokens, vocab)
        start = time.perf_counter()
        if streams == 1:
            ttft = 0.0
            for i, _ in enumerate(stream_generate(model, tokenizer, prompts[0], args.max_tokens)):
                if i == 0:
                    ttft = time.perf_counter() - start
        else:
            response = batch_generate(model, tokenizer, prompts, max_tokens=args.max_tokens)
            ttft = response.stats.prompt_time  # the batch's prefill: no per-stream first token
        wall = time.perf_counter() - start
        results[f"{streams}"] = {
            "wall_s": round(wall, 3),
            "tokens": streams * args.max_tokens,
            "tok_s": round(streams * args.max_tokens / wall, 2),
            "ttft_s": round(ttft, 4),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an MLX gpt-oss model folder")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--only", choices=("ours", "mlx-lm"), help="run one implementation")
    args = parser.parse_args(argv)
    if min(args.streams) < 1 or args.max_tokens < 1 or args.prompt_tokens < 1:
        parser.error("--streams, --max-tokens and --prompt-tokens must be positive")
    group = mx.distributed.init()
    report: dict[str, object] = {
        "ranks": group.size(),
        "device": str(mx.default_device()),
        "model": args.model,
        "max_tokens": args.max_tokens,
        "prompt_tokens": args.prompt_tokens,
    }
    if args.only != "mlx-lm":
        report["ours"] = _ours(args, group)
        gc.collect()
        mx.clear_cache()
    if args.only != "ours":
        report["mlx-lm"] = _mlx_lm(args, group)
    if group.rank() == 0:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
