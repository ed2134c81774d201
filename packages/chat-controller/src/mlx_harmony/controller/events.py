"""What a chat turn reports as it runs: small frozen dataclasses a front end renders.

A turn streams `ThinkingDelta`, `CommentaryDelta` and `AnswerDelta` text as the model writes
it, `ToolCallEvent` / `ToolResultEvent` around each tool round, `RetryEvent` when an attempt is
thrown away (the text shown for it since the last `RetryEvent` is void), `ContextTrimmed` when
old turns were left out of the prompt, `StatsEvent` after every generation, and ends with
exactly one `TurnDone`. The front-end loop adds `CommandOutput` and `Quit`.

Nothing here imports MLX, so an HTTP front end can use these types without loading a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlx_harmony.harmony_format import ToolCall
from mlx_harmony.tools import ToolResult

from .turns import GenerationInfo, RetryReason, TurnResult

__all__ = [
    "AnswerDelta",
    "CommandOutput",
    "CommentaryDelta",
    "ContextTrimmed",
    "FrontendEvent",
    "GenerationInfo",
    "Quit",
    "RetryEvent",
    "RetryReason",
    "StatsEvent",
    "ThinkingDelta",
    "ToolCallEvent",
    "ToolResultEvent",
    "TurnDone",
    "TurnEvent",
]


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    """New reasoning text (Harmony's ``analysis`` channel)."""

    text: str


@dataclass(frozen=True, slots=True)
class CommentaryDelta:
    """New preamble text (Harmony's ``commentary`` channel without a recipient): shown to the
    user before tool calls."""

    text: str


@dataclass(frozen=True, slots=True)
class AnswerDelta:
    """New answer text (the ``final`` channel, or a native model's reply)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallEvent:
    """The model called a tool. ``handled``: a built-in tool runs it now (a `ToolResultEvent`
    follows); otherwise the turn ends and the call is returned to the caller."""

    call: ToolCall
    handled: bool


@dataclass(frozen=True, slots=True)
class ToolResultEvent:
    """What a built-in tool answered (also a refusal, e.g. past ``max_tool_rounds``)."""

    call: ToolCall
    result: ToolResult


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """The attempt that just ended is thrown away; attempt number ``attempt`` starts now.

    ``max_tokens`` and ``sampling`` (the sampling values changed for this attempt only) say how
    the new attempt differs; ``detail`` is one line for people.
    """

    attempt: int
    reason: RetryReason
    detail: str
    max_tokens: int
    sampling: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ContextTrimmed:
    """The oldest ``dropped_turns`` turns were left out so the prompt fits ``limit`` tokens."""

    dropped_turns: int
    prompt_tokens: int
    limit: int


@dataclass(frozen=True, slots=True)
class StatsEvent:
    """One generation finished: its numbers, its attempt number and its tool round."""

    info: GenerationInfo
    attempt: int
    tool_round: int


@dataclass(frozen=True, slots=True)
class TurnDone:
    """The turn is over; ``result`` holds everything it produced."""

    result: TurnResult


@dataclass(frozen=True, slots=True)
class CommandOutput:
    """What a chat command answered (``error``: it reports a mistake)."""

    text: str
    error: bool = False
    command: str | None = None


@dataclass(frozen=True, slots=True)
class Quit:
    """The user asked to leave (``\\quit``)."""


TurnEvent = (
    ThinkingDelta
    | CommentaryDelta
    | AnswerDelta
    | ToolCallEvent
    | ToolResultEvent
    | RetryEvent
    | ContextTrimmed
    | StatsEvent
    | TurnDone
)
FrontendEvent = TurnEvent | CommandOutput | Quit
