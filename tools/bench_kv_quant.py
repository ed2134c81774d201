"""KV-cache quantization on gpt-oss: cache memory, decode speed and greedy agreement, side by side.

    python tools/bench_kv_quant.py                                   # tiny shape, 8k and 32k
    python tools/bench_kv_quant.py --contexts 1024,4096 --tokens 256  # CPU-sized
    python tools/bench_kv_quant.py --shape gpt-oss-20b --dtype bfloat16 --bits 4
    python tools/bench_kv_quant.py --model PATH

For each context length: a random prompt of that many tokens, greedy decoding of `--tokens` new
tokens with the unquantized cache (`plain`: the default decode step, compiled for gpt-oss;
`eager`: the eager step) and with `--kv-bits` (full-attention layers quantized from the start,
the sliding-window layers not; always the eager step), alternating for `--runs` rounds. Reported per
variant: the KV cache's bytes after the run (all layers, the full-attention layers' buffers, and
the bytes of the positions those hold: buffers grow in steps, and the compiled decode step's in
power-of-two buckets), decode tokens/s (tokens after the first over the time from the first to
the last; median of runs), and how far each run's greedy tokens agree with `plain`'s (the first
position they differ, and how many positions are equal).

The random-weight shapes (default `tiny` with head_dim 64, since quantization groups are 32 to
128 wide) use random sink logits, so the sink column of the attention matters.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx


def _build(args: argparse.Namespace) -> tuple[Any, str]:
    from mlx_harmony.generate import load_model

    if args.model:
        return load_model(args.model), Path(args.model).name
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    dtype = getattr(mx, args.dtype) if args.dtype else None
    overrides: dict[str, Any] = {"head_dim": args.head_dim} if args.head_dim else {}
    model, config = build_random_model(
        args.shape, seed=0, dtype=dtype, quantize_bits=args.bits, **overrides
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-kv-quant-"))
    save_model(model, config, folder, cache_dir=folder / "tokenizer-cache")
    loaded = load_model(folder)
    mx.random.seed(1)
    for layer in loaded.model.layers:
        sinks = layer.self_attn.sinks
        layer.self_attn.sinks = mx.random.normal(sinks.shape).astype(sinks.dtype)
    mx.eval(loaded.model.parameters())
    return loaded, f"random {args.shape}" + (f" {args.bits}-bit" if args.bits else "")


def _held_bytes(cache: Any) -> int:
    """Bytes of the positions a full-attention layer holds (its buffer grows in steps of 256,
    and the compiled decode step's in power-of-two buckets)."""
    keys = cache.keys[0] if isinstance(cache.keys, tuple) else cache.keys
    return cache.nbytes * cache.offset // keys.shape[2]


def _run(
    loaded: Any, prompt: list[int], args: argparse.Namespace, kv_bits: int | None, compiled: bool
) -> dict:
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    from mlx_harmony.generate import PromptCache, generate

    cache = PromptCache(loaded.model, kv_bits=kv_bits, kv_group_size=args.kv_group_size)
    result = generate(
        loaded.model,
        loaded.tokenizer,
        prompt,
        max_tokens=args.tokens,
        stop_tokens=[],
        prompt_cache=cache,
        prefill_step_size=args.prefill_step_size,
        compiled=None if compiled else False,
    )
    full = [c for c in cache.caches if isinstance(c, (KVCache, QuantizedKVCache))]
    out = {
        "tokens": result.tokens,
        "cache_bytes": cache.nbytes,
        "full_attention_bytes": sum(c.nbytes for c in full),
        "full_attention_held_bytes": sum(_held_bytes(c) for c in full),
        "decode_tok_s": result.stats.decode_tokens_per_s,
        "prefill_s": result.stats.prefill_s,
    }
    del cache
    mx.clear_cache()
    return out


def _agreement(a: list[int], b: list[int]) -> tuple[int, int]:
    first = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
    return first, sum(x == y for x, y in zip(a, b, strict=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="an MLX gpt-oss folder instead of a random shape")
    parser.add_argument("--shape", default="tiny", help="random gpt-oss preset (tiny, gpt-oss-20b)")
    parser.add_argument("--head-dim", type=int, default=None, help="override (tiny: 64)")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16, float32")
    parser.add_argument("--bits", type=int, default=None, help="quantize the random weights")
    parser.add_argument("--contexts", default="8192,32768", help="comma-separated prompt lengths")
    parser.add_argument("--tokens", type=int, default=256, help="new tokens per run")
    parser.add_argument("--kv-bits", type=int, default=8)
    parser.add_argument("--kv-group-size", type=int, default=64)
    parser.add_argument("--prefill-step-size", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=1, help="alternating rounds per context")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    if args.head_dim is None and not args.model and args.shape == "tiny":
        args.head_dim = 64
    contexts = [int(c) for c in args.contexts.split(",") if c]

    loaded, label = _build(args)
    print(f"model: {label} on {mx.default_device()} (mlx {mx.__version__})")
    print(f"{args.tokens} new tokens per run, kv_bits={args.kv_bits}, group {args.kv_group_size}")
    header = (
        f"{'context':>8} {'variant':>8} {'cache MB':>9} {'full MB':>8} {'held MB':>8} "
        f"{'decode tok/s':>13} {'agree (first diff / equal)':>27}"
    )
    print(header)
    print("-" * len(header))
    report: list[dict] = []
    vocab = min(getattr(getattr(loaded.model, "args", None), "vocab_size", 200_000), 199_990)
    quant = f"kv{args.kv_bits}"
    # (name, kv_bits, compiled): `plain` is the default path (the compiled step for gpt-oss),
    # `eager` the same loop as the quantized run (kv_bits always decodes eagerly).
    variants = [("plain", None, True), ("eager", None, False), (quant, args.kv_bits, False)]
    for context in contexts:
        key = mx.random.key(context)
        prompt = [int(t) for t in mx.random.randint(0, vocab, (context,), key=key).tolist()]
        runs: dict[str, list[dict]] = {name: [] for name, _, _ in variants}
        for r in range(args.runs):
            shift = r % len(variants)
            for name, bits, compiled in variants[shift:] + variants[:shift]:
                runs[name].append(_run(loaded, prompt, args, bits, compiled))
        base_tokens = runs["plain"][0]["tokens"]
        for name, results in runs.items():
            first, equal = _agreement(base_tokens, results[0]["tokens"])
            row = {
                "context": context,
                "variant": name,
                "cache_bytes": results[0]["cache_bytes"],
                "full_attention_bytes": results[0]["full_attention_bytes"],
                "full_attention_held_bytes": results[0]["full_attention_held_bytes"],
                "decode_tok_s": statistics.median(x["decode_tok_s"] for x in results),
                "decode_runs": [round(x["decode_tok_s"], 2) for x in results],
                "first_difference": first,
                "equal_tokens": equal,
            }
            report.append(row)
            agree = "-" if name == "plain" else f"{first} / {equal} of {len(base_tokens)}"
            print(
                f"{context:>8} {name:>8} {row['cache_bytes'] / 2**20:>9.2f} "
                f"{row['full_attention_bytes'] / 2**20:>8.2f} "
                f"{row['full_attention_held_bytes'] / 2**20:>8.2f} "
                f"{row['decode_tok_s']:>13.1f} {agree:>27}",
                flush=True,
            )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
