"""What every built-in tool shares: the call it gets, the result it returns, what it declares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from openai_harmony import Author, Message, Role, TextContent, ToolDescription, ToolNamespaceConfig

__all__ = [
    "Tool",
    "ToolCall",
    "ToolCallLike",
    "ToolDeclarations",
    "ToolResult",
    "render_tool_result",
]


@runtime_checkable
class ToolCallLike(Protocol):
    """Anything with a Harmony recipient and the raw text the model sent to it."""

    @property
    def recipient(self) -> str: ...

    @property
    def arguments(self) -> str: ...


@dataclass(frozen=True)
class ToolCall:
    """A tool call as the model wrote it: `recipient` is e.g. ``"python"`` or ``"browser.open"``."""

    recipient: str
    arguments: str = ""
    channel: str | None = None


@dataclass(frozen=True)
class ToolResult:
    """What goes back to the model as a tool message authored by `name`.

    `name` is the recipient that was called (``"browser.search"``, ``"python"``,
    ``"functions.apply_patch"``), which is the author name Harmony expects on the reply.
    `error` marks results that report a failure; the text still goes to the model, which can
    usually fix its call.
    """

    name: str
    content: str
    error: bool = False

    @property
    def recipient(self) -> str:
        return self.name


@dataclass(frozen=True)
class ToolDeclarations:
    """How tools are announced to the model in the Harmony prompt.

    `system` namespaces go into the system message (``SystemContent.with_tools``), `functions`
    into the developer message (``DeveloperContent.with_function_tools``), and `instructions`
    are appended to the developer instructions.
    """

    system: tuple[ToolNamespaceConfig, ...] = ()
    functions: tuple[ToolDescription, ...] = ()
    instructions: str = ""

    def merge(self, other: ToolDeclarations) -> ToolDeclarations:
        instructions = "\n\n".join(t for t in (self.instructions, other.instructions) if t)
        return ToolDeclarations(
            self.system + other.system, self.functions + other.functions, instructions
        )

    @property
    def function_names(self) -> tuple[str, ...]:
        return tuple(f"functions.{tool.name}" for tool in self.functions)


class Tool(Protocol):
    """A built-in tool: it claims recipients, runs calls, and declares itself."""

    @property
    def name(self) -> str: ...

    def handles(self, recipient: str) -> bool: ...

    def execute(self, recipient: str, arguments: str) -> ToolResult: ...

    def declarations(self) -> ToolDeclarations: ...

    def reset(self) -> None:
        """Forget per-conversation state (the browser's pages); called on `\\clear`."""
        ...

    def close(self) -> None: ...


def render_tool_result(result: ToolResult, *, channel: str | None = None) -> Message:
    """The Harmony message that feeds `result` back: from the tool, to the assistant.

    Pass the channel of the call (gpt-oss calls tools on ``commentary`` or ``analysis``) so the
    reply sits on the same channel, as OpenAI's reference chat does.
    """
    message = Message(
        author=Author(role=Role.TOOL, name=result.name), content=[TextContent(text=result.content)]
    ).with_recipient("assistant")
    return message.with_channel(channel) if channel else message
