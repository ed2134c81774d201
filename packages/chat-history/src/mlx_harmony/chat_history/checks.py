"""Consistency checks on a chat log: what a loader runs and ``--check`` reports.

Errors are things a reader cannot make sense of (a duplicate id, a tool result answering no
call, a role nobody knows); warnings are oddities a reader can live with (a clock that went
back, a tool result from a legacy file that was never paired). Only errors stop a load.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mlx_harmony.chat_history.hyperparameters import json_equal
from mlx_harmony.chat_history.migrations import migrate, validate_version
from mlx_harmony.chat_history.models import (
    CHANNELS_BY_ROLE,
    HYPERPARAMETER_ROLES,
    ChatLog,
)

__all__ = ["Finding", "Severity", "check_chat"]


class Severity(StrEnum):
    """How bad a finding is: only errors stop a load."""

    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in a log; ``index`` and ``message_id`` are ``None`` for the header."""

    severity: Severity
    index: int | None
    message_id: str | None
    text: str

    @property
    def place(self) -> str:
        """Where the problem is, as ``messages[3] (id a1b2)`` or ``header``."""
        if self.index is None:
            return "header"
        return f"messages[{self.index}] (id {self.message_id})"

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def __str__(self) -> str:
        return f"{self.place}: {self.severity}: {self.text}"


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeio' else 'a'} {word}"  # "a user", "an assistant"


def _channels_text(role: str) -> str:
    return ", ".join("no channel" if c is None else c for c in CHANNELS_BY_ROLE[role])


def check_chat(log: ChatLog | dict[str, Any]) -> list[Finding]:
    """Every consistency finding in ``log`` (a ``ChatLog``, or a parsed file of any version,
    which is migrated in memory first), in message order."""
    if not isinstance(log, ChatLog):
        log = validate_version(ChatLog, migrate(log))
    findings: list[Finding] = []

    def add(severity: Severity, index: int | None, message_id: str | None, text: str) -> None:
        findings.append(Finding(severity, index, message_id, text))

    error, warning = Severity.ERROR, Severity.WARNING
    h = log.header
    if h.created_at and h.updated_at and h.updated_at < h.created_at:
        add(warning, None, None, f"updated_at {h.updated_at} is before created_at {h.created_at}")

    seen_ids: dict[str, int] = {}
    calls: dict[str, int] = {}  # tool call id -> index of the call
    answered: dict[str, int] = {}  # tool call id -> index of its first result
    effective: dict[str, Any] = {}
    previous_time = None
    previous_index = -1
    for i, m in enumerate(log.messages):
        mid = m.id

        if not mid:
            add(error, i, mid, "id is empty; every message needs a unique id")
        elif mid in seen_ids:
            add(error, i, mid, f"id {mid!r} is already used by messages[{seen_ids[mid]}]")
        else:
            seen_ids[mid] = i

        if previous_time is not None and m.timestamp < previous_time:
            add(
                warning,
                i,
                mid,
                f"timestamp {m.timestamp.isoformat()} goes back in time from "
                f"messages[{previous_index}] ({previous_time.isoformat()})",
            )
        previous_time, previous_index = m.timestamp, i

        role = m.role
        allowed = CHANNELS_BY_ROLE.get(role)
        if allowed is None:
            add(error, i, mid, f"role {role!r} is not one of {', '.join(CHANNELS_BY_ROLE)}")
        elif m.channel not in allowed:
            add(
                error,
                i,
                mid,
                f"channel {m.channel!r} is invalid for {_a(role)} message "
                f"(allowed: {_channels_text(role)})",
            )

        # tool traffic
        if role == "assistant" and m.recipient:
            if m.channel == "final":
                add(error, i, mid, f"a tool call to {m.recipient!r} cannot be on the final channel")
            if m.tool_call_id is None:
                add(
                    warning,
                    i,
                    mid,
                    f"tool call to {m.recipient!r} has no tool_call_id, "
                    "so no result can be paired with it",
                )
            elif m.tool_call_id in calls:
                add(
                    error,
                    i,
                    mid,
                    f"tool_call_id {m.tool_call_id!r} is already used by the "
                    f"call at messages[{calls[m.tool_call_id]}]",
                )
            else:
                calls[m.tool_call_id] = i
        elif role == "tool":
            call_id = m.tool_call_id
            if call_id is None:
                add(warning, i, mid, "tool result has no tool_call_id and answers no known call")
            elif call_id not in calls:
                add(
                    error,
                    i,
                    mid,
                    f"tool result for call {call_id!r} follows no tool call with that id",
                )
            else:
                call = log.messages[calls[call_id]]
                if call_id in answered:
                    add(
                        warning,
                        i,
                        mid,
                        f"call {call_id!r} was already answered at messages[{answered[call_id]}]",
                    )
                else:
                    answered[call_id] = i
                if m.name is not None and m.name != call.recipient:
                    add(
                        warning,
                        i,
                        mid,
                        f"tool result is from {m.name!r} but call {call_id!r} "
                        f"addressed {call.recipient!r}",
                    )
        elif m.tool_call_id is not None:
            add(
                error,
                i,
                mid,
                f"tool_call_id {m.tool_call_id!r} on {_a(role)} message that is "
                "neither a tool call (assistant with a recipient) nor a tool result",
            )

        # hyperparameter changes
        changed, unset = m.hyperparameters, m.hyperparameters_unset
        if role not in HYPERPARAMETER_ROLES:
            if changed or unset:
                add(
                    error,
                    i,
                    mid,
                    f"{_a(role)} message carries hyperparameters; only assistant "
                    "and tool messages do",
                )
            continue
        changed = changed or {}
        both = sorted(set(changed) & set(unset))
        if both:
            add(error, i, mid, f"hyperparameters {', '.join(both)} are both set and unset")
        if "" in changed:
            add(error, i, mid, "a hyperparameter has an empty name")
        for key in unset:
            if key not in effective and key not in both:
                add(warning, i, mid, f"unsets hyperparameter {key!r}, which is not set")
            effective.pop(key, None)
        for key, value in changed.items():
            if key in effective and json_equal(effective[key], value):
                add(
                    warning,
                    i,
                    mid,
                    f"hyperparameter {key!r} is stored again with the same "
                    f"value {value!r}; only changes should be stored",
                )
            effective[key] = value
    return findings
