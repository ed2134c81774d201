"""A conversation as the controller wants it: instructions, earlier turns, the turn to answer.

Both APIs send a flat list (chat messages, Responses input items); the controller works on
`Turn`s (a user message and everything that answered it). Each API's translation walks its
list and tells a `ConversationBuilder` what it meets: instructions, a user message, an
assistant reply (reasoning as the analysis channel, calls as Harmony function calls, the text
as the answer, or as a preamble when calls follow it), a tool result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from mlx_harmony.controller import Turn
from mlx_harmony.harmony_format import Message

from .errors import APIError
from .tool_names import ToolNameMap

__all__ = ["AssistantCall", "Conversation", "ConversationBuilder", "join_text"]


class _Part(Protocol):
    @property
    def type(self) -> str: ...


PartT = TypeVar("PartT", bound=_Part)


def join_text(
    content: str | Sequence[PartT],
    *,
    param: str,
    text_of: Callable[[PartT], str | None],
    text_part: str,
) -> str:
    """The text of a message's content parts; a part `text_of` has no text for (an image, a
    file) is refused with a 400 naming it and the `text_part` shape to send instead."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for i, part in enumerate(content):
        text = text_of(part)
        if text is None:
            raise APIError(
                400,
                f"{param}[{i}] is a {part.type!r} part; this server reads text only: send the "
                f"content as a string or as {text_part} parts",
                param=f"{param}[{i}].type",
                code="unsupported_content",
            )
        texts.append(text)
    return "\n".join(texts)


@dataclass(frozen=True, slots=True)
class Conversation:
    """A request's messages as the controller wants them."""

    instructions: str | None
    history: tuple[Turn, ...]
    turn: Turn


@dataclass(frozen=True, slots=True)
class AssistantCall:
    """A function call an assistant made: its id, the client's name, the arguments, and the
    client's tool namespace (None: a plain function)."""

    call_id: str
    name: str
    arguments: str
    namespace: str | None = None


class ConversationBuilder:
    """Collects a conversation message by message; `build` gives the `Conversation`.

    The turn to answer is the one started by the last user message; when tool results follow
    it, the model goes on from them.
    """

    def __init__(self, names: ToolNameMap) -> None:
        self.names = names
        self._instructions: list[str] = []
        self._turns: list[Turn] = []
        self._user: Message | None = None
        self._replies: list[Message] = []
        self._calls: dict[str, str] = {}  # call id -> Harmony recipient
        self._started = False

    @property
    def has_user(self) -> bool:
        return self._user is not None

    def instructions(self, text: str) -> None:
        if text:
            self._instructions.append(text)

    def user(self, text: str) -> None:
        if self._started:
            self._turns.append(_turn(self._user, self._replies))
        self._user, self._replies, self._started = Message.user(text), [], True

    def assistant(
        self, *, reasoning: str | None, text: str, calls: Sequence[AssistantCall] = ()
    ) -> None:
        self._started = True
        if reasoning:
            self._replies.append(Message.analysis(reasoning))
        if calls:
            if text:
                self._replies.append(Message.assistant(text, channel="commentary"))
            for call in calls:
                recipient = self.names.recipient(call.name, call.namespace)
                self._calls[call.call_id] = recipient
                self._replies.append(Message.tool_call(recipient, call.arguments or "{}"))
        elif text:
            self._replies.append(Message.assistant(text))

    def knows_call(self, call_id: str) -> bool:
        """Whether an earlier assistant reply made the call `call_id`."""
        return call_id in self._calls

    def tool_result(
        self, call_id: str, text: str, *, where: str, field: str, missing: str, code: str
    ) -> None:
        """The result of the call `call_id`, sent as `field` of the input at `where`; a 400
        (`code`) that says what is `missing` when no earlier reply made that call."""
        if call_id not in self._calls:
            raise APIError(
                400,
                f"{where} answers {field} {call_id!r}, which {missing}",
                param=f"{where}.{field}",
                code=code,
            )
        self._started = True
        self._replies.append(Message.tool_result(self._calls[call_id], text))

    def function_result(self, name: str, text: str) -> None:
        """A result named by the function (the legacy ``function`` role)."""
        self._started = True
        self._replies.append(Message.tool_result(f"functions.{self.names.to_harmony(name)}", text))

    def build(self) -> Conversation:
        """The conversation (check `has_user` first)."""
        if self._user is None:
            raise ValueError("a conversation needs a user message")
        return Conversation(
            "\n\n".join(self._instructions) or None,
            tuple(self._turns),
            _turn(self._user, self._replies),
        )


def _turn(user: Message | None, replies: Sequence[Message]) -> Turn:
    """A turn; `user` is None for replies sent before the first user message, which the
    controller renders as they are (its adapters skip a missing user message, although
    `Turn.user` is annotated as always present)."""
    return Turn(user, tuple(replies))  # pyright: ignore[reportArgumentType]
