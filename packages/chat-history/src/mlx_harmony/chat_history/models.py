"""The current chat-log schema (version 2) and the helpers that record and resolve turns.

Every model keeps fields it does not know (``extra="allow"``) and writes them back, so a log
written by a newer tool, or edited by hand, loses nothing when this version saves it.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from mlx_harmony.chat_history.hyperparameters import (
    apply_hyperparameter_change,
    diff_hyperparameters,
)

__all__ = [
    "CHANNELS_BY_ROLE",
    "HYPERPARAMETER_ROLES",
    "SCHEMA_VERSION",
    "Channel",
    "ChatLog",
    "ChatMessage",
    "Header",
    "Role",
    "TimingStats",
    "effective_hyperparameters",
    "new_chat",
    "new_id",
    "resolve_hyperparameters",
]

SCHEMA_VERSION = 2


class Role(StrEnum):
    """Who wrote a message (openai-harmony's roles, less ``developer``, which is not logged)."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class Channel(StrEnum):
    """Harmony channels: ``analysis`` thinks, ``commentary`` calls tools, ``final`` answers."""

    FINAL = "final"
    ANALYSIS = "analysis"
    COMMENTARY = "commentary"


#: The channels each role may use; ``None`` means "no channel".
CHANNELS_BY_ROLE: dict[str, tuple[str | None, ...]] = {
    "system": (None,),
    "user": (None,),
    "assistant": ("final", "analysis", "commentary"),
    "tool": (None, "analysis", "commentary"),
}

#: Messages of these roles carry the hyperparameters of their turn.
HYPERPARAMETER_ROLES = frozenset({"assistant", "tool"})

_MODEL_CONFIG = ConfigDict(extra="allow", populate_by_name=True)


def new_id() -> str:
    """A fresh message or chat id: 16 hex digits, unique enough for one person's logs."""
    return secrets.token_hex(8)


def _now() -> datetime:
    return datetime.now(UTC)


class TimingStats(BaseModel):
    """How long a turn took; names follow mlx-lm's ``GenerationResponse``. All optional."""

    model_config = _MODEL_CONFIG

    prompt_tokens: int | None = None
    prompt_tps: float | None = None
    generation_tokens: int | None = None
    generation_tps: float | None = None
    time_to_first_token: float | None = None
    """Seconds from the request to the first generated token."""
    total_time: float | None = None
    """Seconds for the whole turn."""
    peak_memory: float | None = None
    """Peak memory in GB, as mlx-lm reports it."""


class ChatMessage(BaseModel):
    """One message of a chat.

    ``hyperparameters`` holds only what changed since the previous assistant or tool message
    (``hyperparameters_unset`` the keys that stopped being set); ``effective_hyperparameters``
    resolves the full values of any turn.
    """

    model_config = _MODEL_CONFIG

    id: str
    timestamp: AwareDatetime
    role: str
    channel: str | None = None
    recipient: str | None = None
    """For a tool call: the tool addressed, e.g. ``python`` or ``functions.get_weather``."""
    name: str | None = None
    """For a tool result: the tool that answered."""
    tool_call_id: str | None = None
    """Pairs a tool call with its result."""
    content: str
    analysis: str | None = None
    """The thinking that led to this message, when it was kept with it."""
    hyperparameters: dict[str, Any] | None = None
    hyperparameters_unset: list[str] = Field(default_factory=list)
    timing: TimingStats | None = None


class Header(BaseModel):
    """What the chat is and how to resume it.

    ``model_path``, ``prompt_config_path``, ``tools`` and ``hyperparameters`` are the values last
    used (what a resumed session starts with); the per-turn history of hyperparameters lives in
    the messages.
    """

    model_config = _MODEL_CONFIG

    id: str
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    title: str | None = None
    model_path: str | None = None
    prompt_config_path: str | None = None
    tools: dict[str, bool] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class ChatLog(BaseModel):
    """A chat log of the latest schema version, as every loader returns it."""

    model_config = _MODEL_CONFIG

    schema_version: Literal[2]
    header: Header
    messages: list[ChatMessage] = Field(default_factory=list)

    # (number of messages, id() of the last one, effective hyperparameters after it)
    _tail: tuple[int, int, dict[str, Any]] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _default_schema_version(cls, data: Any) -> Any:
        # Required (so that a dump with exclude_defaults always writes it) yet optional to pass.
        if isinstance(data, dict) and "schema_version" not in data:
            data = {"schema_version": SCHEMA_VERSION, **data}
        return data

    # -- resolving -------------------------------------------------------------------------

    def effective_hyperparameters(self, index: int = -1) -> dict[str, Any]:
        """The hyperparameters in effect at message ``index`` (see the module function)."""
        return effective_hyperparameters(self, index)

    def _tail_hyperparameters(self) -> dict[str, Any]:
        n = len(self.messages)
        tail = self._tail
        if tail is not None and tail[0] == n and (n == 0 or tail[1] == id(self.messages[-1])):
            return tail[2]
        values = effective_hyperparameters(self, -1) if n else {}
        self._tail = (n, id(self.messages[-1]) if n else 0, values)
        return values

    # -- recording -------------------------------------------------------------------------

    def append_message(
        self,
        role: str,
        content: str = "",
        *,
        channel: str | None = None,
        analysis: str | None = None,
        recipient: str | None = None,
        name: str | None = None,
        tool_call_id: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        timing: TimingStats | Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
        id: str | None = None,
        **extra: Any,
    ) -> ChatMessage:
        """Append a message and keep the header current.

        ``hyperparameters`` are the full values used for this turn; only the change from the
        previous assistant or tool message is stored, and the header's last-used values are
        updated. ``None`` means "unchanged". Appending is O(1).
        """
        role = str(role)
        allowed = CHANNELS_BY_ROLE.get(role)
        if allowed is None:
            raise ValueError(f"role must be one of {', '.join(CHANNELS_BY_ROLE)}, got {role!r}")
        if channel is None and role == "assistant":
            channel = "commentary" if recipient else "final"
        if channel is not None:
            channel = str(channel)
        if channel not in allowed:
            shown = ", ".join("no channel" if c is None else c for c in allowed)
            raise ValueError(f"{role} messages take {shown}; got channel {channel!r}")
        if hyperparameters is not None and role not in HYPERPARAMETER_ROLES:
            raise ValueError(
                f"only assistant and tool messages carry hyperparameters, not {role} messages"
            )
        ts = _now() if timestamp is None else timestamp
        if ts.tzinfo is None:
            raise ValueError(
                f"timestamp must be timezone-aware, got {ts.isoformat()}; "
                "pass e.g. datetime.now(UTC)"
            )

        previous = self._tail_hyperparameters()
        current = previous
        changed: dict[str, Any] = {}
        unset: list[str] = []
        if hyperparameters is not None:
            current = dict(hyperparameters)
            changed, unset = diff_hyperparameters(previous, current)

        message = ChatMessage(
            id=new_id() if id is None else id,
            timestamp=ts,
            role=role,
            channel=channel,
            recipient=recipient,
            name=name,
            tool_call_id=tool_call_id,
            content=content,
            analysis=analysis,
            hyperparameters=changed or None,
            hyperparameters_unset=unset,
            timing=timing,  # type: ignore[arg-type]  # a mapping is validated into TimingStats
            **extra,
        )
        self.messages.append(message)
        self._tail = (len(self.messages), builtins.id(message), current)

        header = self.header
        if header.created_at is None:
            header.created_at = message.timestamp
        if header.updated_at is None or message.timestamp > header.updated_at:
            header.updated_at = message.timestamp
        if hyperparameters is not None:
            header.hyperparameters = dict(current)
        return message

    def append_system(self, content: str, **kwargs: Any) -> ChatMessage:
        """Append a system message."""
        return self.append_message("system", content, **kwargs)

    def append_user(self, content: str, **kwargs: Any) -> ChatMessage:
        """Append a user message."""
        return self.append_message("user", content, **kwargs)

    def append_assistant(
        self,
        content: str,
        *,
        analysis: str | None = None,
        channel: str = "final",
        hyperparameters: Mapping[str, Any] | None = None,
        timing: TimingStats | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ChatMessage:
        """Append an assistant answer (``channel="analysis"`` for thinking kept on its own)."""
        return self.append_message(
            "assistant",
            content,
            channel=channel,
            analysis=analysis,
            hyperparameters=hyperparameters,
            timing=timing,
            **kwargs,
        )

    def append_tool_call(
        self,
        recipient: str,
        arguments: str,
        *,
        channel: str = "commentary",
        tool_call_id: str | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ChatMessage:
        """Append an assistant message that calls ``recipient``; its ``tool_call_id`` is made up
        here unless given, and ``append_tool_result`` pairs the answer with it."""
        return self.append_message(
            "assistant",
            arguments,
            channel=channel,
            recipient=recipient,
            tool_call_id=f"call_{new_id()}" if tool_call_id is None else tool_call_id,
            hyperparameters=hyperparameters,
            **kwargs,
        )

    def append_tool_result(
        self,
        tool_call_id: str,
        content: str,
        *,
        name: str | None = None,
        channel: str | None = "commentary",
        **kwargs: Any,
    ) -> ChatMessage:
        """Append the result of the tool call ``tool_call_id``; ``name`` defaults to the tool
        that call addressed."""
        for message in reversed(self.messages):
            if message.tool_call_id == tool_call_id and message.role == "assistant":
                call = message
                break
        else:
            raise ValueError(
                f"no tool call with id {tool_call_id!r} in this chat; "
                "append the call first with append_tool_call()"
            )
        return self.append_message(
            "tool",
            content,
            name=call.recipient if name is None else name,
            channel=channel,
            tool_call_id=tool_call_id,
            **kwargs,
        )


def new_chat(
    *,
    title: str | None = None,
    model_path: str | None = None,
    prompt_config_path: str | None = None,
    tools: Mapping[str, bool] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
) -> ChatLog:
    """An empty chat with a fresh id, stamped with the current time, ready for ``append_*``."""
    now = _now() if created_at is None else created_at
    header = Header(
        id=new_id(),
        created_at=now,
        updated_at=now,
        title=title,
        model_path=model_path,
        prompt_config_path=prompt_config_path,
        tools=dict(tools or {}),
        hyperparameters=dict(hyperparameters or {}),
    )
    return ChatLog(schema_version=SCHEMA_VERSION, header=header)


def resolve_hyperparameters(log: ChatLog) -> list[dict[str, Any]]:
    """The effective hyperparameters at every message, in one pass.

    A user or system message gets the values in effect when it was written (those of the
    previous assistant or tool message). Messages whose values did not change share one dict:
    copy before mutating.
    """
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for message in log.messages:
        if message.role in HYPERPARAMETER_ROLES and (
            message.hyperparameters or message.hyperparameters_unset
        ):
            current = apply_hyperparameter_change(
                current, message.hyperparameters, message.hyperparameters_unset
            )
        out.append(current)
    return out


def effective_hyperparameters(log: ChatLog, index: int = -1) -> dict[str, Any]:
    """The full hyperparameters in effect at message ``index`` (negative counts from the end).

    Resolves the stored changes from the first message on; use ``resolve_hyperparameters`` to
    get every message's values at once.
    """
    n = len(log.messages)
    if not -n <= index < n:
        raise IndexError(f"message index {index} is out of range for a chat of {n} messages")
    if index < 0:
        index += n
    current: dict[str, Any] = {}
    for message in log.messages[: index + 1]:
        if message.role in HYPERPARAMETER_ROLES and (
            message.hyperparameters or message.hyperparameters_unset
        ):
            current = apply_hyperparameter_change(
                current, message.hyperparameters, message.hyperparameters_unset
            )
    return dict(current)
