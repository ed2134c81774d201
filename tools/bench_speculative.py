"""Speculative decoding on the demo model: decode tokens/s with and without, side by side.

    python tools/bench_speculative.py                       # demo model, 256 tokens, 3 runs
    python tools/bench_speculative.py --tokens 512 --runs 5 --num-draft-tokens 4
    python tools/bench_speculative.py --model PATH --draft-model PATH
    python tools/bench_speculative.py --shape gpt-oss-20b --bits 4 --tokens 128 --runs 2

`--shape` benchmarks a random-weight gpt-oss of that shape (built in memory as
tools/bench_generate.py builds it: no download) with a random draft of the same shape and
vocabulary cut to `--draft-layers` layers (default 2), quantized like the target. Random weights
agree on almost nothing, so `draft=random` then shows what a real draft's structure costs (its
own forward passes, the rewinds), not what it gains.

Two prompts, decoded greedily:

- `chat`: one user question, rendered with the model's chat template, for `--tokens` tokens
  with stop tokens off (past its short trained answer the demo model writes noise: drafts
  mostly fail, which shows what the structure costs).
- `editing`: the answer repeats a passage of the context with small changes: the chat prompt,
  the model's answer to it with every 8th token changed, then the chat prompt again, decoded to
  the stop token. (The demo model follows no instructions and writes one fixed answer, about 30
  tokens; it is given that answer as the passage, as an editor is given the text it edits.)

Variants, alternating for `--runs` rounds (median decode tokens/s of the runs):

- `plain`: the default decode step (compiled for gpt-oss); `eager`: the eager step, which
  speculation uses, so `eager` is what speculation's structure is measured against.
- `draft=self`: the target as its own draft (every guess right: the ceiling on acceptance, at
  the price of a draft as large as the target).
- `draft=random`: a random tiny gpt-oss as the draft (almost every guess wrong: what the
  structure costs when drafts fail).
- `lookup=N`: prompt lookup with N-grams.

Every variant's tokens are checked against `plain`'s (greedy speculation is token-exact).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx


def _load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The target, the draft for `draft=random` and the target's label."""
    from mlx_harmony.demo_model.random_model import build_random_model
    from mlx_harmony.generate import load_model
    from mlx_harmony.generate.speculative import DraftModel

    if args.shape:
        target, label = _random_target(args)
    else:
        from mlx_harmony.demo_model.build import ensure_demo_model

        target = load_model(args.model or ensure_demo_model(progress=False))
        label = Path(str(target.path)).name
    if args.draft_model:
        draft = load_model(args.draft_model).model
    elif args.shape:
        dtype = getattr(mx, args.dtype) if args.dtype else None
        draft = build_random_model(
            args.shape,
            seed=7,
            dtype=dtype,
            quantize_bits=args.bits,
            num_hidden_layers=args.draft_layers,
        )[0]
        label += f", draft: {args.draft_layers} layers of it"
    else:
        draft = build_random_model("tiny", seed=7)[0]
    return target, DraftModel(draft), label


def _random_target(args: argparse.Namespace) -> tuple[Any, str]:
    """A random-weight gpt-oss of `args.shape`, by tools/bench_generate.py's builder."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_generate import _build

    build_args = argparse.Namespace(
        model=None,
        shape=args.shape,
        dtype=args.dtype,
        bits=args.bits,
        mode="affine",
        group_size=32,
        head_dim=None,
        cache_dir=None,
    )
    return _build(build_args)


def _prompts(loaded: Any, tokens: int) -> dict[str, tuple[list[int], bool]]:
    """Each prompt and whether it decodes to the model's stop token (else `tokens` tokens)."""
    chat = loaded.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}]
    )
    answer, _ = _run(loaded, chat, tokens, stop=True)
    # Small changes: every 8th token of the earlier copy swapped for another of the answer.
    edited = [t if i % 8 != 7 else answer[(i * 7) % len(answer)] for i, t in enumerate(answer)]
    return {"chat": (chat, False), "editing": (chat + edited + chat, True)}


def _run(
    loaded: Any, prompt: list[int], n: int, *, stop: bool = False, **options: Any
) -> tuple[list[int], Any]:
    from mlx_harmony.generate.loop import generate

    result = generate(
        loaded.model,
        loaded.tokenizer,
        prompt,
        max_tokens=n,
        stop_tokens=None if stop else [],
        detokenize=False,
        **options,
    )
    return result.tokens, result.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="target model folder (default: the demo model)")
    source.add_argument(
        "--shape", help="a random-weight gpt-oss target of this shape (tiny, gpt-oss-20b)"
    )
    parser.add_argument("--bits", type=int, default=None, help="quantize the random models")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16, float32 (random models)")
    parser.add_argument(
        "--draft-layers", type=int, default=2, help="layers of the random draft (with --shape)"
    )
    parser.add_argument(
        "--draft-model",
        help="draft model folder (default: random tiny gpt-oss, or with --shape a random one "
        "of that shape with --draft-layers layers)",
    )
    parser.add_argument(
        "--tokens", type=int, default=None, help="tokens per run (default 256; 128 with --shape)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="rounds of variants (default 3; 2 with --shape)"
    )
    parser.add_argument("--json", default=None, help="also write the results here (JSON)")
    parser.add_argument("--num-draft-tokens", type=int, default=3)
    parser.add_argument("--prompt-lookup", type=int, default=2)
    args = parser.parse_args(argv)
    if args.bits is not None and not args.shape:
        parser.error("--bits quantizes a random model: give --shape too")
    if args.tokens is None:
        args.tokens = 128 if args.shape else 256
    if args.runs is None:
        args.runs = 2 if args.shape else 3
    if args.draft_layers < 2:
        parser.error(f"--draft-layers must be at least 2 (sliding + full), got {args.draft_layers}")

    target, random_draft, label = _load(args)
    from mlx_harmony.generate.speculative import DraftModel

    variants: dict[str, dict[str, Any]] = {
        "plain": {},
        "eager": {"compiled": False},
        "draft=self": {"draft_model": DraftModel(target.model)},
        "draft=random": {"draft_model": random_draft},
        f"lookup={args.prompt_lookup}": {"prompt_lookup": args.prompt_lookup},
        f"lookup={args.prompt_lookup},k=8": {"prompt_lookup": args.prompt_lookup},
    }
    for name, options in variants.items():
        options["num_draft_tokens"] = 8 if name.endswith("k=8") else args.num_draft_tokens
    for name in ("plain", "eager"):
        del variants[name]["num_draft_tokens"]
    prompts = _prompts(target, args.tokens)
    device = str(mx.device_info().get("device_name") or mx.default_device())
    print(
        f"target {label}, {args.tokens} tokens, {args.runs} runs, "
        f"num_draft_tokens {args.num_draft_tokens}, on {device}"
    )
    exact = True
    results: dict[str, Any] = {}
    for name_of_prompt, (prompt, stop) in prompts.items():
        rates: dict[str, list[float]] = {name: [] for name in variants}
        counts: dict[str, tuple[int, int]] = {}
        reference, _ = _run(target, prompt, args.tokens, stop=stop)
        for _ in range(args.runs):
            for name, options in variants.items():
                tokens, stats = _run(target, prompt, args.tokens, stop=stop, **options)
                exact &= tokens == reference
                rates[name].append(stats.decode_tokens_per_s)
                if stats.draft_tokens:
                    counts[name] = (stats.accepted_draft_tokens, stats.draft_tokens)
        ending = "to the stop token" if stop else "stop tokens off"
        print(
            f"\n{name_of_prompt} prompt ({len(prompt)} tokens): {len(reference)} tokens ({ending})"
        )
        print(f"{'variant':<16} {'tok/s':>9} {'vs plain':>9} {'vs eager':>9}  accepted drafts")
        plain = statistics.median(rates["plain"])
        eager = statistics.median(rates["eager"])
        rows: dict[str, Any] = {}
        for name in variants:
            rate = statistics.median(rates[name])
            accepted, drafted = counts.get(name, (0, 0))
            shown = f"{accepted}/{drafted} ({accepted / drafted:.0%})" if drafted else "-"
            print(f"{name:<16} {rate:9.1f} {rate / plain:8.2f}x {rate / eager:8.2f}x  {shown}")
            rows[name] = {
                "tokens_per_s": rate,
                "runs": rates[name],
                "vs_plain": rate / plain,
                "vs_eager": rate / eager,
                "draft_tokens": drafted,
                "accepted_draft_tokens": accepted,
            }
        results[name_of_prompt] = {
            "prompt_tokens": len(prompt),
            "generated_tokens": len(reference),
            "to_stop_token": stop,
            "variants": rows,
        }
    print(f"\ngreedy tokens identical to plain in every run: {exact}")
    if args.json:
        report = {
            "target": label,
            "device": device,
            "mlx": mx.__version__,
            "tokens": args.tokens,
            "runs": args.runs,
            "num_draft_tokens": args.num_draft_tokens,
            "prompt_lookup": args.prompt_lookup,
            "prompts": results,
            "token_exact": exact,
        }
        path = Path(args.json)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        partial.replace(path)  # atomic: a reader never sees half a file
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
