"""Schema versions and the pure functions that move a log between them.

``MIGRATIONS[n]`` turns a version ``n`` dict into a version ``n + 1`` dict; ``DOWNGRADES[n]``
goes the other way. Both take and return plain JSON-ready dicts, never mutate their input and
give the same output for the same input (no clocks, no random ids), so a dry run shows exactly
what a real run writes. Adding version 3 is one ``@register_migration(2)`` function (and, if
you want ``--to 2``, one ``@register_downgrade(3)``) plus its tests; see the README.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from mlx_harmony.chat_history.errors import ChatLogError, format_place
from mlx_harmony.chat_history.hyperparameters import diff_hyperparameters
from mlx_harmony.chat_history.models import (
    HYPERPARAMETER_ROLES,
    SCHEMA_VERSION,
    ChatLog,
    resolve_hyperparameters,
)
from mlx_harmony.chat_history.v1 import ConversationV1, v1_channel

__all__ = [
    "DOWNGRADES",
    "LATEST_VERSION",
    "MIGRATIONS",
    "VERSION_MODELS",
    "Migration",
    "detect_version",
    "migrate",
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
VERSION_MODELS: dict[int, type[BaseModel]] = {1: ConversationV1, SCHEMA_VERSION: ChatLog}
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
    while version < target:
        data = MIGRATIONS[version](data)
        version += 1
    while version > target:
        data = DOWNGRADES[version](data)
        version -= 1
    return data


# -- helpers shared by the steps ------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    """ISO 8601 as pydantic writes it (``Z`` for UTC), so migrated and saved text agree."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _copy(value: Any) -> Any:
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
    for i, m in enumerate(messages):
        extra = m.model_extra
        out: dict[str, Any] = _copy_dict(extra) if extra else {}
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
    header.update(
        id=chat_id,
        created_at=_iso(created),
        updated_at=_iso(updated),
        title=md.title,
        model_path=md.model_path,
        prompt_config_path=md.prompt_config_path,
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
    log = validate_version(ChatLog, data)
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
    for m, effective in zip(log.messages, resolve_hyperparameters(log), strict=True):
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
