"""When to throw an attempt away and generate again, as pure functions.

`decide_retry(output, stop_reason, ...)` looks at one generation and returns a `RetryDecision`
(or None: keep it). Three failures are recovered, each a bounded number of times per turn
(`RetryPolicy`):

- **length**: max_tokens was reached. When the answer already looks complete (its message
  was closed, or `looks_complete` says its text ends like a finished answer) it is kept;
  otherwise the next attempt gets a larger ``max_tokens`` and asks the model to be concise.
  When the length retries are spent and the model had only been thinking, it is asked for
  the final answer instead (the `no_final` path).
- **no_final**: the model stopped after thinking (or said nothing). The next attempt keeps
  that reasoning and starts the final answer itself (Harmony's ``final`` channel header), so
  the model writes the answer rather than thinking again.
- **loop**: the loop detector stopped a repeating generation. The next attempt drops the
  looping text, raises the repetition penalty and its context for that attempt only, and
  asks the model not to repeat itself. The user's settings are untouched: the next attempt
  or turn after it uses them again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlx_harmony.sampling import SamplingParams

from .adapters import TurnOutput
from .turns import RetryReason

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "RetryDecision",
    "RetryPolicy",
    "decide_retry",
    "looks_complete",
]

_SENTENCE_END = frozenset(".!?。！？…")
_CLOSERS = "\"'”’»)]}*_~`"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many retries a turn may use, and what each retry changes.

    ``max_retries`` bounds the retries of one turn in all; each reason has its own bound too.
    ``length_growth`` multiplies max_tokens on a length retry (never past ``max_tokens_cap``
    nor the room left in the context). Instructions are appended to the user's message for
    the retried attempt only; the chat log keeps the message as the user wrote it.
    """

    max_retries: int = 3
    length_retries: int = 1
    no_final_retries: int = 1
    loop_retries: int = 1
    length_growth: float = 2.0
    max_tokens_cap: int | None = None
    concise_instruction: str = (
        "(Your previous reply was cut off by the length limit. Answer again, concisely.)"
    )
    loop_instruction: str | None = "(Answer without repeating yourself.)"
    loop_repetition_penalty: float = 1.2
    loop_repetition_context_size: int = 256

    def __post_init__(self) -> None:
        for name in ("max_retries", "length_retries", "no_final_retries", "loop_retries"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0 (0 turns it off), got {value!r}")
        if not self.length_growth >= 1.0:
            raise ValueError(
                f"length_growth must be >= 1 (1 keeps max_tokens), got {self.length_growth}"
            )
        if self.max_tokens_cap is not None and self.max_tokens_cap < 1:
            raise ValueError(f"max_tokens_cap must be >= 1 or None, got {self.max_tokens_cap}")
        if not self.loop_repetition_penalty > 0:
            raise ValueError(
                "loop_repetition_penalty must be > 0 (1 is off), got "
                f"{self.loop_repetition_penalty}"
            )
        if self.loop_repetition_context_size < 1:
            raise ValueError(
                "loop_repetition_context_size must be >= 1, got "
                f"{self.loop_repetition_context_size}"
            )

    def limit(self, reason: RetryReason) -> int:
        return {
            RetryReason.LENGTH: self.length_retries,
            RetryReason.NO_FINAL: self.no_final_retries,
            RetryReason.LOOP: self.loop_retries,
        }[reason]


DEFAULT_RETRY_POLICY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What the next attempt changes.

    ``instruction`` is appended to the user's message for that attempt; ``sampling`` holds the
    SamplingParams values it overrides; ``force_final`` starts the model's next message as the
    final answer; ``keep_analysis`` keeps the thrown-away attempt's reasoning in the prompt
    (only `no_final` does: the looping or cut text of the other paths is never shown again).
    """

    reason: RetryReason
    max_tokens: int
    detail: str
    instruction: str | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    force_final: bool = False
    keep_analysis: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason.value,
            "max_tokens": self.max_tokens,
            "detail": self.detail,
            "instruction": self.instruction,
            "sampling": dict(self.sampling),
            "force_final": self.force_final,
            "keep_analysis": self.keep_analysis,
        }


def looks_complete(text: str) -> bool:
    """Whether an answer cut by max_tokens reads as finished anyway: it ends a sentence
    (``.``, ``!``, ``?``, ``…``, also before closing quotes, brackets or emphasis) or closes a
    code block, and leaves no code block open. Conservative: a doubtful answer is retried."""
    stripped = text.rstrip()
    if not stripped:
        return False
    if stripped.count("```") % 2:
        return False
    if stripped.endswith("```"):
        return True
    core = stripped.rstrip(_CLOSERS)
    return bool(core) and core[-1] in _SENTENCE_END


def _allowed(reason: RetryReason, previous: Sequence[RetryReason], policy: RetryPolicy) -> bool:
    return len(previous) < policy.max_retries and previous.count(reason) < policy.limit(reason)


def _grown(max_tokens: int, policy: RetryPolicy, cap: int | None) -> int:
    grown = math.ceil(max_tokens * policy.length_growth)
    limits = [limit for limit in (policy.max_tokens_cap, cap) if limit is not None]
    return max(min(grown, *limits) if limits else grown, 1)


def _no_final(output: TurnOutput, max_tokens: int, why: str) -> RetryDecision:
    return RetryDecision(
        RetryReason.NO_FINAL,
        max_tokens=max_tokens,
        detail=why,
        force_final=True,
        keep_analysis=bool(output.analysis),
    )


def decide_retry(
    output: TurnOutput,
    stop_reason: str,
    *,
    max_tokens: int,
    previous: Sequence[RetryReason] = (),
    sampling: SamplingParams | None = None,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    max_tokens_cap: int | None = None,
) -> RetryDecision | None:
    """Whether to retry the generation that produced `output`, and how.

    `stop_reason` is mlx-generate's (``stop``, ``length``, ``loop_detected``, ``cancelled``);
    `previous` the reasons already retried in this turn; `max_tokens` and `sampling` the values
    the generation used; `max_tokens_cap` the room left in the context window.
    """
    reason = str(getattr(stop_reason, "value", stop_reason))
    if reason == "cancelled":
        return None
    if reason == "loop_detected":
        if not _allowed(RetryReason.LOOP, previous, policy):
            return None
        penalty = sampling.repetition_penalty if sampling is not None else None
        context = sampling.repetition_context_size if sampling is not None else 20
        new_penalty = round(max(policy.loop_repetition_penalty, (penalty or 1.0) + 0.1), 4)
        new_context = max(policy.loop_repetition_context_size, 2 * context)
        return RetryDecision(
            RetryReason.LOOP,
            max_tokens=max_tokens,
            detail=(
                f"the reply was repeating itself; retrying without it, with repetition_penalty "
                f"{new_penalty} over {new_context} tokens for this attempt"
            ),
            instruction=policy.loop_instruction,
            sampling={
                "repetition_penalty": new_penalty,
                "repetition_context_size": new_context,
            },
        )
    if reason == "length":
        if output.final.strip() and (output.final_closed or looks_complete(output.final)):
            return None
        if _allowed(RetryReason.LENGTH, previous, policy):
            grown = _grown(max_tokens, policy, max_tokens_cap)
            return RetryDecision(
                RetryReason.LENGTH,
                max_tokens=grown,
                detail=f"the reply hit max_tokens ({max_tokens}); retrying with max_tokens "
                f"{grown} and a request to be concise",
                instruction=policy.concise_instruction,
            )
        if (
            not output.final.strip()
            and output.analysis
            and not output.tool_calls
            and _allowed(RetryReason.NO_FINAL, previous, policy)
        ):
            return _no_final(
                output,
                max_tokens,
                f"the model was still thinking at max_tokens ({max_tokens}); asking for the "
                "final answer",
            )
        return None
    if output.called_tool or output.tool_calls or output.final.strip():
        return None
    if not _allowed(RetryReason.NO_FINAL, previous, policy):
        return None
    why = (
        "the model only thought and gave no final answer"
        if output.analysis
        else ("the model gave an empty reply")
    )
    return _no_final(output, max_tokens, why + "; asking for the final answer")
