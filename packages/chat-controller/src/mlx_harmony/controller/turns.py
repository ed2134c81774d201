"""What a chat turn is and what it produced: `Turn`, `TurnResult` and their parts.

These types sit under the turn code (`turn.py`), the events it streams (`events.py`) and the
chat-log recording (`recording.py`), which all import them; this module imports none of those.
Nothing here imports MLX.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from mlx_harmony.harmony_format import Message, Role, ToolCall

if TYPE_CHECKING:
    from mlx_harmony.generate import GenerationStats

__all__ = [
    "TRUNCATED_MARKER",
    "FinishReason",
    "GenerationInfo",
    "RetryReason",
    "RetryRecord",
    "Turn",
    "TurnResult",
    "as_turn",
]

TRUNCATED_MARKER = "[truncated]"


@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange: the user's message and the messages that answered it (reasoning, tool
    calls and their results, the answer)."""

    user: Message
    replies: tuple[Message, ...] = ()


class RetryReason(StrEnum):
    """Why an attempt was thrown away and generated again."""

    LENGTH = "length"
    """max_tokens was reached before the answer looked complete."""
    NO_FINAL = "no_final"
    """The model only thought (analysis) and never wrote a final answer."""
    LOOP = "loop"
    """The loop detector stopped a generation stuck repeating itself."""


class FinishReason(StrEnum):
    """How a turn ended (the server maps these to OpenAI's ``finish_reason``)."""

    STOP = "stop"
    """The model finished its answer."""
    LENGTH = "length"
    """max_tokens cut the answer and the retries did not help."""
    TOOL_CALLS = "tool_calls"
    """The model called functions the caller must run; see `TurnResult.tool_calls`."""
    LOOP = "loop"
    """The answer kept looping after the loop retries."""
    NO_FINAL = "no_final"
    """The model gave no final answer after the retries."""
    TOOL_LIMIT = "tool_limit"
    """The model kept calling tools after ``max_tool_rounds`` and being told to answer."""
    CANCELLED = "cancelled"
    """The caller cancelled the turn."""


@dataclass(frozen=True, slots=True)
class GenerationInfo:
    """Counts and timings of one generation (an attempt or a tool round), in seconds and GB.

    A plain copy of mlx-generate's `GenerationStats` fields that a front end shows, so that
    events do not need MLX; an HTTP backend fills it from the server's usage data.
    """

    prompt_tokens: int
    completion_tokens: int
    reused_prompt_tokens: int = 0
    prefill_s: float = 0.0
    time_to_first_token_s: float = 0.0
    decode_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    peak_memory_gb: float = 0.0
    stop_reason: str = "stop"
    cache_reuse: str | None = None
    stop_string: str | None = None
    draft_tokens: int = 0
    """Speculative decoding: tokens the draft model or prompt lookup proposed."""
    accepted_draft_tokens: int = 0
    """Speculative decoding: proposed tokens the model kept."""

    @property
    def prefilled_tokens(self) -> int:
        return self.prompt_tokens - self.reused_prompt_tokens

    @property
    def prompt_tokens_per_s(self) -> float:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @classmethod
    def from_stats(cls, stats: GenerationStats) -> GenerationInfo:
        """From mlx-generate's `GenerationStats` (read by attribute; no import needed)."""
        return cls(
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            reused_prompt_tokens=stats.reused_prompt_tokens,
            prefill_s=stats.prefill_s,
            time_to_first_token_s=stats.time_to_first_token_s,
            decode_s=stats.decode_s,
            decode_tokens_per_s=stats.decode_tokens_per_s,
            peak_memory_gb=stats.peak_memory_gb,
            stop_reason=str(getattr(stats.stop_reason, "value", stats.stop_reason)),
            cache_reuse=str(getattr(stats.cache_reuse, "value", stats.cache_reuse)),
            stop_string=getattr(stats, "stop_string", None),
            draft_tokens=getattr(stats, "draft_tokens", 0),
            accepted_draft_tokens=getattr(stats, "accepted_draft_tokens", 0),
        )


@dataclass(frozen=True, slots=True)
class RetryRecord:
    """One thrown-away attempt: why, and what the next attempt changed."""

    attempt: int
    reason: RetryReason
    stop_reason: str
    completion_tokens: int
    max_tokens: int
    detail: str
    instruction: str | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The form stored on the turn in the chat log (``retries``)."""
        data: dict[str, Any] = {
            "attempt": self.attempt,
            "reason": self.reason.value,
            "stop_reason": self.stop_reason,
            "completion_tokens": self.completion_tokens,
            "max_tokens": self.max_tokens,
            "detail": self.detail,
        }
        if self.instruction:
            data["instruction"] = self.instruction
        if self.sampling:
            data["sampling"] = dict(self.sampling)
        return data


@dataclass(frozen=True, slots=True)
class TurnResult:
    """Everything a turn produced.

    ``turn`` is the whole turn (user message and every reply, reasoning and tool messages
    included) to keep in the session; ``new_replies`` the replies this call added. ``final`` is
    the answer, ``tool_calls`` the calls returned to the caller. ``hyperparameters`` are the
    user's settings for the turn (never a retry's overrides), as stored in the chat log.
    """

    turn: Turn
    final: str
    finish_reason: FinishReason
    analysis: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    truncated: bool = False
    retries: tuple[RetryRecord, ...] = ()
    tool_rounds: int = 0
    generations: tuple[GenerationInfo, ...] = ()
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    dropped_turns: int = 0
    prompt_tokens: int = 0
    total_s: float = 0.0
    user_is_new: bool = True
    replies_start: int = 0

    @property
    def new_replies(self) -> tuple[Message, ...]:
        return self.turn.replies[self.replies_start :]

    @property
    def display_text(self) -> str:
        """The answer as shown to people: a cut answer ends with ``[truncated]``."""
        if not self.truncated:
            return self.final
        return (
            f"{self.final.rstrip()} {TRUNCATED_MARKER}" if self.final.strip() else TRUNCATED_MARKER
        )

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.generations)

    @property
    def reused_prompt_tokens(self) -> int:
        return self.generations[-1].reused_prompt_tokens if self.generations else 0

    def timing(self) -> dict[str, Any]:
        """The chat log's `TimingStats` values (mlx-lm's names) plus ``reused_prompt_tokens``
        and ``generations`` (and, when speculating, ``draft_tokens`` and
        ``accepted_draft_tokens`` over every generation); prompt numbers are those of the last
        generation."""
        if not self.generations:
            return {"total_time": round(self.total_s, 4)}
        first, last = self.generations[0], self.generations[-1]
        drafted = sum(g.draft_tokens for g in self.generations)
        speculation = (
            {
                "draft_tokens": drafted,
                "accepted_draft_tokens": sum(g.accepted_draft_tokens for g in self.generations),
            }
            if drafted
            else {}
        )
        return {
            **speculation,
            "prompt_tokens": last.prompt_tokens,
            "prompt_tps": round(last.prompt_tokens_per_s, 3),
            "generation_tokens": self.completion_tokens,
            "generation_tps": round(last.decode_tokens_per_s, 3),
            "time_to_first_token": round(first.time_to_first_token_s, 4),
            "total_time": round(self.total_s, 4),
            "peak_memory": round(max(g.peak_memory_gb for g in self.generations), 4),
            "reused_prompt_tokens": last.reused_prompt_tokens,
            "generations": len(self.generations),
        }


def timing_line(timing: dict[str, Any]) -> str:
    """One line for people from `TurnResult.timing()` values (``log_timing_stats``)."""
    if "generation_tokens" not in timing:
        return f"timing: {timing.get('total_time', 0.0):.2f} s, nothing generated"
    parts = [
        f"prompt {timing['prompt_tokens']} tokens at {timing['prompt_tps']:.1f} tok/s",
        f"generated {timing['generation_tokens']} tokens at {timing['generation_tps']:.1f} tok/s",
        f"first token {timing['time_to_first_token']:.2f} s",
        f"total {timing['total_time']:.2f} s",
    ]
    if timing.get("reused_prompt_tokens"):
        parts.insert(1, f"{timing['reused_prompt_tokens']} reused")
    if timing.get("draft_tokens"):
        drafted, accepted = timing["draft_tokens"], timing.get("accepted_draft_tokens", 0)
        parts.insert(2, f"drafts accepted {accepted}/{drafted} ({100 * accepted / drafted:.0f}%)")
    if timing.get("generations", 1) > 1:
        parts.append(f"{timing['generations']} generations")
    return "timing: " + ", ".join(parts)


def as_turn(turn: str | Message | Turn) -> Turn:
    """A `Turn` from a user's text, a user `Message`, or a turn to continue."""
    if isinstance(turn, Turn):
        return turn
    if isinstance(turn, str):
        return Turn(Message.user(turn))
    if isinstance(turn, Message):
        if turn.role is not Role.USER:
            raise ValueError(
                f"a turn starts with a user message, got a {turn.role.value} message; pass a "
                "Turn(user, replies) to continue a turn"
            )
        return Turn(turn)
    raise TypeError(f"a turn is a str, a user Message or a Turn, got {type(turn).__name__}")
