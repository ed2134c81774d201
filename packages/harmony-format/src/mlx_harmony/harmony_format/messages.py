"""Small frozen, hashable message and config types that convert to openai-harmony's.

openai-harmony's own types are mutable pydantic models, so they cannot key a cache. These are
frozen dataclasses: equal values render to equal tokens, which is what ``PromptRenderer`` relies
on. ``to_harmony()`` / ``from_harmony()`` convert both ways.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import openai_harmony as oh
from openai_harmony import Role

__all__ = [
    "DEFAULT_CHANNELS",
    "DEFAULT_KNOWLEDGE_CUTOFF",
    "DEFAULT_MODEL_IDENTITY",
    "Channel",
    "DeveloperConfig",
    "FunctionTool",
    "Message",
    "ReasoningEffort",
    "Role",
    "SystemConfig",
]

DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
DEFAULT_KNOWLEDGE_CUTOFF = "2024-06"
DEFAULT_CHANNELS = ("analysis", "commentary", "final")

_TOOL_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_BUILTIN_TOOL_AUTHORS = ("python", "browser", "container")
_CONSTRAIN = "<|constrain|>"


class Channel(StrEnum):
    """The assistant's channels: hidden reasoning, tool calls and preambles, the answer."""

    ANALYSIS = "analysis"
    COMMENTARY = "commentary"
    FINAL = "final"


class ReasoningEffort(StrEnum):
    """How long the model reasons; rendered as ``Reasoning: low`` in the system message."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"

    @classmethod
    def _missing_(cls, value: object) -> ReasoningEffort | None:
        if isinstance(value, str):
            for member in cls:
                if member.value == value.strip().lower():
                    return member
        return None

    def to_harmony(self) -> oh.ReasoningEffort:
        return oh.ReasoningEffort(self.value.capitalize())


def _plain(value: str | None, what: str) -> str | None:
    """Enum members become plain strings so that hash and equality agree with ``str``."""
    if value is None:
        return None
    if isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str or None, got {type(value).__name__}: {value!r}")
    return str(value)


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class SystemConfig:
    """The system message: identity, reasoning effort, dates, channels, built-in tools.

    Defaults are openai-harmony's (``SystemContent.new()``). ``channels=()`` drops the
    "Valid channels" line.
    """

    model_identity: str | None = DEFAULT_MODEL_IDENTITY
    reasoning_effort: ReasoningEffort | None = ReasoningEffort.MEDIUM
    conversation_start_date: str | None = None
    knowledge_cutoff: str | None = DEFAULT_KNOWLEDGE_CUTOFF
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    browser_tool: bool = False
    python_tool: bool = False

    def __post_init__(self) -> None:
        if self.reasoning_effort is not None:
            _set(self, "reasoning_effort", ReasoningEffort(self.reasoning_effort))
        date = self.conversation_start_date
        if isinstance(date, _dt.date):
            _set(self, "conversation_start_date", date.isoformat()[:10])
        if isinstance(self.channels, str):
            raise TypeError(
                f"channels must be a sequence of channel names, got the string {self.channels!r}; "
                f"write channels=({self.channels!r},)"
            )
        _set(self, "channels", tuple(_plain(c, "a channel") for c in self.channels))

    def to_harmony(self) -> oh.SystemContent:
        content = oh.SystemContent(
            model_identity=self.model_identity,
            reasoning_effort=None
            if self.reasoning_effort is None
            else self.reasoning_effort.to_harmony(),
            conversation_start_date=self.conversation_start_date,
            knowledge_cutoff=self.knowledge_cutoff,
            channel_config=oh.ChannelConfig.require_channels(list(self.channels))
            if self.channels
            else None,
        )
        if self.browser_tool:
            content = content.with_browser_tool()
        if self.python_tool:
            content = content.with_python_tool()
        return content

    @classmethod
    def from_harmony(cls, content: oh.SystemContent) -> SystemConfig:
        tools = set(content.tools or ())
        unknown = tools - {"browser", "python"}
        if unknown:
            raise ValueError(
                f"SystemConfig can only hold the browser and python tools, got {sorted(unknown)}; "
                "keep this message as an openai-harmony SystemContent"
            )
        effort = content.reasoning_effort
        channels = content.channel_config.valid_channels if content.channel_config else ()
        return cls(
            model_identity=content.model_identity,
            reasoning_effort=None if effort is None else ReasoningEffort(effort.value),
            conversation_start_date=content.conversation_start_date,
            knowledge_cutoff=content.knowledge_cutoff,
            channels=tuple(channels),
            browser_tool="browser" in tools,
            python_tool="python" in tools,
        )


@dataclass(frozen=True, slots=True, init=False)
class FunctionTool:
    """A function the model may call as ``functions.<name>``; ``parameters`` is a JSON schema.

    The schema is kept as JSON text (``parameters_json``) so the tool stays immutable and
    hashable; key order is kept because openai-harmony renders properties in that order.

    ``namespace`` puts the tool in a tool namespace of its own (``namespace multi_agent_v1
    { ... }`` in the developer message, called as ``multi_agent_v1.<name>``);
    ``namespace_description`` is that namespace's description (the first tool's is used).
    """

    name: str
    description: str
    parameters_json: str | None
    namespace: str
    namespace_description: str

    def __init__(
        self,
        name: str,
        description: str = "",
        parameters: Mapping[str, Any] | None = None,
        *,
        namespace: str = "functions",
        namespace_description: str = "",
    ) -> None:
        if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
            raise ValueError(
                f"function tool name must be 1-64 letters, digits, '_' or '-', got {name!r}; "
                "rename the tool"
            )
        if not isinstance(namespace, str) or not _TOOL_NAME.fullmatch(namespace):
            raise ValueError(
                f"tool namespace must be 1-64 letters, digits, '_' or '-', got {namespace!r}; "
                "rename the namespace"
            )
        if not isinstance(description, str):
            raise TypeError(f"description must be a str, got {type(description).__name__}")
        if parameters is not None and not isinstance(parameters, Mapping):
            raise TypeError(
                f"parameters must be a JSON schema object (a dict), got "
                f"{type(parameters).__name__}: {parameters!r}"
            )
        try:
            text = None if parameters is None else json.dumps(dict(parameters))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"parameters of tool {name!r} must be JSON-serializable: {exc}"
            ) from exc
        _set(self, "name", name)
        _set(self, "description", description)
        _set(self, "parameters_json", text)
        _set(self, "namespace", namespace)
        _set(self, "namespace_description", str(namespace_description))

    @property
    def parameters(self) -> dict[str, Any] | None:
        """The JSON schema, as a fresh dict (changing it does not change the tool)."""
        return None if self.parameters_json is None else json.loads(self.parameters_json)

    @classmethod
    def from_openai(cls, tool: Mapping[str, Any]) -> FunctionTool:
        """From the OpenAI tools shape: ``{"type": "function", "function": {name, ...}}``.

        The flat Responses-API shape (``{"type": "function", "name": ...}``) works too.
        """
        if not isinstance(tool, Mapping):
            raise TypeError(f"an OpenAI tool is a dict, got {type(tool).__name__}: {tool!r}")
        kind = tool.get("type", "function")
        if kind != "function":
            raise ValueError(
                f"only tools of type 'function' become FunctionTool, got type {kind!r}; "
                "enable built-in tools with SystemConfig(browser_tool=..., python_tool=...)"
            )
        spec = tool.get("function", tool)
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise ValueError(f"an OpenAI function tool needs a 'name', got {tool!r}")
        return cls(spec["name"], spec.get("description") or "", spec.get("parameters"))

    def to_harmony(self) -> oh.ToolDescription:
        return oh.ToolDescription.new(self.name, self.description, self.parameters)

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name, "description": self.description}
        if self.parameters_json is not None:
            function["parameters"] = self.parameters
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class DeveloperConfig:
    """The developer message: instructions (the "system prompt") and function tools."""

    instructions: str | None = None
    tools: tuple[FunctionTool, ...] = ()

    def __post_init__(self) -> None:
        tools = tuple(self.tools)
        for tool in tools:
            if not isinstance(tool, FunctionTool):
                raise TypeError(
                    f"tools must be FunctionTool values, got {type(tool).__name__}: {tool!r}; "
                    "convert OpenAI tool dicts with FunctionTool.from_openai"
                )
        names = [
            tool.name if tool.namespace == "functions" else f"{tool.namespace}.{tool.name}"
            for tool in tools
        ]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"function tool names must be unique, got duplicates {duplicates}")
        _set(self, "tools", tools)

    def to_harmony(self) -> oh.DeveloperContent:
        """``functions`` first, then each other namespace in the order its first tool comes."""
        content = oh.DeveloperContent.new()
        if self.instructions is not None:
            content = content.with_instructions(self.instructions)
        functions = [tool.to_harmony() for tool in self.tools if tool.namespace == "functions"]
        if functions:
            content = content.with_function_tools(functions)
        spaces: dict[str, list[FunctionTool]] = {}
        for tool in self.tools:
            if tool.namespace != "functions":
                spaces.setdefault(tool.namespace, []).append(tool)
        for name, tools in spaces.items():
            content = content.with_tools(
                oh.ToolNamespaceConfig(
                    name=name,
                    description=tools[0].namespace_description or None,
                    tools=[tool.to_harmony() for tool in tools],
                )
            )
        return content

    @classmethod
    def from_harmony(cls, content: oh.DeveloperContent) -> DeveloperConfig:
        tools: list[FunctionTool] = []
        for name, space in (content.tools or {}).items():
            tools.extend(
                FunctionTool(
                    t.name,
                    t.description,
                    t.parameters,
                    namespace=name,
                    namespace_description=(space.description or "") if name != "functions" else "",
                )
                for t in space.tools
            )
        return cls(instructions=content.instructions, tools=tuple(tools))


MessageContent = str | SystemConfig | DeveloperConfig


@dataclass(frozen=True, slots=True)
class Message:
    """One harmony message. Build it with the constructors: ``Message.user("Hi")``.

    ``name`` is the author name (a tool's name for tool results), ``recipient`` the header's
    ``to=`` (a tool for tool calls), ``content_type`` the raw header content type
    (``"<|constrain|>json"``, ``"code"``).
    """

    role: Role
    content: MessageContent = ""
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        try:
            role = self.role if isinstance(self.role, Role) else Role(self.role)
        except ValueError:
            roles = [r.value for r in Role]
            raise ValueError(f"role must be one of {roles}, got {self.role!r}") from None
        _set(self, "role", role)
        content = self.content
        if isinstance(content, SystemConfig) and role is not Role.SYSTEM:
            raise ValueError(
                f"a SystemConfig can only be the content of a system message, not {role.value}"
            )
        if isinstance(content, DeveloperConfig) and role is not Role.DEVELOPER:
            raise ValueError(
                "a DeveloperConfig can only be the content of a developer message, "
                f"not {role.value}"
            )
        if not isinstance(content, str | SystemConfig | DeveloperConfig):
            raise TypeError(
                f"message content must be a str, SystemConfig or DeveloperConfig, got "
                f"{type(content).__name__}: {content!r}"
            )
        if isinstance(content, str) and type(content) is not str:
            _set(self, "content", str(content))
        if role is Role.TOOL and not self.name:
            raise ValueError(
                "a tool message needs the tool's name; use Message.tool_result(name, content)"
            )
        _set(self, "channel", _plain(self.channel, "channel"))
        _set(self, "recipient", _plain(self.recipient, "recipient"))
        _set(self, "content_type", _plain(self.content_type, "content_type"))
        _set(self, "name", _plain(self.name, "name"))

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def user(cls, text: str) -> Message:
        return cls(Role.USER, text)

    @classmethod
    def assistant(cls, text: str, *, channel: str = Channel.FINAL) -> Message:
        """An assistant message; the default ``final`` channel is the visible answer."""
        return cls(Role.ASSISTANT, text, channel=channel)

    @classmethod
    def analysis(cls, text: str) -> Message:
        """Assistant reasoning (the ``analysis`` channel)."""
        return cls(Role.ASSISTANT, text, channel=Channel.ANALYSIS)

    @classmethod
    def tool_call(
        cls,
        recipient: str,
        arguments: str | Mapping[str, Any],
        *,
        channel: str = Channel.COMMENTARY,
        constrain: str | None = "json",
    ) -> Message:
        """The assistant calls ``recipient`` (``functions.get_weather``, ``browser.search``).

        ``arguments`` is kept verbatim when it is a string; a dict is written as JSON.
        ``constrain="json"`` renders the header's ``<|constrain|>json``; ``None`` drops it.
        """
        if not isinstance(recipient, str) or not recipient or any(c.isspace() for c in recipient):
            raise ValueError(
                f"a tool call's recipient is a tool name without spaces such as "
                f"'functions.get_weather', got {recipient!r}"
            )
        if not isinstance(arguments, str):
            arguments = json.dumps(dict(arguments), ensure_ascii=False)
        content_type = None if constrain is None else f"{_CONSTRAIN}{constrain}"
        return cls(
            Role.ASSISTANT,
            arguments,
            channel=channel,
            recipient=recipient,
            content_type=content_type,
        )

    @classmethod
    def tool_result(
        cls, name: str, content: str | Mapping[str, Any], *, channel: str = Channel.COMMENTARY
    ) -> Message:
        """A tool's answer to the assistant, authored by the tool.

        ``name`` is the recipient of the call (``functions.get_weather``, ``browser.search``,
        ``python``); a bare function name (``get_weather``) gets the ``functions.`` prefix.
        """
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"a tool result needs the tool's name without spaces, got {name!r}")
        if "." not in name and name not in _BUILTIN_TOOL_AUTHORS:
            name = f"functions.{name}"
        if not isinstance(content, str):
            content = json.dumps(dict(content), ensure_ascii=False)
        return cls(Role.TOOL, content, channel=channel, recipient="assistant", name=name)

    @classmethod
    def system(cls, config: SystemConfig | str | None = None) -> Message:
        return cls(Role.SYSTEM, SystemConfig() if config is None else config)

    @classmethod
    def developer(cls, config: DeveloperConfig | str) -> Message:
        return cls(Role.DEVELOPER, config)

    # -- views and conversions ---------------------------------------------------------------

    @property
    def text(self) -> str:
        """The text content; empty for system and developer configs."""
        return self.content if isinstance(self.content, str) else ""

    def to_harmony(self) -> oh.Message:
        if isinstance(self.content, str):
            content: oh.Content = oh.TextContent(text=self.content)
        else:
            content = self.content.to_harmony()
        return oh.Message(
            author=oh.Author(role=self.role, name=self.name),
            content=[content],
            channel=self.channel,
            recipient=self.recipient,
            content_type=self.content_type,
        )

    @classmethod
    def from_harmony(cls, message: oh.Message) -> Message:
        """From an openai-harmony message; several text parts are joined into one."""
        parts = message.content
        content: MessageContent
        if len(parts) == 1 and isinstance(parts[0], oh.SystemContent):
            content = SystemConfig.from_harmony(parts[0])
        elif len(parts) == 1 and isinstance(parts[0], oh.DeveloperContent):
            content = DeveloperConfig.from_harmony(parts[0])
        elif all(isinstance(part, oh.TextContent) for part in parts):
            content = "".join(part.text for part in parts)  # type: ignore[attr-defined]
        else:
            kinds = [type(part).__name__ for part in parts]
            raise ValueError(
                f"cannot convert a message with contents {kinds}; give it a single SystemContent, "
                "a single DeveloperContent or text parts"
            )
        return cls(
            message.author.role,
            content,
            channel=message.channel or None,  # openai-harmony reads a bare "to=" as ""
            recipient=message.recipient or None,
            content_type=message.content_type or None,
            name=message.author.name,
        )
