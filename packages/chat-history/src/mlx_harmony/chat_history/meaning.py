"""What a log says, independent of how its version stores it.

Two logs have the same meaning when they hold the same messages (role, channel, content,
thinking, tool addressing, timestamp with its offset, effective hyperparameters of every turn,
unknown fields) and the same settings to resume with. Ids, tool call ids, timing and derived
times are bookkeeping and left out. Each version computes its meaning from its own model, not
through the migrations, so comparing meanings tests the migrations rather than repeating them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlx_harmony.chat_history.hyperparameters import json_equal
from mlx_harmony.chat_history.migrations import VERSION_MODELS, detect_version, validate_version
from mlx_harmony.chat_history.models import HYPERPARAMETER_ROLES, ChatLog, resolve_hyperparameters
from mlx_harmony.chat_history.v1 import ConversationV1, v1_channel

__all__ = ["MEANINGS", "meaning", "meaning_difference"]


def _meaning_v1(conv: ConversationV1) -> dict[str, Any]:
    md = conv.metadata
    messages = []
    for m in conv.messages:
        if m.role in HYPERPARAMETER_ROLES:
            hyperparameters = m.hyperparameters or {}  # "none recorded" is "no values"
        else:
            hyperparameters = m.hyperparameters
        messages.append(
            {
                "role": m.role,
                "channel": v1_channel(m),
                "recipient": m.recipient,
                "name": m.name,
                "timestamp": m.timestamp.isoformat(),
                "content": m.content,
                "analysis": m.analysis,
                "hyperparameters": hyperparameters,
                "extra": dict(m.model_extra or {}),
            }
        )
    return {
        "header": {
            "title": md.title,
            "model_path": md.model_path,
            "prompt_config_path": md.prompt_config_path,
            "tools": dict(md.tools),
            "hyperparameters": dict(md.hyperparameters),
            "extra": dict(md.model_extra or {}),
        },
        "messages": messages,
        "extra": dict(conv.model_extra or {}),
    }


def _meaning_v2(log: ChatLog) -> dict[str, Any]:
    h = log.header
    messages = []
    for m, effective in zip(log.messages, resolve_hyperparameters(log), strict=True):
        extra = dict(m.model_extra or {})
        legacy = extra.pop("legacy_hyperparameters", None)
        if m.role in HYPERPARAMETER_ROLES:
            hyperparameters = dict(effective)
            if legacy is not None:
                extra["legacy_hyperparameters"] = legacy
        else:
            hyperparameters = legacy
        messages.append(
            {
                "role": m.role,
                "channel": m.channel,
                "recipient": m.recipient,
                "name": m.name,
                "timestamp": m.timestamp.isoformat(),
                "content": m.content,
                "analysis": m.analysis,
                "hyperparameters": hyperparameters,
                "extra": extra,
            }
        )
    return {
        "header": {
            "title": h.title,
            "model_path": h.model_path,
            "prompt_config_path": h.prompt_config_path,
            "tools": dict(h.tools),
            "hyperparameters": dict(h.hyperparameters),
            "extra": dict(h.model_extra or {}),
        },
        "messages": messages,
        "extra": dict(log.model_extra or {}),
    }


#: The meaning of a validated log, per version.
MEANINGS: dict[int, Callable[[Any], dict[str, Any]]] = {1: _meaning_v1, 2: _meaning_v2}


def meaning(source: ChatLog | dict[str, Any]) -> dict[str, Any]:
    """The normalised meaning of a log of any version (a ``ChatLog`` or a parsed file)."""
    if isinstance(source, ChatLog):
        return _meaning_v2(source)
    version = detect_version(source)
    return MEANINGS[version](validate_version(VERSION_MODELS[version], source))


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
