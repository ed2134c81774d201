"""Consistency checks on a chat log: what a loader runs and ``--check`` reports.

Errors are things a reader cannot make sense of (a duplicate id, a tool result answering no
call, a role nobody knows, a parent that is not there); warnings are oddities a reader can
live with (a clock that went back, a tool result from a legacy file that was never paired).
Only errors stop a load. Checks that follow a conversation (tool calls and their results,
hyperparameter changes, times) follow each branch of the tree from its first message.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from mlx_harmony.chat_history.findings import Finding, Severity
from mlx_harmony.chat_history.hyperparameters import json_equal
from mlx_harmony.chat_history.migrations import migrate, validate_version
from mlx_harmony.chat_history.models import (
    CHANNELS_BY_ROLE,
    HYPERPARAMETER_ROLES,
    ROOT,
    Chat,
    ChatLog,
    ChatMessage,
)

__all__ = ["Finding", "Severity", "check_chat"]

_Add = Callable[[Severity, int | None, str | None, str], None]
_ERROR, _WARNING = Severity.ERROR, Severity.WARNING


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeio' else 'a'} {word}"  # "a user", "an assistant"


def _channels_text(role: str) -> str:
    return ", ".join("no channel" if c is None else c for c in CHANNELS_BY_ROLE[role])


def check_chat(log: ChatLog | Chat | dict[str, Any]) -> list[Finding]:
    """Every consistency finding in ``log`` (a ``ChatLog``, one ``Chat``, or a parsed file of
    any version, which is migrated in memory first), chat by chat, in message order."""
    if isinstance(log, dict):
        log = validate_version(ChatLog, migrate(log))
    chats = log.ordered_chats() if isinstance(log, ChatLog) else [log]
    findings: list[Finding] = []
    for chat in chats:
        chat_id = chat.header.id if len(chats) > 1 else None
        found: list[Finding] = []

        def add(
            severity: Severity,
            index: int | None,
            message_id: str | None,
            text: str,
            found: list[Finding] = found,
            chat_id: str | None = chat_id,
        ) -> None:
            found.append(Finding(severity, index, message_id, text, chat_id))

        _check_one(chat, add)
        found.sort(key=lambda f: -1 if f.index is None else f.index)  # stable: branch order kept
        findings.extend(found)
    return findings


def _check_one(chat: Chat, add: _Add) -> None:
    h = chat.header
    if h.created_at and h.updated_at and h.updated_at < h.created_at:
        add(_WARNING, None, None, f"updated_at {h.updated_at} is before created_at {h.created_at}")

    messages = chat.messages
    seen: dict[str, int] = {}
    children: dict[int | None, list[int]] = {}
    for i, m in enumerate(messages):
        mid = m.id
        if not mid:
            add(_ERROR, i, mid, "id is empty; every message needs a unique id")
        elif mid in seen:
            add(_ERROR, i, mid, f"id {mid!r} is already used by messages[{seen[mid]}]")
        parent: int | None = None
        if m.parent_id is not None:
            parent = seen.get(m.parent_id)
            if parent is None:
                add(
                    _ERROR,
                    i,
                    mid,
                    f"parent_id {m.parent_id!r} is not a message before this one in the chat",
                )
        if mid and mid not in seen:
            seen[mid] = i
        children.setdefault(parent, []).append(i)
        _check_message(i, m, add)
    leaf = chat.active_leaf_id
    if leaf not in (None, ROOT) and leaf not in seen:
        add(_ERROR, None, None, f"active_leaf_id {leaf!r} is not a message of this chat")
    _walk_branches(messages, children, add)


def _check_message(i: int, m: ChatMessage, add: _Add) -> None:
    """What can be said of a message alone."""
    mid, role = m.id, m.role
    allowed = CHANNELS_BY_ROLE.get(role)
    if allowed is None:
        add(_ERROR, i, mid, f"role {role!r} is not one of {', '.join(CHANNELS_BY_ROLE)}")
    elif m.channel not in allowed:
        add(
            _ERROR,
            i,
            mid,
            f"channel {m.channel!r} is invalid for {_a(role)} message "
            f"(allowed: {_channels_text(role)})",
        )
    if role == "assistant" and m.recipient:
        if m.channel == "final":
            add(_ERROR, i, mid, f"a tool call to {m.recipient!r} cannot be on the final channel")
        if m.tool_call_id is None:
            add(
                _WARNING,
                i,
                mid,
                f"tool call to {m.recipient!r} has no tool_call_id, "
                "so no result can be paired with it",
            )
    elif role == "tool":
        if m.tool_call_id is None:
            add(_WARNING, i, mid, "tool result has no tool_call_id and answers no known call")
    elif m.tool_call_id is not None:
        add(
            _ERROR,
            i,
            mid,
            f"tool_call_id {m.tool_call_id!r} on {_a(role)} message that is "
            "neither a tool call (assistant with a recipient) nor a tool result",
        )
    changed, unset = m.hyperparameters, m.hyperparameters_unset
    if role not in HYPERPARAMETER_ROLES:
        if changed or unset:
            add(
                _ERROR,
                i,
                mid,
                f"{_a(role)} message carries hyperparameters; only assistant and tool messages do",
            )
        return
    changed = changed or {}
    both = sorted(set(changed) & set(unset))
    if both:
        add(_ERROR, i, mid, f"hyperparameters {', '.join(both)} are both set and unset")
    if "" in changed:
        add(_ERROR, i, mid, "a hyperparameter has an empty name")


class _Branch:
    """What the walk knows at a message: its branch's calls, answers, values and time.

    A branch that forks hands each later child a copy, so each branch is checked with
    exactly the messages above it, in one pass over the tree (copies only at forks).
    """

    __slots__ = ("answered", "calls", "effective", "time")

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}  # tool call id -> index of the call
        self.answered: dict[str, int] = {}  # tool call id -> index of its first result
        self.effective: dict[str, Any] = {}
        self.time: tuple[datetime, int] | None = None

    def copy(self) -> _Branch:
        other = _Branch()
        other.calls, other.answered = dict(self.calls), dict(self.answered)
        other.effective, other.time = dict(self.effective), self.time
        return other


def _walk_branches(
    messages: list[ChatMessage], children: dict[int | None, list[int]], add: _Add
) -> None:
    # each root starts a fresh branch; the first root is walked first
    stack: list[tuple[int, _Branch]] = [(r, _Branch()) for r in reversed(children.get(None, []))]
    while stack:
        i, state = stack.pop()
        _enter(i, messages, state, add)
        below = children.get(i)
        if not below:
            continue
        for child in reversed(below[1:]):
            stack.append((child, state.copy()))
        stack.append((below[0], state))


def _enter(i: int, messages: list[ChatMessage], state: _Branch, add: _Add) -> None:
    """The checks that need the branch above ``messages[i]``; records it in ``state``."""
    m = messages[i]
    mid, role = m.id, m.role

    if state.time is not None and m.timestamp < state.time[0]:
        previous_time, previous_index = state.time
        add(
            _WARNING,
            i,
            mid,
            f"timestamp {m.timestamp.isoformat()} goes back in time from "
            f"messages[{previous_index}] ({previous_time.isoformat()})",
        )
    state.time = (m.timestamp, i)

    call_id = m.tool_call_id
    if role == "assistant" and m.recipient and call_id is not None:
        if call_id in state.calls:
            add(
                _ERROR,
                i,
                mid,
                f"tool_call_id {call_id!r} is already used by the "
                f"call at messages[{state.calls[call_id]}]",
            )
        else:
            state.calls[call_id] = i
    elif role == "tool" and call_id is not None:
        if call_id not in state.calls:
            add(
                _ERROR,
                i,
                mid,
                f"tool result for call {call_id!r} follows no tool call with that id",
            )
        else:
            if call_id in state.answered:
                add(
                    _WARNING,
                    i,
                    mid,
                    f"call {call_id!r} was already answered at messages[{state.answered[call_id]}]",
                )
            else:
                state.answered[call_id] = i
            call = messages[state.calls[call_id]]
            if m.name is not None and m.name != call.recipient:
                add(
                    _WARNING,
                    i,
                    mid,
                    f"tool result is from {m.name!r} but call {call_id!r} "
                    f"addressed {call.recipient!r}",
                )

    if role in HYPERPARAMETER_ROLES:
        changed = m.hyperparameters or {}
        unset = m.hyperparameters_unset
        both = set(changed) & set(unset)
        effective = state.effective
        for key in unset:
            if key not in effective and key not in both:
                add(_WARNING, i, mid, f"unsets hyperparameter {key!r}, which is not set")
            effective.pop(key, None)
        for key, value in changed.items():
            if key in effective and json_equal(effective[key], value):
                add(
                    _WARNING,
                    i,
                    mid,
                    f"hyperparameter {key!r} is stored again with the same "
                    f"value {value!r}; only changes should be stored",
                )
            effective[key] = value
