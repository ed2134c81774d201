"""The demo model's contract, checked by generating: a build that breaks it is not cached.

Answers must be `<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final
<|message|>...<|return|>`; a time question, with the tool declared, must end in the call
`<|start|>assistant<|channel|>commentary to=functions.get_current_time <|constrain|>json
<|message|>{}<|call|>`. The questions here are not in the training data, except the canonical
"What time is it?".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx_lm.generate import generate_step
from mlx_lm.models.gpt_oss import Model

from mlx_harmony.harmony_format import (
    CALL,
    END,
    RETURN,
    DeveloperConfig,
    Message,
    ReasoningEffort,
    SystemConfig,
    get_encoding,
    render_prompt,
)

from .data import TIME_TOOL, encode_completion

__all__ = [
    "CHECK_CASES",
    "CheckCase",
    "CheckResult",
    "SelfCheckError",
    "check_structure",
    "generate_completion",
    "run_self_check",
]

_SPECIAL_START = 199998


class SelfCheckError(RuntimeError):
    """The trained model does not follow the demo model's output structure."""


@dataclass(frozen=True)
class CheckCase:
    """A prompt the model has not seen and the structure it must answer with."""

    name: str
    messages: tuple[Message, ...]
    expect: str  # "answer" or "call"
    system: SystemConfig = SystemConfig()  # noqa: RUF009 (frozen, hashable)
    developer: DeveloperConfig | None = None

    def prompt(self) -> list[int]:
        return render_prompt(self.messages, system=self.system, developer=self.developer)


_TOOLS = DeveloperConfig(tools=(TIME_TOOL,))

CHECK_CASES: tuple[CheckCase, ...] = (
    CheckCase("plain", (Message.user("Describe your favourite colour in one word."),), "answer"),
    CheckCase(
        "plain, tool declared",
        (Message.user("Write a limerick about a penguin who loves jazz."),),
        "answer",
        developer=_TOOLS,
    ),
    CheckCase(
        "unknown words, instructions",
        (Message.user("Quel est le sens de la vie ?"),),
        "answer",
        developer=DeveloperConfig(instructions="Réponds en français."),
    ),
    CheckCase(
        "second turn",
        (
            Message.user("Hello!"),
            Message.assistant("Hello, nice to meet you. What would you like to know?"),
            Message.user("Why is the sky blue?"),
        ),
        "answer",
        system=SystemConfig(conversation_start_date="2026-01-02"),
        developer=_TOOLS,
    ),
    CheckCase("time", (Message.user("What time is it?"),), "call", developer=_TOOLS),
    CheckCase(
        "time, other words",
        (Message.user("Could you tell me the current time?"),),
        "call",
        system=SystemConfig(
            reasoning_effort=ReasoningEffort.HIGH, conversation_start_date="2025-11-21"
        ),
        developer=DeveloperConfig(instructions="Be brief.", tools=(TIME_TOOL,)),
    ),
    CheckCase(
        "after the tool's result",
        (
            Message.user("What time is it?"),
            Message.tool_call(f"functions.{TIME_TOOL.name}", "{}"),
            Message.tool_result(TIME_TOOL.name, '{"time": "13:47"}'),
        ),
        "answer",
        developer=_TOOLS,
    ),
)

_CALL_TAIL = encode_completion(
    f"<|end|><|start|>assistant<|channel|>commentary to=functions.{TIME_TOOL.name} "
    "<|constrain|>json<|message|>{}<|call|>"
)
_HEAD = encode_completion("<|channel|>analysis<|message|>")
_MIDDLE = encode_completion("<|end|><|start|>assistant<|channel|>final<|message|>")


def _is_text(tokens: Sequence[int]) -> bool:
    return len(tokens) > 0 and all(t < _SPECIAL_START for t in tokens)


def check_structure(tokens: Sequence[int], expect: str) -> bool:
    """Whether a completion has exactly the answer ("answer") or tool-call ("call") structure."""
    tokens = list(tokens)
    if tokens[: len(_HEAD)] != list(_HEAD):
        return False
    rest = tokens[len(_HEAD) :]
    if expect == "call":
        tail = list(_CALL_TAIL)
        return rest[-len(tail) :] == tail and _is_text(rest[: -len(tail)])
    if expect != "answer":
        raise ValueError(f"expect must be 'answer' or 'call', got {expect!r}")
    if not rest or rest[-1] != RETURN or END not in rest:
        return False
    cut = rest.index(END)
    middle = list(_MIDDLE)
    return (
        _is_text(rest[:cut])
        and rest[cut : cut + len(middle)] == middle
        and _is_text(rest[cut + len(middle) : -1])
    )


def generate_completion(
    model: nn.Module,
    prompt: Sequence[int],
    *,
    max_tokens: int = 64,
    sampler=None,
    unseen: mx.array | None = None,
) -> tuple[list[int], float]:
    """Generate until `<|return|>` or `<|call|>`; also the most probability put on `unseen` ids
    at any step (0.0 when `unseen` is None)."""
    out: list[int] = []
    worst = 0.0
    for token, logprobs in generate_step(
        mx.array(list(prompt)), model, max_tokens=max_tokens, sampler=sampler
    ):
        token = int(token)
        out.append(token)
        if unseen is not None:
            mass = cast(float, mx.exp(logprobs[unseen]).sum().item())  # a float32 sum
            worst = max(worst, mass)
        if token in (RETURN, CALL):
            break
    return out, worst


@dataclass(frozen=True)
class CheckResult:
    """One self-check generation: what came out, whether it fits, and the unseen-id mass."""

    name: str
    expect: str
    text: str
    passed: bool
    unseen_probability: float


def run_self_check(
    model: Model,
    token_ids: Iterable[int],
    *,
    cases: Iterable[CheckCase] = CHECK_CASES,
    max_unseen_probability: float = 0.05,
) -> tuple[CheckResult, ...]:
    """Greedy generation on every case; raises `SelfCheckError` naming the failures."""
    unseen_mask = np.ones(model.args.vocab_size, bool)
    unseen_mask[list(token_ids)] = False
    unseen = mx.array(np.flatnonzero(unseen_mask))
    encoding = get_encoding()
    results = []
    for case in cases:
        out, worst = generate_completion(model, case.prompt(), unseen=unseen)
        passed = check_structure(out, case.expect) and worst <= max_unseen_probability
        results.append(CheckResult(case.name, case.expect, encoding.decode(out), passed, worst))
    failed = [r for r in results if not r.passed]
    if failed:
        lines = "\n".join(
            f"  {r.name} (expected {r.expect}, unseen-id probability {r.unseen_probability:.1e}):"
            f" {r.text!r}"
            for r in failed
        )
        raise SelfCheckError(
            f"the trained demo model failed {len(failed)} of {len(results)} self-checks, so it "
            f"was not cached:\n{lines}\nBuild again with another seed (--seed) or report this "
            "with the output above."
        )
    return tuple(results)
