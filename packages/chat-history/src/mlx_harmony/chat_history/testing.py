"""Synthetic chat logs for tests and benchmarks of this package and the ones built on it."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

__all__ = ["generate_v1_log"]

_SENTENCE = (
    "the model answers every question about tensors, caches and sampling with care; "
    'Grüße, 你好, emoji 🙂 and "quotes" must survive every round trip'
)
_WORDS = _SENTENCE.split(" ")


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(low, high)))


def generate_v1_log(n_messages: int, *, seed: int = 0) -> dict[str, Any]:
    """A plausible legacy (v1) conversation of exactly ``n_messages`` messages.

    It mixes everything v1 can hold: a system prompt, thinking both as separate analysis
    messages and inline, tool calls with their results, hyperparameters that change every few
    turns, naive timestamps one to thirty seconds apart. Same ``seed``, same log.
    """
    rng = random.Random(seed)
    hyper: dict[str, Any] = {
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 40,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "max_tokens": 1024,
        "seed": -1,
        "reasoning_effort": "medium",
    }
    clock = datetime(2025, 3, 1, 9, 0, 0)
    messages: list[dict[str, Any]] = []

    def add(role: str, content: str, **fields: object) -> None:
        nonlocal clock
        clock += timedelta(seconds=rng.randint(1, 30), microseconds=rng.randint(0, 999_999))
        message = {"role": role, "content": content, "timestamp": clock.isoformat(), **fields}
        if role in ("assistant", "tool"):
            message["hyperparameters"] = dict(hyper)
        messages.append(message)

    if n_messages > 0:
        add("system", "You are a helpful assistant. " + _text(rng, 5, 20))
    while len(messages) < n_messages:
        if rng.random() < 0.15:
            hyper["temperature"] = round(rng.uniform(0.1, 1.5), 2)
        if rng.random() < 0.05:
            hyper["reasoning_effort"] = rng.choice(["low", "medium", "high"])
        step = rng.random()
        if step < 0.35:
            add("user", _text(rng, 3, 40))
        elif step < 0.45:
            add("assistant", _text(rng, 10, 60), channel="analysis")
        elif step < 0.55:
            add("assistant", '{"code": "print(2 + 2)"}', channel="analysis", recipient="python")
            if len(messages) < n_messages:
                add("tool", "4", name="python")
        else:
            add("assistant", _text(rng, 10, 120), analysis=_text(rng, 5, 40))
    return {
        "metadata": {
            "model_path": "mlx-community/gpt-oss-20b-MXFP4-Q8",
            "prompt_config_path": "configs/prompt-config.example.json",
            "tools": {"browser": False, "python": True, "apply_patch": False},
            "hyperparameters": dict(hyper),
        },
        "messages": messages[:n_messages],
    }
