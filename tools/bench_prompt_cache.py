"""Prompt tokens prefilled per turn of a 10-turn Harmony chat, with and without cache reuse.

    python tools/bench_prompt_cache.py [--turns 10] [--analysis-words 160]

Each turn renders the conversation with mlx_harmony.harmony_format (previous analysis dropped,
as Harmony requires) and makes a tiny random gpt-oss write a scripted completion: an analysis
message longer than the 128-token sliding window, then a final answer. Three caches side by side:

- `ours`: PromptCache with the sliding-window checkpoint;
- `trim_only`: the same cache without the checkpoint, which is mlx-lm's rule (trim while no
  rotating layer has wrapped, else prefill everything: mlx-lm issue 980);
- `no_reuse`: a fresh cache every turn.

`new` is what a turn's prompt adds to everything the model saw before (the previous prompt and
its completion). openai-harmony drops only the analysis that comes before the first final answer:
turn 2 leaves the completion right after the previous prompt (the checkpoint serves), later
turns repeat the whole completion with <|end|> where the model wrote <|return|> (one token is
trimmed). With reuse, turn N must prefill only its new tokens plus the template's few.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import mlx.core as mx

_WORDS = [
    "the",
    "user",
    "asks",
    "about",
    "a",
    "topic",
    "so",
    "I",
    "should",
    "recall",
    "what",
    "I",
    "know",
    "check",
    "the",
    "details",
    "and",
    "then",
    "write",
    "a",
    "short",
    "clear",
    "answer",
    "with",
    "one",
    "example",
    "while",
    "keeping",
    "it",
    "friendly",
    "and",
    "correct",
]


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words))


def _force(script: list[int], prompt_len: int) -> Any:
    def processor(history: mx.array, logits: mx.array) -> mx.array:
        i = history.size - prompt_len
        token = script[min(i, len(script) - 1)]
        return mx.where(mx.arange(logits.shape[-1]) == token, 0.0, -mx.inf)[None]

    return processor


def _chat(args: argparse.Namespace, history: str) -> tuple[list[dict[str, Any]], bool]:
    """One chat of `args.turns` turns; `history` is 'harmony' (the analysis goes back into the
    conversation and openai-harmony drops what it drops) or 'final-only' (only final answers)."""
    from mlx_harmony.demo_model.random_model import build_random_model
    from mlx_harmony.generate import LoadedModel, PromptCache, TokenGenerator, common_prefix_len
    from mlx_harmony.harmony_format import STOP_TOKENS, Message, render_completion, render_prompt

    class TrimOnly(PromptCache):
        """mlx-lm's rule: trim while no rotating layer has wrapped, no checkpoint."""

        def can_trim(self, n: int) -> bool:
            return n <= len(self.tokens) and all(c.is_trimmable() for c in self.caches)

        def checkpoint(self, length: int) -> None:
            return None

    model, config = build_random_model("tiny", seed=0)
    loaded = LoadedModel(
        model=model, tokenizer=None, config=config, model_type="gpt_oss", path=Path(".")
    )
    generators = {
        "ours": TokenGenerator(loaded, loop_detection="off"),
        "trim_only": TokenGenerator(loaded, loop_detection="off"),
        "no_reuse": TokenGenerator(loaded, loop_detection="off", prompt_cache=False),
    }
    generators["trim_only"].prompt_cache = TrimOnly(model)

    rng = random.Random(0)
    messages: list[Any] = []
    rows: list[dict[str, Any]] = []
    seen: list[int] = []
    ok = True
    for turn in range(1, args.turns + 1):
        messages.append(Message.user(f"Question {turn}: {_text(rng, 20)}?"))
        prompt = render_prompt(messages)
        analysis = Message.analysis(_text(rng, args.analysis_words))
        answer = Message.assistant(_text(rng, args.answer_words))
        completion = render_completion([analysis, answer])
        row: dict[str, Any] = {
            "turn": turn,
            "prompt_tokens": len(prompt),
            "new_tokens": len(prompt) - common_prefix_len(seen, prompt),
            "completion_tokens": len(completion),
        }
        for name, generator in generators.items():
            tokens = list(
                generator.generate(
                    prompt_tokens=prompt,
                    max_tokens=len(completion) + 8,
                    stop_tokens=STOP_TOKENS,
                    logits_processors=[_force(completion, len(prompt))],
                )
            )
            stats = generator.last_stats
            assert stats is not None
            if tokens != completion:
                raise RuntimeError(f"turn {turn}: {name} did not write the scripted completion")
            row[f"{name}_prefilled"] = stats.prefilled_tokens
            row[f"{name}_mode"] = stats.cache_reuse.value
            row[f"{name}_prefill_ms"] = round(stats.prefill_s * 1e3, 1)
        row["extra"] = row["ours_prefilled"] - row["new_tokens"]
        if turn > 1 and not 0 <= row["extra"] <= 2:
            ok = False
        rows.append(row)
        messages += [analysis, answer] if history == "harmony" else [answer]
        seen = prompt + completion
    return rows, ok


def _print(title: str, rows: list[dict[str, Any]], ok: bool) -> dict[str, int]:
    header = (
        f"{'turn':>4} {'prompt':>6} {'new':>5} {'compl':>5} | {'ours':>5} {'extra':>5} "
        f"{'(mode)':>11} | {'trim_only':>9} {'(mode)':>10} | {'no_reuse':>8}"
    )
    print(title)
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['turn']:>4} {r['prompt_tokens']:>6} {r['new_tokens']:>5} "
            f"{r['completion_tokens']:>5} | {r['ours_prefilled']:>5} {r['extra']:>5} "
            f"{r['ours_mode']:>11} | {r['trim_only_prefilled']:>9} {r['trim_only_mode']:>10} | "
            f"{r['no_reuse_prefilled']:>8}"
        )
    totals = {
        name: sum(r[f"{name}_prefilled"] for r in rows)
        for name in ("ours", "trim_only", "no_reuse")
    }
    print(
        f"total prefilled: ours {totals['ours']}, trim_only (mlx-lm rule) {totals['trim_only']}, "
        f"no_reuse {totals['no_reuse']}; no_reuse / ours {totals['no_reuse'] / totals['ours']:.2f}"
        f", trim_only / ours {totals['trim_only'] / totals['ours']:.2f}"
    )
    print(
        "turn N >= 2 prefilled only its new tokens (+ at most 2 of the template): "
        + ("yes" if ok else "NO")
    )
    print()
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--analysis-words", type=int, default=160)
    parser.add_argument("--answer-words", type=int, default=40)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    all_ok = True
    for history, title in (
        ("harmony", "history as openai-harmony renders it (analysis kept after the first final)"),
        ("final-only", "history of final answers only (every previous analysis dropped)"),
    ):
        rows, ok = _chat(args, history)
        totals = _print(f"prompt tokens prefilled per turn: {title}", rows, ok)
        results[history] = {"rows": rows, "totals": totals, "ok": ok}
        all_ok &= ok
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
