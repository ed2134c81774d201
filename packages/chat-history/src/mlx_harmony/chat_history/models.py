"""The current chat-log schema (version 3) and the helpers that record, branch and resolve turns.

A file holds several chats (``chat_order``, ``active_chat_id``); each chat's messages form a
tree through ``parent_id``, and ``active_leaf_id`` names the end of the branch in use. Retrying
or undoing a turn moves the active leaf back; the abandoned branch stays in the file.

Every model keeps fields it does not know (``extra="allow"``) and writes them back, so a log
written by a newer tool, or edited by hand, loses nothing when this version saves it.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from mlx_harmony.chat_history.hyperparameters import (
    apply_hyperparameter_change,
    diff_hyperparameters,
)
from mlx_harmony.chat_history.timestamps import Timestamp

__all__ = [
    "CHANNELS_BY_ROLE",
    "HYPERPARAMETER_ROLES",
    "ROOT",
    "SCHEMA_VERSION",
    "Branch",
    "Channel",
    "Chat",
    "ChatLog",
    "ChatMessage",
    "Header",
    "Role",
    "TimingStats",
    "effective_hyperparameters",
    "make_chat",
    "new_chat",
    "new_id",
    "resolve_hyperparameters",
]

SCHEMA_VERSION = 3


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

# Infinity and NaN are written as such (not as null) so that the saver can refuse them.
_MODEL_CONFIG = ConfigDict(extra="allow", populate_by_name=True, ser_json_inf_nan="constants")


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
    """One message of a chat: a node of its tree.

    ``parent_id`` is the message this one follows (``None`` for a first message).
    ``hyperparameters`` holds only what changed since the nearest assistant or tool message
    above it on its branch (``hyperparameters_unset`` the keys that stopped being set);
    ``Chat.effective_hyperparameters`` resolves the full values of any turn.
    """

    model_config = _MODEL_CONFIG

    id: str
    parent_id: str | None = None
    timestamp: Timestamp
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
    """What a chat is and how to resume it.

    ``model_path``, ``prompt_config_path``, ``tools`` and ``hyperparameters`` are the values last
    used (what a resumed session starts with). The original mlx-harmony kept the first values
    there and the last ones in ``last_*``; chats migrated from it keep both, and recording a
    turn keeps ``last_hyperparameters`` current when the chat has it.
    """

    model_config = _MODEL_CONFIG

    id: str
    created_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    title: str | None = None
    model_path: str | None = None
    prompt_config_path: str | None = None
    tools: dict[str, bool] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    max_context_tokens: int | None = None
    last_model_path: str | None = None
    last_prompt_config_path: str | None = None
    last_hyperparameters: dict[str, Any] | None = None

    @property
    def resume_model_path(self) -> str | None:
        """The model to resume with: ``last_model_path`` when set, else ``model_path``."""
        return self.last_model_path or self.model_path

    @property
    def resume_prompt_config_path(self) -> str | None:
        """The prompt config to resume with (``last_prompt_config_path`` first)."""
        return self.last_prompt_config_path or self.prompt_config_path


@dataclass(frozen=True, slots=True)
class Branch:
    """One branch of a chat: the path from the first message to ``leaf``."""

    leaf: ChatMessage
    length: int
    """Messages from the first one to the leaf, both included."""
    fork: ChatMessage | None
    """The last message this branch shares with another one (``None`` when it shares none)."""
    active: bool


#: ``active_leaf_id`` of a chat whose branch is empty (undone back to before the first message).
ROOT = ""


class Chat(BaseModel):
    """One conversation: a header and a tree of messages, with one branch active.

    ``messages`` holds every message of every branch, each after its parent (the order they
    were written in); ``branch()`` is the active one, first message first.
    """

    model_config = _MODEL_CONFIG

    header: Header
    messages: list[ChatMessage] = Field(default_factory=list)
    active_leaf_id: str | None = None
    """The last message of the active branch; ``None`` means the last message written, and
    ``""`` a branch with no messages yet."""

    # (number of messages, id() of the last one, id -> index)
    _index: tuple[int, int, dict[str, int]] | None = PrivateAttr(default=None)
    # (leaf id, effective hyperparameters at it)
    _tail: tuple[str, dict[str, Any]] | None = PrivateAttr(default=None)

    # -- the tree --------------------------------------------------------------------------

    def index(self) -> dict[str, int]:
        """Message id -> position in ``messages`` (cached; rebuilt when the list changes)."""
        messages = self.messages
        n = len(messages)
        cached = self._index
        if cached is not None and cached[0] == n and (n == 0 or cached[1] == id(messages[-1])):
            return cached[2]
        built = {m.id: i for i, m in enumerate(messages)}
        self._index = (n, id(messages[-1]) if n else 0, built)
        return built

    def message(self, message_id: str) -> ChatMessage:
        """The message with id ``message_id``."""
        i = self.index().get(message_id)
        if i is None or self.messages[i].id != message_id:
            self._index = None
            i = self.index().get(message_id)
        if i is None:
            raise KeyError(f"no message with id {message_id!r} in chat {self.header.id!r}")
        return self.messages[i]

    def leaf(self) -> ChatMessage | None:
        """The last message of the active branch (``None`` for an empty branch)."""
        leaf_id = self.active_leaf_id
        if leaf_id == ROOT or not self.messages:
            return None
        if leaf_id is not None:
            i = self.index().get(leaf_id)
            if i is not None and i < len(self.messages) and self.messages[i].id == leaf_id:
                return self.messages[i]
        return self.messages[-1]  # never set, or removed from the list by hand

    def branch(self, leaf_id: str | None = None) -> list[ChatMessage]:
        """The messages from the first one to ``leaf_id`` (default: the active leaf)."""
        leaf = self.leaf() if leaf_id is None else self.message(leaf_id)
        path: list[ChatMessage] = []
        seen: set[str] = set()
        while leaf is not None:
            if leaf.id in seen:
                raise ValueError(f"message {leaf.id!r} is its own ancestor; the tree has a cycle")
            seen.add(leaf.id)
            path.append(leaf)
            leaf = None if leaf.parent_id is None else self.message(leaf.parent_id)
        path.reverse()
        return path

    def children(self, message_id: str | None) -> list[ChatMessage]:
        """The messages that follow ``message_id`` directly (``None``: the first messages)."""
        return [m for m in self.messages if m.parent_id == message_id]

    def leaves(self) -> list[ChatMessage]:
        """The last message of every branch, in the order they were written."""
        parents = {m.parent_id for m in self.messages}
        return [m for m in self.messages if m.id not in parents]

    def branches(self) -> list[Branch]:
        """Every branch, in the order their leaves were written."""
        counts: dict[str | None, int] = {}
        for m in self.messages:
            counts[m.parent_id] = counts.get(m.parent_id, 0) + 1
        active = self.leaf()
        out = []
        for leaf in self.leaves():
            path = self.branch(leaf.id)
            fork = None
            for m in reversed(path[:-1]):
                if counts.get(m.id, 0) > 1:
                    fork = m
                    break
            active_here = active is not None and active.id == leaf.id
            out.append(Branch(leaf=leaf, length=len(path), fork=fork, active=active_here))
        return out

    def switch_branch(self, message_id: str) -> ChatMessage:
        """Make the branch through ``message_id`` active, up to its most recent leaf (the
        newest child at every fork below it); returns that leaf."""
        node = self.message(message_id)
        latest: dict[str, ChatMessage] = {}
        for m in self.messages:
            if m.parent_id is not None:
                latest[m.parent_id] = m  # the last child written wins
        while node.id in latest:
            node = latest[node.id]
        self.active_leaf_id = node.id
        return node

    def rewind(self, message_id: str | None) -> None:
        """Make ``message_id`` the active leaf (``None``: before the first message). The
        messages after it stay in the file, on a branch that is no longer active."""
        if message_id is None:
            self.active_leaf_id = ROOT
        else:
            self.active_leaf_id = self.message(message_id).id

    def _last_user(self) -> tuple[list[ChatMessage], int]:
        path = self.branch()
        for i in range(len(path) - 1, -1, -1):
            if path[i].role == "user":
                return path, i
        raise ValueError("no user message on the active branch to go back to")

    def undo(self) -> list[ChatMessage]:
        """Go back to before the last user message of the active branch; returns the
        messages left behind (they stay in the file, on their own branch)."""
        path, i = self._last_user()
        self.rewind(path[i].parent_id)
        return path[i:]

    def retry(self) -> ChatMessage:
        """Go back to the last user message of the active branch, so the next answer becomes
        a new branch beside the old one; returns that user message."""
        path, i = self._last_user()
        self.rewind(path[i].id)
        return path[i]

    # -- resolving -------------------------------------------------------------------------

    def effective_hyperparameters(self, index: int | str = -1) -> dict[str, Any]:
        """The full hyperparameters in effect at message ``index`` (a position in
        ``messages``, negative from the end, or a message id): the stored changes applied
        along its branch, from the first message on."""
        if isinstance(index, str):
            target = self.message(index)
        else:
            n = len(self.messages)
            if not -n <= index < n:
                raise IndexError(
                    f"message index {index} is out of range for a chat of {n} messages"
                )
            target = self.messages[index]
        return dict(_effective_along(self.branch(target.id)))

    def _tail_hyperparameters(self, leaf: ChatMessage | None) -> dict[str, Any]:
        if leaf is None:
            return {}
        tail = self._tail
        if tail is not None and tail[0] == leaf.id:
            return tail[1]
        values = _effective_along(self.branch(leaf.id))
        self._tail = (leaf.id, values)
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
        """Append a message to the active branch (after the active leaf) and make it the
        active leaf; keep the header current.

        ``hyperparameters`` are the full values used for this turn; only the change from the
        nearest assistant or tool message above it is stored, and the header's last-used
        values are updated. ``None`` means "unchanged". Appending is O(1) on a branch that
        grows.
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
        message_id = new_id() if id is None else id
        if message_id in self.index():
            raise ValueError(f"message id {message_id!r} is already used in this chat")

        parent = self.leaf()
        previous = self._tail_hyperparameters(parent)
        current = previous
        changed: dict[str, Any] = {}
        unset: list[str] = []
        if hyperparameters is not None:
            current = dict(hyperparameters)
            changed, unset = diff_hyperparameters(previous, current)

        message = ChatMessage(
            id=message_id,
            parent_id=None if parent is None else parent.id,
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
        index = self.index()
        self.messages.append(message)
        index[message.id] = len(self.messages) - 1
        self._index = (len(self.messages), builtins.id(message), index)
        self.active_leaf_id = message.id
        self._tail = (message.id, current)

        header = self.header
        if header.created_at is None:
            header.created_at = message.timestamp
        if header.updated_at is None or message.timestamp > header.updated_at:
            header.updated_at = message.timestamp
        if hyperparameters is not None:
            header.hyperparameters = dict(current)
            if header.last_hyperparameters is not None:
                header.last_hyperparameters = dict(current)
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
        """Append the result of the tool call ``tool_call_id`` (a call on the active branch);
        ``name`` defaults to the tool that call addressed."""
        for message in reversed(self.branch()):
            if message.tool_call_id == tool_call_id and message.role == "assistant":
                call = message
                break
        else:
            raise ValueError(
                f"no tool call with id {tool_call_id!r} on the active branch; "
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


def _effective_along(path: list[ChatMessage]) -> dict[str, Any]:
    current: dict[str, Any] = {}
    for message in path:
        if message.role in HYPERPARAMETER_ROLES and (
            message.hyperparameters or message.hyperparameters_unset
        ):
            current = apply_hyperparameter_change(
                current, message.hyperparameters, message.hyperparameters_unset
            )
    return current


class ChatLog(BaseModel):
    """A chat-log file of the latest schema version, as every loader returns it: several
    chats in ``chat_order``, one of them active.

    ``header``, ``messages`` and the ``append_*`` methods act on the active chat, so code
    written for one chat per file keeps working; ``active`` is that ``Chat``.
    """

    model_config = _MODEL_CONFIG

    schema_version: Literal[3]
    chat_order: list[str] = Field(default_factory=list)
    active_chat_id: str
    chats: dict[str, Chat]

    # (real path, sha256 of the bytes, shape) of the file this log was read from or saved to,
    # so that a save can tell whether someone else wrote the file in between
    _origin: tuple[str, str, str] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _default_schema_version(cls, data: Any) -> Any:
        # Required (so that a dump with exclude_defaults always writes it) yet optional to pass.
        if isinstance(data, dict) and "schema_version" not in data:
            data = {"schema_version": SCHEMA_VERSION, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ChatLog:
        for key, chat in self.chats.items():
            if chat.header.id != key:
                raise ValueError(
                    f"chats[{key}].header.id is {chat.header.id!r}; it must equal its key {key!r}"
                )
        if sorted(self.chat_order) != sorted(self.chats):
            raise ValueError(
                "chat_order must list every chat id in chats exactly once, "
                f"got {self.chat_order} for chats {sorted(self.chats)}"
            )
        if self.active_chat_id not in self.chats:
            raise ValueError(f"active_chat_id {self.active_chat_id!r} is not a chat in chats")
        return self

    # -- chats -----------------------------------------------------------------------------

    @property
    def active(self) -> Chat:
        """The active chat."""
        return self.chats[self.active_chat_id]

    def chat(self, chat_id: str) -> Chat:
        """The chat with id ``chat_id``."""
        try:
            return self.chats[chat_id]
        except KeyError:
            raise KeyError(
                f"no chat {chat_id!r} in this file; its chats are {', '.join(self.chat_order)}"
            ) from None

    def ordered_chats(self) -> list[Chat]:
        """The chats in ``chat_order``."""
        return [self.chats[c] for c in self.chat_order]

    def add_chat(self, chat: Chat, *, activate: bool = True) -> Chat:
        """Add ``chat`` at the end of ``chat_order`` (and make it active)."""
        if chat.header.id in self.chats:
            raise ValueError(f"a chat with id {chat.header.id!r} is already in this file")
        self.chats[chat.header.id] = chat
        self.chat_order.append(chat.header.id)
        if activate:
            self.active_chat_id = chat.header.id
        return chat

    def switch_chat(self, chat_id: str) -> Chat:
        """Make ``chat_id`` the active chat."""
        chat = self.chat(chat_id)
        self.active_chat_id = chat_id
        return chat

    # -- the active chat, for code written for one chat per file ----------------------------

    @property
    def header(self) -> Header:
        """The active chat's header."""
        return self.active.header

    @property
    def messages(self) -> list[ChatMessage]:
        """The active chat's messages, every branch (``branch()`` is the active one)."""
        return self.active.messages

    def branch(self) -> list[ChatMessage]:
        """The active branch of the active chat, first message first."""
        return self.active.branch()

    def effective_hyperparameters(self, index: int | str = -1) -> dict[str, Any]:
        """The hyperparameters in effect at a message of the active chat."""
        return self.active.effective_hyperparameters(index)

    def append_message(self, role: str, content: str = "", **kwargs: Any) -> ChatMessage:
        """``Chat.append_message`` on the active chat."""
        return self.active.append_message(role, content, **kwargs)

    def append_system(self, content: str, **kwargs: Any) -> ChatMessage:
        """``Chat.append_system`` on the active chat."""
        return self.active.append_system(content, **kwargs)

    def append_user(self, content: str, **kwargs: Any) -> ChatMessage:
        """``Chat.append_user`` on the active chat."""
        return self.active.append_user(content, **kwargs)

    def append_assistant(self, content: str, **kwargs: Any) -> ChatMessage:
        """``Chat.append_assistant`` on the active chat."""
        return self.active.append_assistant(content, **kwargs)

    def append_tool_call(self, recipient: str, arguments: str, **kwargs: Any) -> ChatMessage:
        """``Chat.append_tool_call`` on the active chat."""
        return self.active.append_tool_call(recipient, arguments, **kwargs)

    def append_tool_result(self, tool_call_id: str, content: str, **kwargs: Any) -> ChatMessage:
        """``Chat.append_tool_result`` on the active chat."""
        return self.active.append_tool_result(tool_call_id, content, **kwargs)


def make_chat(
    *,
    title: str | None = None,
    model_path: str | None = None,
    prompt_config_path: str | None = None,
    tools: Mapping[str, bool] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
) -> Chat:
    """An empty chat with a fresh id, stamped with the current time (see ``ChatLog.add_chat``)."""
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
    return Chat(header=header)


def new_chat(
    *,
    title: str | None = None,
    model_path: str | None = None,
    prompt_config_path: str | None = None,
    tools: Mapping[str, bool] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    created_at: datetime | None = None,
) -> ChatLog:
    """A new file with one empty chat, ready for ``append_*``."""
    chat = make_chat(
        title=title,
        model_path=model_path,
        prompt_config_path=prompt_config_path,
        tools=tools,
        hyperparameters=hyperparameters,
        created_at=created_at,
    )
    return ChatLog(
        schema_version=SCHEMA_VERSION,
        chat_order=[chat.header.id],
        active_chat_id=chat.header.id,
        chats={chat.header.id: chat},
    )


def _as_chat(log: ChatLog | Chat) -> Chat:
    return log.active if isinstance(log, ChatLog) else log


def resolve_hyperparameters(log: ChatLog | Chat) -> list[dict[str, Any]]:
    """The effective hyperparameters at every message of a chat (the active one of a file),
    in ``messages`` order, in one pass.

    A user or system message gets the values in effect when it was written (those of the
    nearest assistant or tool message above it). Messages whose values did not change share
    one dict: copy before mutating.
    """
    chat = _as_chat(log)
    position: dict[str, int] = {}
    out: list[dict[str, Any]] = []
    for i, message in enumerate(chat.messages):
        parent = position.get(message.parent_id) if message.parent_id is not None else None
        current = out[parent] if parent is not None else {}
        if message.role in HYPERPARAMETER_ROLES and (
            message.hyperparameters or message.hyperparameters_unset
        ):
            current = apply_hyperparameter_change(
                current, message.hyperparameters, message.hyperparameters_unset
            )
        position[message.id] = i
        out.append(current)
    return out


def effective_hyperparameters(log: ChatLog | Chat, index: int | str = -1) -> dict[str, Any]:
    """The full hyperparameters in effect at message ``index`` of a chat (the active one of a
    file): a position in ``messages`` (negative from the end) or a message id."""
    return _as_chat(log).effective_hyperparameters(index)
