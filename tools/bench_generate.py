"""Decode speed of our loop against mlx-lm's `stream_generate`, side by side in one run.

    python tools/bench_generate.py --shape tiny
    python tools/bench_generate.py --shape gpt-oss-20b --dtype bfloat16 [--bits 4 [--mode mxfp4]]
    python tools/bench_generate.py --model PATH
    python tools/bench_generate.py --contexts 1024,4096,8192,32768 --max-tokens 64

Same model object, same prompt, greedy, no stop tokens, runs alternating (the order rotates each
round). Decode tokens/s is measured the same way for every variant: tokens after the first over
the time from the first token to the last. Variants:

- `ours`: TokenGenerator.generate (token ids; greedy is an argmax of the logits), cheap loop
  detection checking every 16 tokens (with a threshold that never fires: random models loop);
- `ours_logprobs`: the same with normalized log-probabilities per token, mlx-lm's arithmetic;
- `ours_text`: TokenGenerator.stream with UTF-8 text deltas;
- `mlx_lm`: mlx_lm.generate.stream_generate (log-probabilities and text every token);
- `eager`: our `stream_generate` with `compiled=False` (token ids, greedy), mlx-lm's step;
- `compiled`: our `stream_generate` with `compiled=True`, the compiled static-shape step.

`ours*` take whatever `TokenGenerator` defaults to (the compiled step where it applies).
`--variants` picks a subset. Each variant's peak memory (`mx.get_peak_memory`, reset before each
run) is reported. With `compiled` among the variants it also measures what a bucket change costs:
one more run from a fresh compile, buckets of `--bucket-probe` positions, so the full-attention
buffers grow in the middle of the run; the first token after the change pays for the compile.

It also measures what cheap loop detection costs per token, as a share of a decode step.

`--contexts` measures instead the decode step time at long contexts: for each length, the
prompt but its last token is prefilled once into mlx-lm's caches; then `eager`, `compiled`,
`compiled_bucket` (the compiled step attending over its whole bucket, as before attention spans
were introduced: `SPANS_PER_BUCKET = 1`) and `mlx_lm` each continue a copy of those caches from
the prompt's last token for `--max-tokens` tokens (one warm-up run each, then `--runs`
alternating rounds), and their greedy tokens are compared.

`--batch-sizes` measures what a decode step of the batch engine (`BatchGenerator`, eager)
costs at each batch size, once every request has joined, against the single-stream eager and
compiled steps on the same prompt: milliseconds per step and per token, median of `--runs`.

Imports only mlx, mlx-lm and this repo's packages, so it runs on a GPU machine with
``PYTHONPATH=packages/mlx-generate/src:packages/mlx-sampling/src:...`` and no uv.
"""

from __future__ import annotations

import argparse
import copy
import itertools
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
    affine = args.mode == "affine"
    model, config = build_random_model(
        args.shape,
        seed=0,
        dtype=dtype,
        quantize_bits=args.bits if affine else None,
        group_size=args.group_size,
        **({"head_dim": args.head_dim} if args.head_dim else {}),
    )
    if args.bits and not affine:
        import mlx.nn as nn

        nn.quantize(
            model,
            group_size=args.group_size,
            bits=args.bits,
            mode=args.mode,
            class_predicate=lambda _, m: (
                hasattr(m, "to_quantized") and not isinstance(m, nn.Embedding)
            ),
        )
        mx.eval(model.parameters())
    folder = Path(tempfile.mkdtemp(prefix="bench-tokenizer-"))
    cache_dir = Path(args.cache_dir) if args.cache_dir else _default_cache_dir()
    write_tokenizer_files(folder, cache_dir=cache_dir)
    tokenizer = load_tokenizer(folder, eos_token_ids=config.get("eos_token_id"))
    label = f"random {args.shape}, {args.dtype or 'default dtype'}"
    if args.bits:
        label += f", {args.bits}-bit {args.mode}"
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


def _run_loop(
    loaded: Any, prompt: list[int], max_tokens: int, *, compiled: bool, min_bucket: int = 1024
) -> tuple[float, float, int]:
    from mlx_harmony.generate.loop import stream_generate

    times = []
    start = time.perf_counter()
    for event in stream_generate(
        loaded.model,
        None,
        prompt,
        max_tokens=max_tokens,
        stop_tokens=(),
        detokenize=False,
        compiled=compiled,
        min_bucket=min_bucket,
    ):
        if event.token is not None:
            times.append(time.perf_counter())
    return _decode_rate(times), times[0] - start, len(times)


def _bucket_change_cost(
    loaded: Any, prompt: list[int], max_tokens: int, bucket: int
) -> dict[str, float] | None:
    """The first decode step after a bucket change, against the median step, from a fresh
    compile (the compiled steps of the model are dropped first)."""
    from mlx_harmony.generate import compiled as compiled_module
    from mlx_harmony.generate.loop import stream_generate

    n_prompt = len(prompt)
    first = n_prompt + 1  # positions held when decoding starts
    start_bucket = bucket
    while start_bucket < first:
        start_bucket *= 2
    change = start_bucket - n_prompt  # the token index whose step writes the first new slot
    if change >= max_tokens - 1:
        return None
    compiled_module._COMPILED.pop(id(loaded.model), None)
    times = []
    start = time.perf_counter()
    for event in stream_generate(
        loaded.model,
        None,
        prompt,
        max_tokens=max_tokens,
        stop_tokens=(),
        detokenize=False,
        compiled=True,
        min_bucket=bucket,
    ):
        if event.token is not None:
            times.append(time.perf_counter())
    steps = [b - a for a, b in itertools.pairwise(times)]
    # Token i+1 comes from the step fed token i; the loop queues one step ahead, so the wait
    # for the compile shows at the token after the changing step or the next one.
    after = max(steps[change - 1 : change + 2])
    return {
        "bucket_from": start_bucket,
        "bucket_to": start_bucket * 2,
        "ttft_s": times[0] - start,  # holds the first bucket's compile
        "first_step_s": steps[0],
        "step_after_change_s": after,
        "median_step_s": statistics.median(steps),
    }


def _token_agreement(
    loaded: Any, prompt: list[int], max_tokens: int, min_bucket: int
) -> dict[str, int | None]:
    """Where our eager and compiled greedy tokens first differ from mlx-lm's (None: nowhere);
    the compiled run with buckets of `min_bucket`, so that it crosses a bucket change."""
    from mlx_lm.generate import generate_step

    from mlx_harmony.generate.loop import stream_generate

    want = [int(t) for t, _ in generate_step(mx.array(prompt), loaded.model, max_tokens=max_tokens)]
    result: dict[str, int | None] = {}
    for name, compiled in (("eager", False), ("compiled", True)):
        got = [
            e.token
            for e in stream_generate(
                loaded.model,
                None,
                prompt,
                max_tokens=max_tokens,
                stop_tokens=(),
                detokenize=False,
                compiled=compiled,
                min_bucket=min_bucket,
            )
            if e.token is not None
        ]
        result[name] = next(
            (i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), None
        )
    return result


def _run_mlx_lm(loaded: Any, prompt: list[int], max_tokens: int) -> tuple[float, float, int]:
    from mlx_lm.generate import stream_generate

    times = []
    start = time.perf_counter()
    for _ in stream_generate(loaded.model, loaded.tokenizer, prompt, max_tokens=max_tokens):
        times.append(time.perf_counter())
    return _decode_rate(times), times[0] - start, len(times)


def _prefill(model: Any, prompt: list[int], step: int = 2048) -> list[Any]:
    """mlx-lm's caches after every token of `prompt` but the last."""
    cache = model.make_cache()
    for start in range(0, len(prompt) - 1, step):
        chunk = prompt[start : min(start + step, len(prompt) - 1)]
        model(mx.array(chunk)[None], cache=cache)
        mx.eval([c.state for c in cache])
        mx.clear_cache()
    return cache


def _continue(
    model: Any, saved: list[Any], last: int, max_tokens: int, variant: str
) -> tuple[float, list[int]]:
    """Decode tokens/s and greedy tokens of `variant`, continuing a copy of the saved caches
    (new array objects over the same data: an update copies the data it shares)."""
    from mlx_lm.generate import generate_step as mlx_lm_step

    from mlx_harmony.generate import compiled as compiled_module
    from mlx_harmony.generate.loop import generate_step

    cache = [copy.copy(c) for c in saved]
    for c in cache:
        c.keys, c.values = mx.array(c.keys), mx.array(c.values)
    prompt = mx.array([last])
    if variant == "mlx_lm":
        steps = mlx_lm_step(prompt, model, prompt_cache=cache, max_tokens=max_tokens)
    else:
        compiled = variant != "eager"
        steps = generate_step(prompt, model, cache=cache, max_tokens=max_tokens, compiled=compiled)
    spans = compiled_module.SPANS_PER_BUCKET
    if variant == "compiled_bucket":  # one span per bucket: attend over the whole bucket
        compiled_module.SPANS_PER_BUCKET = 1
    times = []
    tokens = []
    try:
        for token, _ in steps:
            times.append(time.perf_counter())
            tokens.append(int(token))
    finally:
        compiled_module.SPANS_PER_BUCKET = spans
    return _decode_rate(times), tokens


def _context_sweep(loaded: Any, args: argparse.Namespace, contexts: list[int]) -> dict:
    """Decode step time against context length: eager, compiled and mlx-lm side by side."""
    names = ("eager", "compiled", "compiled_bucket", "mlx_lm")
    rows = []
    print(f"{args.max_tokens} new tokens, {args.runs} runs; median decode step in ms")
    header = f"{'context':>8} " + " ".join(f"{n:>15}" for n in names)
    header += f" {'compiled speed-up':>18} {'tokens equal':>13}"
    print(header)
    print("-" * len(header))
    rng = random.Random(1)
    for context in contexts:
        prompt = [rng.randrange(199_998) for _ in range(context)]
        saved = _prefill(loaded.model, prompt)
        first = {n: _continue(loaded.model, saved, prompt[-1], args.max_tokens, n) for n in names}
        rates: dict[str, list[float]] = {n: [] for n in names}
        for run in range(args.runs):
            order = names[run % len(names) :] + names[: run % len(names)]
            for name in order:
                rate, _ = _continue(loaded.model, saved, prompt[-1], args.max_tokens, name)
                rates[name].append(rate)
        step_ms = {n: 1e3 / statistics.median(r) for n, r in rates.items()}
        paired = statistics.median(
            a / b for a, b in zip(rates["compiled"], rates["eager"], strict=True)
        )
        want = first["mlx_lm"][1]
        equal = all(first[n][1] == want for n in names)
        rows.append(
            {
                "context": context,
                "median_step_ms": step_ms,
                "decode_tokens_per_s": rates,
                "paired_ratio_compiled_vs_eager": paired,
                "greedy_tokens_identical": equal,
            }
        )
        print(
            f"{context:>8} "
            + " ".join(f"{step_ms[n]:>15.2f}" for n in names)
            + f" {paired:>17.2f}x {'yes' if equal else 'NO':>13}",
            flush=True,
        )
        del saved
        mx.clear_cache()
    return {"contexts": rows}


def _batch_step_ms(loaded: Any, prompt: list[int], batch: int, steps: int) -> float:
    """Milliseconds per decode step of the batch engine with `batch` requests running."""
    from mlx_harmony.generate import BatchGenerator, BatchRequest

    engine = BatchGenerator(loaded.model, max_batch_size=batch, prefill_step_size=len(prompt))
    for _ in range(batch):
        engine.insert(BatchRequest(prompt=prompt, max_tokens=steps + 8))
    while engine.waiting:
        engine.step()
    for _ in range(2):  # the last rows' prompt tokens, then one step of every row
        engine.step()
    start = time.perf_counter()
    for _ in range(steps):
        outputs = engine.step()
        if len(outputs) != batch:
            raise RuntimeError(f"a step gave {len(outputs)} tokens for {batch} rows")
    return 1e3 * (time.perf_counter() - start) / steps


def _batch_sweep(loaded: Any, args: argparse.Namespace, sizes: list[int]) -> dict:
    """The eager batched step at each batch size against the single-stream steps."""
    rng = random.Random(1)
    prompt = [rng.randrange(199_998) for _ in range(args.prompt_tokens)]
    single = {
        "eager": lambda: _run_loop(loaded, prompt, args.max_tokens, compiled=False)[0],
        "compiled": lambda: _run_loop(loaded, prompt, args.max_tokens, compiled=True)[0],
    }
    batched = {
        f"batch {b}": (lambda b=b: _batch_step_ms(loaded, prompt, b, args.max_tokens))
        for b in sizes
    }
    for run in (*single.values(), *batched.values()):  # warm-up: kernels, compiled graphs
        run()
    times: dict[str, list[float]] = {name: [] for name in (*single, *batched)}
    for _ in range(args.runs):
        for name, run in single.items():
            times[name].append(1e3 / run())
        for name, run in batched.items():
            times[name].append(run())
    step_ms = {name: statistics.median(t) for name, t in times.items()}
    print(f"prompt {args.prompt_tokens} tokens, {args.max_tokens} steps, {args.runs} runs")
    print(f"{'step':>16} {'ms/step':>9} {'ms/token':>9} {'vs compiled':>12}")
    for name, ms in step_ms.items():
        rows = int(name.split()[1]) if name.startswith("batch") else 1
        per_token = ms / rows
        print(f"{name:>16} {ms:>9.2f} {per_token:>9.2f} {step_ms['compiled'] / per_token:>11.2f}x")
    return {"batch_step_ms": step_ms, "runs_ms": times}


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


_VARIANTS = ("ours", "ours_logprobs", "ours_text", "eager", "compiled", "mlx_lm")


def _timed(run: Any) -> tuple[float, float, int, float]:
    mx.synchronize()
    mx.reset_peak_memory()
    rate, ttft, count = run()
    return rate, ttft, count, mx.get_peak_memory() / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="an MLX model folder or Hugging Face repo id")
    source.add_argument("--shape", default="tiny", help="random gpt-oss shape: tiny, gpt-oss-20b")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16, float32 (random model)")
    parser.add_argument("--bits", type=int, default=None, help="quantize the random model")
    parser.add_argument("--head-dim", type=int, default=None, help="override the random shape's")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument(
        "--mode", default="affine", help="quantization mode with --bits: affine, mxfp4, ..."
    )
    parser.add_argument(
        "--variants",
        default=",".join(_VARIANTS),
        help=f"comma-separated subset of {','.join(_VARIANTS)} (mlx_lm is always run)",
    )
    parser.add_argument(
        "--bucket-probe",
        type=int,
        default=None,
        help="bucket size for the bucket-change measurement (default: a size that changes "
        "halfway through the run)",
    )
    parser.add_argument("--cache-dir", default=None, help="where the tokenizer build is cached")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--contexts",
        default=None,
        help="comma-separated context lengths: measure the decode step time at each instead",
    )
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated batch sizes: measure the batch engine's decode step instead",
    )
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(_VARIANTS))
    if unknown:
        parser.error(f"unknown --variants {unknown}; choose from {', '.join(_VARIANTS)}")
    if args.mode != "affine" and not args.bits:
        parser.error(f"--mode {args.mode} quantizes: give --bits too (4 for mxfp4)")

    from mlx_harmony.generate import TokenGenerator, make_loop_detector

    loaded, label = _build(args)
    loaded.tokenizer.eos_token_ids = set()  # mlx-lm must not stop early either
    if args.batch_sizes:
        try:
            sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
        except ValueError:
            parser.error(f"--batch-sizes takes comma-separated integers, got {args.batch_sizes!r}")
        if not sizes or min(sizes) < 1:
            parser.error(f"--batch-sizes needs sizes of at least 1, got {args.batch_sizes!r}")
        print(f"model: {label} on {mx.default_device()} (mlx {mx.__version__})")
        sweep = {"model": label, "device": str(mx.default_device()), "mlx": mx.__version__}
        sweep.update(_batch_sweep(loaded, args, sizes))
        if args.json:
            Path(args.json).write_text(json.dumps(sweep, indent=2))
        return 0
    if args.contexts:
        try:
            contexts = [int(c) for c in args.contexts.split(",") if c.strip()]
        except ValueError:
            parser.error(f"--contexts takes comma-separated integers, got {args.contexts!r}")
        if not contexts or min(contexts) < 2:
            parser.error(f"--contexts needs lengths of at least 2 tokens, got {args.contexts!r}")
        print(f"model: {label} on {mx.default_device()} (mlx {mx.__version__})")
        sweep = {"model": label, "device": str(mx.default_device()), "mlx": mx.__version__}
        sweep.update(_context_sweep(loaded, args, contexts))
        if args.json:
            Path(args.json).write_text(json.dumps(sweep, indent=2))
        return 0
    # Cheap loop detection runs its checks every 16 tokens, with a repeat count that never fires:
    # greedy random models loop, and every run must reach max_tokens.
    detector = make_loop_detector("cheap", min_repeats=10**6)
    generator = TokenGenerator(loaded, prompt_cache=False, loop_detection=detector)
    rng = random.Random(1)
    prompt = [rng.randrange(199_998) for _ in range(args.prompt_tokens)]

    all_variants = {
        "ours": lambda: _run_ours(generator, prompt, args.max_tokens),
        "ours_logprobs": lambda: _run_ours_logprobs(generator, prompt, args.max_tokens),
        "ours_text": lambda: _run_ours_text(generator, prompt, args.max_tokens),
        "eager": lambda: _run_loop(loaded, prompt, args.max_tokens, compiled=False),
        "compiled": lambda: _run_loop(loaded, prompt, args.max_tokens, compiled=True),
        "mlx_lm": lambda: _run_mlx_lm(loaded, prompt, args.max_tokens),
    }
    variants = {name: all_variants[name] for name in _VARIANTS if name in chosen}
    variants["mlx_lm"] = all_variants["mlx_lm"]
    names = list(variants)
    for name in names:  # warm up kernels and caches (and compile the first bucket)
        variants[name]()
    rates: dict[str, list[float]] = {name: [] for name in names}
    ttfts: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {name: [] for name in names}
    for run in range(args.runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for name in order:
            rate, ttft, count, peak = _timed(variants[name])
            if count != args.max_tokens:
                print(
                    f"{name} produced {count} tokens, expected {args.max_tokens}", file=sys.stderr
                )
                return 1
            rates[name].append(rate)
            ttfts[name].append(ttft)
            peaks[name].append(peak)
    probe = args.bucket_probe or max(1, (args.prompt_tokens + args.max_tokens // 2) // 2)
    agreement = _token_agreement(loaded, prompt, args.max_tokens, probe)
    bucket_change = None
    if "compiled" in names:
        bucket_change = _bucket_change_cost(loaded, prompt, args.max_tokens, probe)

    medians = {name: statistics.median(r) for name, r in rates.items()}
    # Each round runs every variant back to back: the median of the per-round ratios is robust
    # to a machine whose speed drifts between rounds.
    paired = {
        name: statistics.median(a / b for a, b in zip(rates[name], rates["mlx_lm"], strict=True))
        for name in names
        if name != "mlx_lm"
    }
    decode_step_s = 1.0 / medians[names[0]]
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
        "median_peak_memory_gb": {name: statistics.median(p) for name, p in peaks.items()},
        "bucket_change": bucket_change,
        "first_token_differing_from_mlx_lm": agreement,
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
        print(
            f"  {name:14s} median {medians[name]:8.1f} tok/s   "
            f"ttft {1e3 * results['median_ttft_s'][name]:7.1f} ms   "
            f"peak {results['median_peak_memory_gb'][name]:.3f} GB   runs: {runs}"
        )
    for name, ratio in paired.items():
        print(
            f"ratio {name} / mlx-lm: {ratio:.3f} (median of per-round ratios), "
            f"{medians[name] / medians['mlx_lm']:.3f} (ratio of medians)"
        )
    if "compiled" in paired and "eager" in paired:
        ratio = statistics.median(
            a / b for a, b in zip(rates["compiled"], rates["eager"], strict=True)
        )
        results["median_paired_ratio_compiled_vs_eager"] = ratio
        print(f"ratio compiled / eager: {ratio:.3f} (median of per-round ratios)")
    print(
        "greedy tokens identical to mlx-lm's: "
        + ", ".join(
            f"{name} {'yes' if at is None else f'no, from token {at}'}"
            for name, at in agreement.items()
        )
    )
    if bucket_change is not None:
        print(
            f"bucket change {bucket_change['bucket_from']} -> {bucket_change['bucket_to']} "
            f"positions (fresh compile): first token after it "
            f"{1e3 * bucket_change['step_after_change_s']:.1f} ms, median step "
            f"{1e3 * bucket_change['median_step_s']:.1f} ms; time to first token with the "
            f"first bucket's compile {1e3 * bucket_change['ttft_s']:.1f} ms"
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
