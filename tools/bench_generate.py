"""Decode speed of our loop against mlx-lm's `stream_generate`, side by side in one run.

    python tools/bench_generate.py --shape tiny
    python tools/bench_generate.py --shape gpt-oss-20b --dtype bfloat16 [--bits 4]
    python tools/bench_generate.py --model PATH

Same model object, same prompt, greedy, no stop tokens, runs alternating (the order rotates each
round). Decode tokens/s is measured the same way for every variant: tokens after the first over
the time from the first token to the last. Variants:

- `ours`: TokenGenerator.generate (token ids; greedy is an argmax of the logits), cheap loop
  detection checking every 16 tokens (with a threshold that never fires: random models loop);
- `ours_logprobs`: the same with normalized log-probabilities per token, mlx-lm's arithmetic;
- `ours_text`: TokenGenerator.stream with UTF-8 text deltas;
- `mlx_lm`: mlx_lm.generate.stream_generate (log-probabilities and text every token).

It also measures what cheap loop detection costs per token, as a share of a decode step.

Imports only mlx, mlx-lm and this repo's packages, so it runs on a GPU machine with
``PYTHONPATH=packages/mlx-generate/src:packages/mlx-sampling/src:...`` and no uv.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import mlx.core as mx


def _build(args: argparse.Namespace) -> tuple[Any, str]:
    """A LoadedModel and a label."""
    from mlx_harmony.generate import LoadedModel, load_model

    if args.model:
        return load_model(args.model), Path(args.model).name
    from mlx_lm.utils import load_tokenizer

    from mlx_harmony.demo_model.random_model import build_random_model
    from mlx_harmony.demo_model.tokenizer import write_tokenizer_files

    dtype = getattr(mx, args.dtype) if args.dtype else None
    model, config = build_random_model(
        args.shape, seed=0, dtype=dtype, quantize_bits=args.bits, group_size=args.group_size
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    cache_dir = Path(args.cache_dir) if args.cache_dir else _default_cache_dir()
    write_tokenizer_files(folder, cache_dir=cache_dir)
    tokenizer = load_tokenizer(folder, eos_token_ids=config.get("eos_token_id"))
    label = f"random {args.shape}, {args.dtype or 'default dtype'}"
    if args.bits:
        label += f", {args.bits}-bit"
    loaded = LoadedModel(
        model=model, tokenizer=tokenizer, config=config, model_type="gpt_oss", path=folder
    )
    return loaded, label


def _default_cache_dir() -> Path:
    try:
        from mlx_harmony.demo_model.paths import mlx_harmony_home

        return mlx_harmony_home()
    except ImportError:
        return Path.home() / ".cache" / "mlx-harmony"


def _decode_rate(times: list[float]) -> float:
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def _run_ours(generator: Any, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
    times = []
    start = time.perf_counter()
    for _ in generator.generate(prompt_tokens=prompt, max_tokens=max_tokens, stop_tokens=()):
        times.append(time.perf_counter())
    return _decode_rate(times), times[0] - start, len(times)


def _run_ours_text(generator: Any, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
    times = []
    start = time.perf_counter()
    for event in generator.stream(prompt_tokens=prompt, max_tokens=max_tokens, stop_tokens=()):
        if event.token is not None:
            times.append(time.perf_counter())
    return _decode_rate(times), times[0] - start, len(times)


def _run_ours_logprobs(
    generator: Any, prompt: list[int], max_tokens: int
) -> tuple[float, float, int]:
    times = []
    start = time.perf_counter()
    for event in generator.stream(
        prompt_tokens=prompt, max_tokens=max_tokens, stop_tokens=(), logprobs=True, detokenize=False
    ):
        if event.token is not None:
            times.append(time.perf_counter())
    return _decode_rate(times), times[0] - start, len(times)


def _run_mlx_lm(loaded: Any, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
    from mlx_lm.generate import stream_generate

    times = []
    start = time.perf_counter()
    for _ in stream_generate(loaded.model, loaded.tokenizer, prompt, max_tokens=max_tokens):
        times.append(time.perf_counter())
    return _decode_rate(times), times[0] - start, len(times)


def _loop_detection_cost_s(check_every: int) -> float:
    """Seconds per generated token that cheap loop detection spends, on a realistic tail."""
    from mlx_harmony.generate import make_loop_detector

    detector = make_loop_detector("cheap", check_every=check_every)
    rng = random.Random(0)
    tokens = [rng.randrange(199_998) for _ in range(4096)]
    calls = 2000
    start = time.perf_counter()
    for i in range(calls):
        tokens[-1] = i  # a fresh tail each call, like a growing generation
        detector(tokens)
    per_call = (time.perf_counter() - start) / calls
    return per_call / detector.interval


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="an MLX model folder or Hugging Face repo id")
    source.add_argument("--shape", default="tiny", help="random gpt-oss shape: tiny, gpt-oss-20b")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16, float32 (random model)")
    parser.add_argument("--bits", type=int, default=None, help="quantize the random model")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--cache-dir", default=None, help="where the tokenizer build is cached")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    from mlx_harmony.generate import TokenGenerator, make_loop_detector

    loaded, label = _build(args)
    loaded.tokenizer.eos_token_ids = set()  # mlx-lm must not stop early either
    # Cheap loop detection runs its checks every 16 tokens, with a repeat count that never fires:
    # greedy random models loop, and every run must reach max_tokens.
    detector = make_loop_detector("cheap", min_repeats=10**6)
    generator = TokenGenerator(loaded, prompt_cache=False, loop_detection=detector)
    rng = random.Random(1)
    prompt = [rng.randrange(199_998) for _ in range(args.prompt_tokens)]

    variants = {
        "ours": lambda: _run_ours(generator, prompt, args.max_tokens),
        "ours_logprobs": lambda: _run_ours_logprobs(generator, prompt, args.max_tokens),
        "ours_text": lambda: _run_ours_text(generator, prompt, args.max_tokens),
        "mlx_lm": lambda: _run_mlx_lm(loaded, prompt, args.max_tokens),
    }
    names = list(variants)
    for name in names:  # warm up kernels and caches
        variants[name]()
    rates: dict[str, list[float]] = {name: [] for name in names}
    ttfts: dict[str, list[float]] = {name: [] for name in names}
    for run in range(args.runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for name in order:
            rate, ttft, count = variants[name]()
            if count != args.max_tokens:
                print(
                    f"{name} produced {count} tokens, expected {args.max_tokens}", file=sys.stderr
                )
                return 1
            rates[name].append(rate)
            ttfts[name].append(ttft)

    medians = {name: statistics.median(r) for name, r in rates.items()}
    # Each round runs every variant back to back: the median of the per-round ratios is robust
    # to a machine whose speed drifts between rounds.
    paired = {
        name: statistics.median(a / b for a, b in zip(rates[name], rates["mlx_lm"], strict=True))
        for name in names
        if name != "mlx_lm"
    }
    decode_step_s = 1.0 / medians["ours"]
    loop_cost = _loop_detection_cost_s(generator.loop_detector.check_every)
    results = {
        "model": label,
        "device": str(mx.default_device()),
        "mlx": mx.__version__,
        "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens,
        "runs": args.runs,
        "decode_tokens_per_s": rates,
        "median_decode_tokens_per_s": medians,
        "median_ttft_s": {name: statistics.median(t) for name, t in ttfts.items()},
        "ratio_of_medians_vs_mlx_lm": {
            name: medians[name] / medians["mlx_lm"] for name in names if name != "mlx_lm"
        },
        "median_paired_ratio_vs_mlx_lm": paired,
        "loop_detection_cheap_us_per_token": loop_cost * 1e6,
        "loop_detection_cheap_share_of_decode": loop_cost / decode_step_s,
    }
    print(f"model: {label} on {results['device']} (mlx {mx.__version__})")
    print(f"prompt {args.prompt_tokens} tokens, {args.max_tokens} new tokens, {args.runs} runs")
    for name in names:
        runs = ", ".join(f"{r:.1f}" for r in rates[name])
        print(f"  {name:14s} median {medians[name]:8.1f} tok/s   runs: {runs}")
    for name, ratio in paired.items():
        print(
            f"ratio {name} / mlx-lm: {ratio:.3f} (median of per-round ratios), "
            f"{medians[name] / medians['mlx_lm']:.3f} (ratio of medians)"
        )
    print(
        f"cheap loop detection: {loop_cost * 1e6:.2f} us per token = "
        f"{100 * results['loop_detection_cheap_share_of_decode']:.3f}% of a decode step"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
