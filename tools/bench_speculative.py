"""Speculative decoding on the demo model: decode tokens/s with and without, side by side.

    python tools/bench_speculative.py                       # demo model, 256 tokens, 3 runs
    python tools/bench_speculative.py --tokens 512 --runs 5 --num-draft-tokens 4
    python tools/bench_speculative.py --model PATH --draft-model PATH

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
import statistics
import sys
from pathlib import Path
from typing import Any


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from mlx_harmony.demo_model.build import ensure_demo_model
    from mlx_harmony.demo_model.random_model import build_random_model
    from mlx_harmony.generate import load_model
    from mlx_harmony.generate.speculative import DraftModel

    target = load_model(args.model or ensure_demo_model(progress=False))
    if args.draft_model:
        draft = load_model(args.draft_model).model
    else:
        draft = build_random_model("tiny", seed=7)[0]
    return target, DraftModel(draft)


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
    parser.add_argument("--model", help="target model folder (default: the demo model)")
    parser.add_argument("--draft-model", help="draft model folder (default: random tiny gpt-oss)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--num-draft-tokens", type=int, default=3)
    parser.add_argument("--prompt-lookup", type=int, default=2)
    args = parser.parse_args(argv)

    target, random_draft = _load(args)
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
    print(
        f"target {Path(str(target.path)).name}, {args.tokens} tokens, {args.runs} runs, "
        f"num_draft_tokens {args.num_draft_tokens}"
    )
    exact = True
    for label, (prompt, stop) in prompts.items():
        rates: dict[str, list[float]] = {name: [] for name in variants}
        acceptance: dict[str, str] = {}
        reference, _ = _run(target, prompt, args.tokens, stop=stop)
        for _ in range(args.runs):
            for name, options in variants.items():
                tokens, stats = _run(target, prompt, args.tokens, stop=stop, **options)
                exact &= tokens == reference
                rates[name].append(stats.decode_tokens_per_s)
                if stats.draft_tokens:
                    acceptance[name] = (
                        f"{stats.accepted_draft_tokens}/{stats.draft_tokens} "
                        f"({stats.draft_acceptance_rate:.0%})"
                    )
        ending = "to the stop token" if stop else "stop tokens off"
        print(f"\n{label} prompt ({len(prompt)} tokens): {len(reference)} tokens ({ending})")
        print(f"{'variant':<16} {'tok/s':>9} {'vs plain':>9} {'vs eager':>9}  accepted drafts")
        plain = statistics.median(rates["plain"])
        eager = statistics.median(rates["eager"])
        for name in variants:
            rate = statistics.median(rates[name])
            print(
                f"{name:<16} {rate:9.1f} {rate / plain:8.2f}x {rate / eager:8.2f}x  "
                f"{acceptance.get(name, '-')}"
            )
    print(f"\ngreedy tokens identical to plain in every run: {exact}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
