"""OpenAI messages -> the controller's turns: what the model sees of a request.

A conversation in the OpenAI shape is a flat list; the controller works on `Turn`s (a user
message and everything that answered it). ``system`` and ``developer`` messages become the
developer instructions; each ``user`` message starts a turn; ``assistant`` messages become its
replies (``reasoning``/``reasoning_content`` as the analysis channel, ``tool_calls`` as Harmony
function calls, ``content`` as the answer, or as a preamble when it comes with tool calls);
``tool`` messages become Harmony tool results, named by the call they answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlx_harmony.controller import Turn
from mlx_harmony.harmony_format import Message

from .errors import APIError
from .protocol import (
    AssistantMessage,
    ChatMessage,
    Content,
    DeveloperMessage,
    FunctionMessage,
    OtherPart,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from .tool_names import ToolNameMap

__all__ = ["Conversation", "content_text", "to_conversation"]


@dataclass(frozen=True, slots=True)
class Conversation:
    """A request's messages as the controller wants them."""

    instructions: str | None
    history: tuple[Turn, ...]
    turn: Turn


def content_text(content: Content | None, *, param: str) -> str:
    """The text of a message's content; other parts (images, audio) are refused."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for i, part in enumerate(content):
        if isinstance(part, OtherPart):
            raise APIError(
                400,
                f"{param}[{i}] is a {part.type!r} part; this server reads text only, send the "
                "content as a string or as {'type': 'text', 'text': ...} parts",
                param=f"{param}[{i}].type",
                code="unsupported_content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def to_conversation(messages: Sequence[ChatMessage], names: ToolNameMap) -> Conversation:
    """Split `messages` into instructions, earlier turns and the turn to answer.

    The turn to answer is the one started by the last user message; when tool messages follow
    it, the model goes on from the tool results.
    """
    instructions: list[str] = []
    turns: list[Turn] = []
    user: Message | None = None
    replies: list[Message] = []
    calls: dict[str, str] = {}  # tool_call_id -> Harmony function name
    started = False

    for i, m in enumerate(messages):
        param = f"messages[{i}].content"
        if isinstance(m, SystemMessage | DeveloperMessage):
            text = content_text(m.content, param=param)
            if text:
                instructions.append(text)
        elif isinstance(m, UserMessage):
            if started:
                turns.append(Turn(user, tuple(replies)))
            user, replies, started = Message.user(content_text(m.content, param=param)), [], True
        elif isinstance(m, AssistantMessage):
            started = True
            replies.extend(_assistant(m, names, calls, param=param))
        elif isinstance(m, ToolMessage):
            started = True
            name = calls.get(m.tool_call_id)
            if name is None:
                raise APIError(
                    400,
                    f"messages[{i}] answers tool_call_id {m.tool_call_id!r}, which no earlier "
                    "assistant message's tool_calls has; send the assistant message with that "
                    "call before its result",
                    param=f"messages[{i}].tool_call_id",
                    code="unknown_tool_call_id",
                )
            text = content_text(m.content, param=param)
            replies.append(Message.tool_result(f"functions.{name}", text))
        elif isinstance(m, FunctionMessage):
            started = True
            replies.append(
                Message.tool_result(f"functions.{names.to_harmony(m.name)}", m.content or "")
            )
    if user is None:
        raise APIError(
            400,
            "the conversation has no user message; add {'role': 'user', 'content': ...}",
            param="messages",
            code="no_user_message",
        )
    turn = Turn(user, tuple(replies))
    return Conversation("\n\n".join(instructions) or None, tuple(turns), turn)


def _assistant(
    m: AssistantMessage, names: ToolNameMap, calls: dict[str, str], *, param: str
) -> list[Message]:
    out: list[Message] = []
    reasoning = m.reasoning if m.reasoning is not None else m.reasoning_content
    if reasoning:
        out.append(Message.analysis(reasoning))
    text = content_text(m.content, param=param)
    if m.tool_calls:
        if text:
            out.append(Message.assistant(text, channel="commentary"))
        for call in m.tool_calls:
            name = names.to_harmony(call.function.name)
            calls[call.id] = name
            out.append(Message.tool_call(f"functions.{name}", call.function.arguments or "{}"))
    elif text:
        out.append(Message.assistant(text))
    return out
