"""Schema versions and the pure functions that move a log between them.

``MIGRATIONS[n]`` turns a version ``n`` dict into a version ``n + 1`` dict; ``DOWNGRADES[n]``
goes the other way. Both take and return plain JSON-ready dicts, never mutate their input and
give the same output for the same input (no clocks, no random ids), so a dry run shows exactly
what a real run writes.

Two files say ``schema_version: 2``: this project's (``header`` + ``messages``) and the original
mlx-harmony's (``chats`` + ``chat_order``). ``detect_shape`` tells them apart by their keys, and
the original's goes straight to v3 (``original_v2_to_v3``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mlx_harmony.chat_history.errors import ChatLogError, format_place
from mlx_harmony.chat_history.hyperparameters import (
    apply_hyperparameter_change,
    diff_hyperparameters,
)
from mlx_harmony.chat_history.models import (
    HYPERPARAMETER_ROLES,
    SCHEMA_VERSION,
    ChatLog,
)
from mlx_harmony.chat_history.original import OriginalChatV2, OriginalLogV2
from mlx_harmony.chat_history.timestamps import keep_disagreeing, render_iso
from mlx_harmony.chat_history.v1 import ConversationV1, v1_channel
from mlx_harmony.chat_history.v2 import ChatLogV2, resolve_hyperparameters_v2

__all__ = [
    "DOWNGRADES",
    "LATEST_VERSION",
    "MIGRATIONS",
    "VERSION_MODELS",
    "Migration",
    "Shape",
    "detect_shape",
    "detect_version",
    "migrate",
    "original_v2_to_v3",
    "register_downgrade",
    "register_migration",
    "validate_version",
]

Migration = Callable[[dict[str, Any]], dict[str, Any]]

#: ``MIGRATIONS[n]``: version ``n`` -> version ``n + 1``.
MIGRATIONS: dict[int, Migration] = {}
#: ``DOWNGRADES[n]``: version ``n`` -> version ``n - 1`` (used by ``--to`` and round-trip tests).
DOWNGRADES: dict[int, Migration] = {}
#: The pydantic model that validates each version.
VERSION_MODELS: dict[int, type[BaseModel]] = {
    1: ConversationV1,
    2: ChatLogV2,
    SCHEMA_VERSION: ChatLog,
}
#: The version every loader returns and every save writes.
LATEST_VERSION = SCHEMA_VERSION

M = TypeVar("M", bound=BaseModel)


def register_migration(source: int) -> Callable[[Migration], Migration]:
    """Register ``fn`` as the migration from version ``source`` to ``source + 1``."""

    def decorate(fn: Migration) -> Migration:
        if source in MIGRATIONS:
            raise ValueError(f"a migration from v{source} is already registered")
        MIGRATIONS[source] = fn
        return fn

    return decorate


def register_downgrade(source: int) -> Callable[[Migration], Migration]:
    """Register ``fn`` as the downgrade from version ``source`` to ``source - 1``."""

    def decorate(fn: Migration) -> Migration:
        if source in DOWNGRADES:
            raise ValueError(f"a downgrade from v{source} is already registered")
        DOWNGRADES[source] = fn
        return fn

    return decorate


_JSON_TYPE_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true/false",
    type(None): "null",
}


def detect_version(data: Any) -> int:
    """The schema version of a parsed log: ``schema_version``, or 1 when there is none."""
    if not isinstance(data, dict):
        got = _JSON_TYPE_NAMES.get(type(data), type(data).__name__)
        raise ChatLogError(
            f"a chat log is a JSON object with a 'messages' list, got {got}", place="top level"
        )
    version = data.get("schema_version")
    if version is None:
        return 1
    if type(version) is not int:
        raise ChatLogError(
            f"must be a whole number such as {LATEST_VERSION}, got {json.dumps(version)[:40]}",
            place="schema_version",
        )
    if version > LATEST_VERSION:
        raise ChatLogError(
            f"version {version} is newer than this tool reads (1 to {LATEST_VERSION}); "
            "upgrade mlx-harmony-chat-history to open it",
            place="schema_version",
        )
    if version < 1:
        raise ChatLogError(f"must be 1 to {LATEST_VERSION}, got {version}", place="schema_version")
    return version


class Shape(StrEnum):
    """The kinds of chat-log file, told apart by their keys (two of them say version 2)."""

    V1 = "v1"
    """No ``schema_version``: the original mlx-harmony's v1 and this project's first releases."""
    V2 = "v2"
    """``schema_version: 2`` with ``header`` and ``messages``: this project's v2."""
    ORIGINAL_V2 = "original-v2"
    """``schema_version: 2`` with ``chats``: the original mlx-harmony's v2."""
    V3 = "v3"
    """The current schema."""

    @property
    def version(self) -> int:
        """The ``schema_version`` the shape says."""
        return {"v1": 1, "v2": 2, "original-v2": 2, "v3": 3}[self.value]


def detect_shape(data: Any) -> Shape:
    """Which kind of file ``data`` (a parsed log) is: by its version and, for version 2, by
    whether it has ``chats`` (the original's) or ``header`` (ours)."""
    version = detect_version(data)
    if version == 1:
        return Shape.V1
    if version == 3:
        return Shape.V3
    if "chats" in data and "header" not in data:
        return Shape.ORIGINAL_V2
    return Shape.V2


def _short(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_FIXES = {
    "datetime": "write ISO 8601 such as 2025-08-10T09:30:00Z",
    "timezone_aware": "add an offset such as Z or +02:00",
}


def validate_version(model: type[M], data: Any) -> M:
    """``model.model_validate(data)``, turning a validation error into a one-line
    ``ChatLogError`` that names the first bad place."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        if first["type"] == "missing":
            problem = "is missing (required)"
        else:
            problem = f"{first['msg'][0].lower()}{first['msg'][1:]}, got {_short(first['input'])}"
            fix = _FIXES.get(first["type"].split("_", 1)[0]) or _FIXES.get(first["type"])
            if fix:
                problem += f"; {fix}"
        if len(errors) > 1:
            problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise ChatLogError(problem, place=format_place(first["loc"])) from exc


def migrate(data: dict[str, Any], *, to: int | None = None) -> dict[str, Any]:
    """Move a parsed log of any version to version ``to`` (default: the latest).

    Returns a new JSON-ready dict (``data`` itself when it already is at ``to``). Raises
    ``ChatLogError`` naming the place when ``data`` is not a valid log of its version.
    """
    target = LATEST_VERSION if to is None else to
    if type(target) is not int or not 1 <= target <= LATEST_VERSION:
        raise ValueError(f"to must be a version from 1 to {LATEST_VERSION}, got {to!r}")
    version = detect_version(data)
    if detect_shape(data) is Shape.ORIGINAL_V2:
        data, version = original_v2_to_v3(data), 3
    while version < target:
        data = MIGRATIONS[version](data)
        version += 1
    while version > target:
        data = DOWNGRADES[version](data)
        version -= 1
    return data


# -- helpers shared by the steps ------------------------------------------------------------


_iso = render_iso


def _copy(value: Any) -> Any:
    """A copy of a JSON value that shares nothing mutable with it (faster than deepcopy)."""
    kind = type(value)
    if kind is dict:
        return {k: _copy(v) for k, v in value.items()}
    if kind is list:
        return [_copy(v) for v in value]
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


def _copy_dict(values: dict[str, Any] | None) -> dict[str, Any]:
    return {k: _copy(v) for k, v in values.items()} if values else {}


def _derived_chat_id(data: dict[str, Any]) -> str:
    """A chat id computed from the file: its metadata, length, first and last messages.

    Hashing the whole file would cost more than the rest of the migration; these parts tell
    two chats apart unless one is a copy of the other.
    """
    messages = data.get("messages") or []
    key = [data.get("metadata"), len(messages), messages[:2], messages[-2:]]
    canonical = json.dumps(key, sort_keys=True, ensure_ascii=False, default=str)
    return "v1-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


class _Ids:
    """Deterministic ids that never collide with ids already in the file."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    def make(self, base: str) -> str:
        taken = self.taken
        if base not in taken:
            taken.add(base)
            return base
        candidate, n = base, 1
        while candidate in taken:
            candidate, n = f"{base}-{n}", n + 1
        self.taken.add(candidate)
        return candidate


# -- v1 <-> v2 ------------------------------------------------------------------------------


@register_migration(1)
def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """The legacy file to the v2 container.

    Messages map one to one (a separate analysis message stays a message on the ``analysis``
    channel; inline ``analysis`` text stays on its answer). Each message gets a stable id
    (``v1-00007``), each tool call an id shared with the tool result that answers it
    (``call-v1-00007``), and per-turn hyperparameters are stored only where they change. A
    missing ``hyperparameters`` on an assistant or tool message means "none recorded", stored
    as unsetting the previous values. Ids and the chat id depend only on the input.
    """
    conv = validate_version(ConversationV1, data)
    md = conv.metadata
    messages = conv.messages
    ids = _Ids(
        {m.id for m in messages if m.id} | {m.tool_call_id for m in messages if m.tool_call_id}
    )

    chat_id = md.chat_id if md.chat_id is not None else _derived_chat_id(data)

    out_messages: list[dict[str, Any]] = []
    previous: dict[str, Any] = {}
    pending_calls: list[tuple[str, str]] = []  # (recipient, call id), oldest first
    raw_messages = data.get("messages") or []
    for i, m in enumerate(messages):
        extra = m.model_extra
        out: dict[str, Any] = _copy_dict(extra) if extra else {}
        keep_disagreeing(raw_messages[i], ("timestamp",), out)
        out["id"] = m.id or ids.make(f"v1-{i:05d}")
        out["timestamp"] = _iso(m.timestamp)
        role = out["role"] = m.role
        channel = m.channel if m.channel is not None or role != "assistant" else v1_channel(m)
        if channel is not None:
            out["channel"] = channel
        if m.recipient is not None:
            out["recipient"] = m.recipient
        if m.name is not None:
            out["name"] = m.name

        call_id = m.tool_call_id
        if role == "assistant" and m.recipient:
            if call_id is None:
                call_id = ids.make(f"call-v1-{i:05d}")
            pending_calls.append((m.recipient, call_id))
        elif role == "tool":
            if call_id is None and pending_calls:
                # the oldest open call to this tool, else the oldest open call
                pick = next((p for p in pending_calls if p[0] == m.name), pending_calls[0])
                call_id = pick[1]
            pending_calls = [p for p in pending_calls if p[1] != call_id]
        if call_id is not None:
            out["tool_call_id"] = call_id

        out["content"] = m.content
        if m.analysis is not None:
            out["analysis"] = m.analysis
        if role in HYPERPARAMETER_ROLES:
            current = m.hyperparameters or {}
            changed, unset = diff_hyperparameters(previous, current)
            if changed:
                out["hyperparameters"] = _copy_dict(changed)
            if unset:
                out["hyperparameters_unset"] = unset
            previous = current
        elif m.hyperparameters is not None:
            # v2 keeps hyperparameters on assistant and tool messages only; keep these aside.
            out["legacy_hyperparameters"] = _copy_dict(m.hyperparameters)
        if m.timing is not None:
            out["timing"] = _copy_dict(m.timing)
        out_messages.append(out)

    created = md.created_at or (messages[0].timestamp if messages else None)
    updated = md.updated_at or max((m.timestamp for m in messages), default=created)
    header: dict[str, Any] = _copy_dict(md.model_extra)
    keep_disagreeing(data.get("metadata"), ("created_at", "updated_at"), header)
    # the original's ``model`` / ``prompt_config`` are the paths; kept aside only when both
    # spellings are present
    model_path, prompt_config_path = md.model_path, md.prompt_config_path
    if model_path is None:
        model_path = md.model
    elif md.model is not None:
        header["model"] = md.model
    if prompt_config_path is None:
        prompt_config_path = md.prompt_config
    elif md.prompt_config is not None:
        header["prompt_config"] = md.prompt_config
    if md.max_context_tokens is not None:
        header["max_context_tokens"] = md.max_context_tokens
    header.update(
        id=chat_id,
        created_at=_iso(created),
        updated_at=_iso(updated),
        title=md.title,
        model_path=model_path,
        prompt_config_path=prompt_config_path,
        tools=dict(md.tools),
        hyperparameters=_copy_dict(md.hyperparameters),
    )
    top: dict[str, Any] = {k: _copy(v) for k, v in (conv.model_extra or {}).items()}
    top.update(schema_version=2, header=header, messages=out_messages)
    return top


@register_downgrade(2)
def v2_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A v2 log as a v1 file with the same meaning (see ``meaning``).

    Every assistant and tool message gets its full effective hyperparameters back. Ids, tool
    call ids and timing stay as extra keys (a v1 reader ignores them; ``v1_to_v2`` reuses
    them), so v2 -> v1 -> v2 gives the same log.
    """
    log = validate_version(ChatLogV2, data)
    h = log.header
    metadata: dict[str, Any] = _copy_dict(h.model_extra)
    metadata["chat_id"] = h.id
    if h.title is not None:
        metadata["title"] = h.title
    if h.model_path is not None:
        metadata["model_path"] = h.model_path
    if h.prompt_config_path is not None:
        metadata["prompt_config_path"] = h.prompt_config_path
    metadata["tools"] = dict(h.tools)
    metadata["hyperparameters"] = _copy_dict(h.hyperparameters)
    if h.created_at is not None:
        metadata["created_at"] = _iso(h.created_at)
    if h.updated_at is not None:
        metadata["updated_at"] = _iso(h.updated_at)

    messages: list[dict[str, Any]] = []
    for m, effective in zip(log.messages, resolve_hyperparameters_v2(log), strict=True):
        extra = _copy_dict(m.model_extra)
        legacy = (
            extra.pop("legacy_hyperparameters", None)
            if m.role not in HYPERPARAMETER_ROLES
            else None
        )
        out = extra
        out["role"] = m.role
        out["content"] = m.content
        out["timestamp"] = _iso(m.timestamp)
        default_channel = (
            ("commentary" if m.recipient else "final") if m.role == "assistant" else None
        )
        if m.channel != default_channel:
            out["channel"] = m.channel
        if m.analysis is not None:
            out["analysis"] = m.analysis
        if m.recipient is not None:
            out["recipient"] = m.recipient
        if m.name is not None:
            out["name"] = m.name
        if m.role in HYPERPARAMETER_ROLES:
            if effective:
                out["hyperparameters"] = _copy_dict(effective)
        elif legacy is not None:
            out["hyperparameters"] = legacy
        out["id"] = m.id
        if m.tool_call_id is not None:
            out["tool_call_id"] = m.tool_call_id
        if m.timing is not None:
            out["timing"] = m.timing.model_dump(mode="json", exclude_defaults=True)
        messages.append(out)

    top: dict[str, Any] = {k: _copy(v) for k, v in (log.model_extra or {}).items()}
    top.update(metadata=metadata, messages=messages)
    return top


#: Keys v3 gives a meaning that older files may hold as unknown fields of their own.
MESSAGE_KEYS_V3 = ("parent_id",)
TOP_KEYS_V3 = ("chat_order", "active_chat_id", "chats")


def rename_legacy(fields: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Move unknown fields of an older file that v3 has taken for itself (a v1 message's own
    ``parent_id``) to ``legacy_<key>``, so they are kept and not mistaken for v3's."""
    for key in keys:
        if key in fields:
            fields[f"legacy_{key}"] = fields.pop(key)


def restore_legacy(fields: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Undo ``rename_legacy`` for a downgrade."""
    for key in keys:
        if f"legacy_{key}" in fields:
            fields[key] = fields.pop(f"legacy_{key}")


# -- v2 <-> v3 ------------------------------------------------------------------------------


@register_migration(2)
def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """This project's v2 as a v3 file of one chat whose messages form one branch.

    Each message's parent is the one before it; the stored hyperparameter changes stay as
    they are (on one branch, "since the previous turn" and "since the nearest turn above"
    are the same thing).
    """
    log = validate_version(ChatLogV2, data)  # validated; the output is built from the dict
    header = _copy_dict(data["header"])
    messages: list[dict[str, Any]] = []
    parent: str | None = None
    for m in data.get("messages") or []:
        fields = _copy_dict(m)
        rename_legacy(fields, MESSAGE_KEYS_V3)
        out: dict[str, Any] = {"id": fields.pop("id")}
        if parent is not None:
            out["parent_id"] = parent
        out.update(fields)
        messages.append(out)
        parent = out["id"]
    chat: dict[str, Any] = {"header": header, "messages": messages}
    if parent is not None:
        chat["active_leaf_id"] = parent
    top: dict[str, Any] = {k: _copy(v) for k, v in (log.model_extra or {}).items()}
    rename_legacy(top, TOP_KEYS_V3)
    top.update(
        schema_version=3,
        chat_order=[log.header.id],
        active_chat_id=log.header.id,
        chats={log.header.id: chat},
    )
    return top


@register_downgrade(3)
def v3_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """A v3 file as this project's v2, when v2 can hold it: one chat, one branch."""
    log = validate_version(ChatLog, data)
    if len(log.chats) != 1:
        raise ChatLogError(
            f"the file holds {len(log.chats)} chats and version 2 holds one; keep it at version 3",
            place="chats",
        )
    chat = log.active
    if chat.model_extra:
        raise ChatLogError(
            f"the chat has fields version 2 has no place for ({', '.join(chat.model_extra)}); "
            "keep it at version 3",
            place=f"chats[{chat.header.id}]",
        )
    previous: str | None = None
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(chat.messages):
        if m.parent_id != previous:
            raise ChatLogError(
                "the chat has branches (this message does not follow the one before it) and "
                "version 2 holds one branch; keep it at version 3",
                place=f"chats[{chat.header.id}].messages[{i}].parent_id",
            )
        out = m.model_dump(mode="json", exclude_defaults=True)
        out.pop("parent_id", None)
        restore_legacy(out, MESSAGE_KEYS_V3)
        messages.append(out)
        previous = m.id
    leaf = chat.leaf()
    if leaf is not None and leaf.id != previous:
        raise ChatLogError(
            "the active branch ends before the last message; version 2 has no place for "
            "the rest, so keep it at version 3",
            place=f"chats[{chat.header.id}].active_leaf_id",
        )
    top: dict[str, Any] = {k: _copy(v) for k, v in (log.model_extra or {}).items()}
    restore_legacy(top, TOP_KEYS_V3)
    top.update(
        schema_version=2,
        header=chat.header.model_dump(mode="json", exclude_defaults=True) | {"id": chat.header.id},
        messages=messages,
    )
    return top


# -- the original's v2 -> v3 ----------------------------------------------------------------


def _find_call(
    by_id: dict[str, dict[str, Any]], parent_id: str | None, name: str | None
) -> str | None:
    """The call a tool result answers: the nearest tool call above it on its branch (one to
    the same tool first), stopping at the user message that began the turn."""
    fallback: str | None = None
    node = by_id.get(parent_id) if parent_id is not None else None
    while node is not None and node["role"] != "user":
        call_id = node.get("tool_call_id")
        if node["role"] == "assistant" and node.get("recipient") and call_id:
            if name is None or node.get("recipient") == name:
                return str(call_id)
            fallback = fallback or str(call_id)
        parent = node.get("parent_id")
        node = by_id.get(parent) if parent is not None else None
    return fallback


def original_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """The original mlx-harmony's v2 (several chats, a tree per chat) as v3.

    Chats keep their ids and order, messages their ids, parents, text, times and unknown
    fields (``cache_key`` among them). The full hyperparameters each message carried become
    changes along its branch; tool calls and results get a shared ``tool_call_id``
    (``call-<message id>``). The active branch is the one ending at the last message written.
    """
    log = validate_version(OriginalLogV2, data)
    raw_chats = data["chats"]
    order = list(log.chat_order)
    for i, chat_id in enumerate(order):
        if chat_id not in log.chats:
            raise ChatLogError(f"chat {chat_id!r} is not in chats", place=f"chat_order[{i}]")
        if chat_id in order[:i]:
            raise ChatLogError(f"chat {chat_id!r} is listed twice", place=f"chat_order[{i}]")
    order += [c for c in log.chats if c not in order]
    if not order:
        raise ChatLogError("the file holds no chats; there is nothing to migrate", place="chats")
    active = log.active_chat_id if log.active_chat_id is not None else order[0]
    if active not in log.chats:
        raise ChatLogError(f"chat {active!r} is not in chats", place="active_chat_id")

    chats: dict[str, Any] = {}
    for chat_id in order:
        chats[chat_id] = _original_chat(
            chat_id, log.chats[chat_id], raw_chats[chat_id], f"chats[{chat_id}]"
        )
    top: dict[str, Any] = {k: _copy(v) for k, v in (log.model_extra or {}).items()}
    top.update(schema_version=3, chat_order=order, active_chat_id=active, chats=chats)
    return top


def _original_chat(
    chat_id: str, chat: OriginalChatV2, raw: dict[str, Any], place: str
) -> dict[str, Any]:
    md = chat.metadata
    header: dict[str, Any] = _copy_dict(md.model_extra)
    keep_disagreeing(raw.get("metadata"), ("created_at", "updated_at"), header)
    raw_messages = raw.get("messages") or []
    if md.chat_id is not None and md.chat_id != chat_id:
        header["chat_id"] = md.chat_id  # disagrees with its key: kept as written
    header["id"] = chat_id
    for key in (
        "title",
        "model_path",
        "prompt_config_path",
        "last_model_path",
        "last_prompt_config_path",
        "max_context_tokens",
    ):
        value = getattr(md, key)
        if value is not None:
            header[key] = value
    if md.hyperparameters is not None:
        header["hyperparameters"] = _copy_dict(md.hyperparameters)
    if md.last_hyperparameters is not None:
        header["last_hyperparameters"] = _copy_dict(md.last_hyperparameters)
    if md.created_at is not None:
        header["created_at"] = _iso(md.created_at)
    if md.updated_at is not None:
        header["updated_at"] = _iso(md.updated_at)

    effective: dict[str, dict[str, Any]] = {}
    by_id: dict[str, dict[str, Any]] = {}
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(chat.messages):
        where = f"{place}.messages[{i}]"
        if m.id in by_id:
            raise ChatLogError(f"id {m.id!r} is used twice in this chat", place=f"{where}.id")
        if m.parent_id is not None and m.parent_id not in by_id:
            raise ChatLogError(
                f"{m.parent_id!r} is not a message before this one in the chat",
                place=f"{where}.parent_id",
            )
        out: dict[str, Any] = _copy_dict(m.model_extra)
        keep_disagreeing(raw_messages[i], ("timestamp",), out)
        out["id"] = m.id
        if m.parent_id is not None:
            out["parent_id"] = m.parent_id
        out["timestamp"] = _iso(m.timestamp)
        out["role"] = m.role
        channel = m.channel
        if channel is None and m.role == "assistant":
            channel = "commentary" if m.recipient else "final"
        if channel is not None:
            out["channel"] = channel
        if m.recipient is not None:
            out["recipient"] = m.recipient
        if m.name is not None:
            out["name"] = m.name
        if m.role == "assistant" and m.recipient:
            out["tool_call_id"] = f"call-{m.id}"
        elif m.role == "tool":
            call_id = _find_call(by_id, m.parent_id, m.name)
            if call_id is not None:
                out["tool_call_id"] = call_id
        out["content"] = m.content
        if m.analysis is not None:
            out["analysis"] = m.analysis
        previous = effective[m.parent_id] if m.parent_id is not None else {}
        if m.role in HYPERPARAMETER_ROLES:
            current = m.hyperparameters or {}  # absent: none recorded
            changed, unset = diff_hyperparameters(previous, current)
            if changed:
                out["hyperparameters"] = _copy_dict(changed)
            if unset:
                out["hyperparameters_unset"] = unset
            effective[m.id] = apply_hyperparameter_change(previous, changed, unset)
        else:
            if m.hyperparameters is not None:
                out["legacy_hyperparameters"] = _copy_dict(m.hyperparameters)
            effective[m.id] = previous
        by_id[m.id] = out
        messages.append(out)

    result: dict[str, Any] = _copy_dict(chat.model_extra)
    if chat.chat_id is not None and chat.chat_id != chat_id:
        result["chat_id"] = chat.chat_id
    result["header"] = header
    result["messages"] = messages
    if messages and "active_leaf_id" not in result:
        result["active_leaf_id"] = messages[-1]["id"]
    return result
