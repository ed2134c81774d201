"""What the client returns: a whole completion, or the events of a streamed one.

Small frozen dataclasses over the server's JSON (``raw`` keeps it all). The events of a
stream are `ReasoningDelta`, `ContentDelta`, `ToolCallDelta`, `Finish` and `Usage`, in the
order the server sends them: reasoning first, then the answer, then tool calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ChatCompletion",
    "ContentDelta",
    "Finish",
    "ReasoningDelta",
    "StreamEvent",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "events_from_chunk",
]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function the model wants called; ``arguments`` is the text the model wrote (usually
    JSON, but not always: check before parsing)."""

    id: str
    name: str
    arguments: str

    @classmethod
    def from_openai(cls, data: Mapping[str, Any]) -> ToolCall:
        function = data.get("function") or {}
        return cls(
            str(data.get("id") or ""),
            str(function.get("name") or ""),
            str(function.get("arguments") or ""),
        )

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens the server's prompt cache already held."""
    reasoning_tokens: int = 0
    accepted_prediction_tokens: int = 0
    """Speculative decoding: the server's guesses the model kept (OpenAI's name)."""
    rejected_prediction_tokens: int = 0

    @classmethod
    def from_openai(cls, data: Mapping[str, Any] | None) -> Usage | None:
        if not data:
            return None
        prompt_details = data.get("prompt_tokens_details") or {}
        completion_details = data.get("completion_tokens_details") or {}
        return cls(
            int(data.get("prompt_tokens") or 0),
            int(data.get("completion_tokens") or 0),
            int(data.get("total_tokens") or 0),
            int(prompt_details.get("cached_tokens") or 0),
            int(completion_details.get("reasoning_tokens") or 0),
            int(completion_details.get("accepted_prediction_tokens") or 0),
            int(completion_details.get("rejected_prediction_tokens") or 0),
        )


@dataclass(frozen=True, slots=True)
class ChatCompletion:
    """A whole (non-streamed) answer; ``raw`` is the server's JSON."""

    raw: Mapping[str, Any]

    @property
    def _choice(self) -> Mapping[str, Any]:
        choices = self.raw.get("choices") or [{}]
        return choices[0]

    @property
    def _message(self) -> Mapping[str, Any]:
        return self._choice.get("message") or {}

    @property
    def id(self) -> str:
        return str(self.raw.get("id", ""))

    @property
    def model(self) -> str:
        return str(self.raw.get("model", ""))

    @property
    def content(self) -> str:
        return self._message.get("content") or ""

    @property
    def reasoning(self) -> str:
        message = self._message
        return message.get("reasoning") or message.get("reasoning_content") or ""

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall.from_openai(c) for c in self._message.get("tool_calls") or ())

    @property
    def finish_reason(self) -> str | None:
        return self._choice.get("finish_reason")

    @property
    def logprobs(self) -> list[dict[str, Any]]:
        data = self._choice.get("logprobs") or {}
        return list(data.get("content") or ())

    @property
    def usage(self) -> Usage | None:
        return Usage.from_openai(self.raw.get("usage"))

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation for the next request."""
        return dict(self._message)


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """New reasoning text (the analysis channel)."""

    text: str


@dataclass(frozen=True, slots=True)
class ContentDelta:
    """New answer text; ``logprobs`` are its tokens' entries when they were asked for."""

    text: str
    logprobs: tuple[dict[str, Any], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of tool call number ``index``: its id and name come first, arguments may come
    in pieces (this server sends them whole)."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class Finish:
    """Why the answer ended: ``stop``, ``length`` or ``tool_calls``."""

    reason: str


StreamEvent = ReasoningDelta | ContentDelta | ToolCallDelta | Finish | Usage


def events_from_chunk(chunk: Mapping[str, Any]) -> list[StreamEvent]:
    """The events of one ``chat.completion.chunk`` (first choice only)."""
    events: list[StreamEvent] = []
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        reasoning = delta.get("reasoning")
        if reasoning is None:
            reasoning = delta.get("reasoning_content")
        if reasoning:
            events.append(ReasoningDelta(reasoning))
        content = delta.get("content")
        if content:
            logprobs = (choice.get("logprobs") or {}).get("content") or ()
            events.append(ContentDelta(content, tuple(logprobs)))
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            events.append(
                ToolCallDelta(
                    int(call.get("index", 0)),
                    call.get("id"),
                    function.get("name"),
                    function.get("arguments") or "",
                )
            )
        if choice.get("finish_reason"):
            events.append(Finish(choice["finish_reason"]))
    usage = Usage.from_openai(chunk.get("usage"))
    if usage is not None:
        events.append(usage)
    return events
