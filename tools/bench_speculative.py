"""Speculative decoding on the demo model: decode tokens/s with and without, side by side.

    python tools/bench_speculative.py                       # demo model, 256 tokens, 3 runs
    python tools/bench_speculative.py --tokens 512 --runs 5 --num-draft-tokens 4
    python tools/bench_speculative.py --model PATH --draft-model PATH

Two prompts, each decoded greedily for `--tokens` tokens (stop tokens off, so every variant
decodes the same number of tokens):

- `chat`: one user question, rendered with the model's chat template.
- `editing`: a long passage in the context that the answer repeats with small changes: a chat
  history whose earlier assistant turns hold the passages the model writes again. (The demo
  model answers every question with the same few sentences, so its answer copies what the
  context already holds, as an editing model copies the text it edits.)

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


def _prompts(loaded: Any) -> dict[str, list[int]]:
    from mlx_harmony.generate.loop import generate

    chat = [{"role": "user", "content": "What is the capital of France?"}]
    history: list[dict[str, str]] = []
    # Earlier turns: the model's own answers, for slightly different questions.
    for i, topic in enumerate(("rivers", "mountains", "cities", "forests", "deserts", "seas")):
        history.append({"role": "user", "content": f"Tell me about {topic}, part {i + 1}."})
        answer = generate(
            loaded.model, loaded.tokenizer, loaded.apply_chat_template(history), max_tokens=200
        )
        history.append({"role": "assistant", "content": answer.text.split("<|message|>")[-1]})
    history.append({"role": "user", "content": "Now the same about lakes, please."})
    return {
        "chat": loaded.apply_chat_template(chat),
        "editing": loaded.apply_chat_template(history),
    }


def _run(loaded: Any, prompt: list[int], n: int, **options: Any) -> tuple[list[int], Any]:
    from mlx_harmony.generate.loop import generate

    result = generate(
        loaded.model, None, prompt, max_tokens=n, stop_tokens=[], detokenize=False, **options
    )
    return result.tokens, result.stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="target model folder (default: the demo model)")
    parser.add_argument("--draft-model", help="draft model folder (default: random tiny gpt-oss)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--num-draft-tokens", type=int, default=3)
    parser.add_argument("--prompt-lookup", type=int, default=3)
    args = parser.parse_args(argv)

    target, random_draft = _load(args)
    from mlx_harmony.generate.speculative import DraftModel

    variants: dict[str, dict[str, Any]] = {
        "plain": {},
        "eager": {"compiled": False},
        "draft=self": {"draft_model": DraftModel(target.model)},
        "draft=random": {"draft_model": random_draft},
        f"lookup={args.prompt_lookup}": {"prompt_lookup": args.prompt_lookup},
    }
    for options in variants.values():
        if "draft_model" in options:
            options["num_draft_tokens"] = args.num_draft_tokens
    prompts = _prompts(target)
    print(
        f"target {Path(str(target.path)).name}, {args.tokens} tokens, {args.runs} runs, "
        f"num_draft_tokens {args.num_draft_tokens}"
    )
    exact = True
    for label, prompt in prompts.items():
        rates: dict[str, list[float]] = {name: [] for name in variants}
        acceptance: dict[str, str] = {}
        reference, _ = _run(target, prompt, args.tokens)
        for _ in range(args.runs):
            for name, options in variants.items():
                tokens, stats = _run(target, prompt, args.tokens, **options)
                exact &= tokens == reference
                rates[name].append(stats.decode_tokens_per_s)
                if stats.draft_tokens:
                    acceptance[name] = (
                        f"{stats.accepted_draft_tokens}/{stats.draft_tokens} "
                        f"({stats.draft_acceptance_rate:.0%})"
                    )
        print(f"\n{label} prompt ({len(prompt)} tokens)")
        print(f"{'variant':<14} {'tok/s':>9} {'vs plain':>9} {'vs eager':>9}  accepted drafts")
        plain = statistics.median(rates["plain"])
        eager = statistics.median(rates["eager"])
        for name in variants:
            rate = statistics.median(rates[name])
            print(
                f"{name:<14} {rate:9.1f} {rate / plain:8.2f}x {rate / eager:8.2f}x  "
                f"{acceptance.get(name, '-')}"
            )
    print(f"\ngreedy tokens identical to plain in every run: {exact}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
