"""What a log says, independent of how its version stores it.

Two logs have the same meaning when they hold the same chats in the same order, the same
active chat, and in each chat the same messages (role, channel, content, thinking, tool
addressing, timestamp with its offset, effective hyperparameters of every turn, the message it
follows, unknown fields) and the same settings to resume with. Ids, tool call ids, timing and
derived times are bookkeeping and left out. Each shape computes its meaning from its own model,
not through the migrations, so comparing meanings tests the migrations rather than repeating
them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mlx_harmony.chat_history.hyperparameters import json_equal
from mlx_harmony.chat_history.migrations import (
    MESSAGE_KEYS_V3,
    TOP_KEYS_V3,
    VERSION_MODELS,
    Shape,
    detect_shape,
    rename_legacy,
    validate_version,
)
from mlx_harmony.chat_history.models import (
    HYPERPARAMETER_ROLES,
    ChatLog,
    ChatMessage,
    resolve_hyperparameters,
)
from mlx_harmony.chat_history.original import OriginalLogV2, OriginalMessageV2
from mlx_harmony.chat_history.timestamps import keep_disagreeing
from mlx_harmony.chat_history.v1 import ConversationV1, MessageV1, v1_channel
from mlx_harmony.chat_history.v2 import ChatLogV2, MessageV2, resolve_hyperparameters_v2

__all__ = ["MEANINGS", "meaning", "meaning_difference"]

#: Header settings every shape can hold; anything else in a header is an unknown field.
_HEADER_KEYS = (
    "title",
    "model_path",
    "prompt_config_path",
    "tools",
    "hyperparameters",
    "max_context_tokens",
    "last_model_path",
    "last_prompt_config_path",
    "last_hyperparameters",
)
#: Header bookkeeping: ids and times derived when absent.
_HEADER_BOOKKEEPING = ("id", "chat_id", "created_at", "updated_at")


def _header(fields: Mapping[str, Any]) -> dict[str, Any]:
    fields = dict(fields)
    out: dict[str, Any] = {key: fields.pop(key, None) for key in _HEADER_KEYS}
    out["tools"] = dict(out["tools"] or {})
    out["hyperparameters"] = dict(out["hyperparameters"] or {})
    for key in _HEADER_BOOKKEEPING:
        fields.pop(key, None)
    out["extra"] = fields
    return out


def _message(
    m: MessageV1 | MessageV2 | OriginalMessageV2 | ChatMessage,
    channel: str | None,
    hyperparameters: dict[str, Any] | None,
    parent: int | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "role": m.role,
        "channel": channel,
        "recipient": m.recipient,
        "name": m.name,
        "timestamp": m.timestamp.isoformat(),
        "content": m.content,
        "analysis": m.analysis,
        "hyperparameters": hyperparameters,
        "parent": parent,
        "extra": extra,
    }


def _split_legacy(
    role: str, effective: Mapping[str, Any], extra: dict[str, Any]
) -> dict[str, Any] | None:
    """A v2/v3 message's hyperparameters as v1 had them: the effective values on assistant
    and tool messages, ``legacy_hyperparameters`` (kept aside by the migration) on others."""
    if role in HYPERPARAMETER_ROLES:
        return dict(effective)
    return extra.pop("legacy_hyperparameters", None)


def _file(chats: list[dict[str, Any]], active: int, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"chats": chats, "active_chat": active, "extra": dict(extra)}


def _chat(
    header: dict[str, Any],
    messages: list[dict[str, Any]],
    leaf: int | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    return {"header": header, "messages": messages, "active_leaf": leaf, "extra": dict(extra)}


def _meaning_v1(conv: ConversationV1, raw: dict[str, Any]) -> dict[str, Any]:
    md = conv.metadata
    fields = md.model_dump(exclude={"model", "prompt_config"})
    fields.update(md.model_extra or {})
    keep_disagreeing(raw.get("metadata"), ("created_at", "updated_at"), fields)
    raw_messages = raw["messages"]
    for long, short in (("model_path", md.model), ("prompt_config_path", md.prompt_config)):
        if fields[long] is None:
            fields[long] = short
        elif short is not None:
            fields[long.removesuffix("_path")] = short
    messages = []
    for i, m in enumerate(conv.messages):
        if m.role in HYPERPARAMETER_ROLES:
            hyperparameters = m.hyperparameters or {}  # "none recorded" is "no values"
        else:
            hyperparameters = m.hyperparameters
        parent = i - 1 if i else None
        extra = dict(m.model_extra or {})
        rename_legacy(extra, MESSAGE_KEYS_V3)
        keep_disagreeing(raw_messages[i], ("timestamp",), extra)
        messages.append(_message(m, v1_channel(m), hyperparameters, parent, extra))
    leaf = len(messages) - 1 if messages else None
    top = dict(conv.model_extra or {})
    rename_legacy(top, TOP_KEYS_V3)
    return _file([_chat(_header(fields), messages, leaf, {})], 0, top)


def _meaning_v2(log: ChatLogV2, raw: dict[str, Any]) -> dict[str, Any]:
    h = log.header
    fields = h.model_dump()
    fields.update(h.model_extra or {})
    messages = []
    for i, (m, effective) in enumerate(
        zip(log.messages, resolve_hyperparameters_v2(log), strict=True)
    ):
        extra = dict(m.model_extra or {})
        rename_legacy(extra, MESSAGE_KEYS_V3)
        hyperparameters = _split_legacy(m.role, effective, extra)
        messages.append(_message(m, m.channel, hyperparameters, i - 1 if i else None, extra))
    leaf = len(messages) - 1 if messages else None
    top = dict(log.model_extra or {})
    rename_legacy(top, TOP_KEYS_V3)
    return _file([_chat(_header(fields), messages, leaf, {})], 0, top)


def _meaning_original_v2(log: OriginalLogV2, raw: dict[str, Any]) -> dict[str, Any]:
    order = list(log.chat_order) + [c for c in log.chats if c not in log.chat_order]
    chats = []
    for chat_id in order:
        chat = log.chats[chat_id]
        raw_chat = raw["chats"][chat_id]
        fields = chat.metadata.model_dump()
        fields.update(chat.metadata.model_extra or {})
        keep_disagreeing(raw_chat.get("metadata"), ("created_at", "updated_at"), fields)
        if fields.get("chat_id") not in (None, chat_id):
            fields["chat_id_as_written"] = fields["chat_id"]
        position: dict[str, int] = {}
        messages = []
        for i, m in enumerate(chat.messages):
            parent = position.get(m.parent_id) if m.parent_id is not None else None
            if m.role in HYPERPARAMETER_ROLES:
                hyperparameters: dict[str, Any] | None = m.hyperparameters or {}
            else:
                hyperparameters = m.hyperparameters
            channel = m.channel
            if channel is None and m.role == "assistant":
                channel = "commentary" if m.recipient else "final"
            extra = dict(m.model_extra or {})
            keep_disagreeing(raw_chat["messages"][i], ("timestamp",), extra)
            messages.append(_message(m, channel, hyperparameters, parent, extra))
            position[m.id] = i
        chat_extra = dict(chat.model_extra or {})
        chat_extra.pop("active_leaf_id", None)
        if chat.chat_id not in (None, chat_id):
            chat_extra["chat_id"] = chat.chat_id
        leaf = len(messages) - 1 if messages else None
        chats.append(_chat(_header(fields), messages, leaf, chat_extra))
    active = order.index(log.active_chat_id) if log.active_chat_id is not None else 0
    return _file(chats, active, log.model_extra or {})


def _meaning_v3(log: ChatLog, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    chats = []
    for chat in log.ordered_chats():
        h = chat.header
        fields = h.model_dump()
        fields.update(h.model_extra or {})
        if "chat_id" in fields:
            fields["chat_id_as_written"] = fields["chat_id"]
        position = {m.id: i for i, m in enumerate(chat.messages)}
        messages = []
        for m, effective in zip(chat.messages, resolve_hyperparameters(chat), strict=True):
            extra = dict(m.model_extra or {})
            hyperparameters = _split_legacy(m.role, effective, extra)
            parent = position.get(m.parent_id) if m.parent_id is not None else None
            messages.append(_message(m, m.channel, hyperparameters, parent, extra))
        leaf_message = chat.leaf()
        leaf = position[leaf_message.id] if leaf_message is not None else None
        chat_extra = dict(chat.model_extra or {})
        chats.append(_chat(_header(fields), messages, leaf, chat_extra))
    return _file(chats, log.chat_order.index(log.active_chat_id), log.model_extra or {})


#: The meaning of a validated log, per shape.
MEANINGS: dict[Shape, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    Shape.V1: _meaning_v1,
    Shape.V2: _meaning_v2,
    Shape.ORIGINAL_V2: _meaning_original_v2,
    Shape.V3: _meaning_v3,
}

_SHAPE_MODELS = {
    Shape.V1: ConversationV1,
    Shape.V2: ChatLogV2,
    Shape.ORIGINAL_V2: OriginalLogV2,
    Shape.V3: VERSION_MODELS[3],
}


def meaning(source: ChatLog | dict[str, Any]) -> dict[str, Any]:
    """The normalised meaning of a log of any shape (a ``ChatLog`` or a parsed file)."""
    if isinstance(source, ChatLog):
        return _meaning_v3(source)
    shape = detect_shape(source)
    return MEANINGS[shape](validate_version(_SHAPE_MODELS[shape], source), source)


def meaning_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The first place where two meanings differ, as ``"messages[3].hyperparameters: ..."``,
    or ``None`` when they are the same (JSON types compared exactly)."""

    def walk(x: Any, y: Any, place: str) -> str | None:
        if isinstance(x, dict) and isinstance(y, dict):
            for key in sorted(x.keys() | y.keys()):
                sub = f"{place}.{key}" if place else str(key)
                if key not in x or key not in y:
                    return f"{sub}: only in {'the second' if key not in x else 'the first'}"
                found = walk(x[key], y[key], sub)
                if found:
                    return found
            return None
        if isinstance(x, list) and isinstance(y, list):
            if len(x) != len(y):
                return f"{place or 'top level'}: {len(x)} items against {len(y)}"
            for i, (u, v) in enumerate(zip(x, y, strict=True)):
                found = walk(u, v, f"{place}[{i}]")
                if found:
                    return found
            return None
        if not json_equal(x, y):
            return f"{place}: {x!r} against {y!r}"
        return None

    return walk(a, b, "")
