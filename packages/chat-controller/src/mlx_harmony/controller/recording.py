"""Between turns and chat logs (chat-history v3): record a turn, rebuild turns from a log.

`record_turn(log, result)` appends what a turn added: the user's message (as written, never a
retry's instruction), each tool call with the reasoning that led to it and its result (paired
by ``tool_call_id``), and the answer with its reasoning. The turn's hyperparameters go on every
assistant and tool message (chat-history stores only changes); the last assistant message
also gets the turn's ``timing`` (with ``reused_prompt_tokens`` and ``generations``) and, when
there were any, ``retries``, ``tool_rounds``, ``finish_reason`` (unless ``stop``),
``truncated`` and ``dropped_turns`` (chat-history keeps unknown fields).

`turns_from_log(log)` rebuilds the session's turns from the active branch (for ``\\load``);
`drop_last_turn(log)` follows ``\\undo`` and ``\\retry`` (the turn left behind stays in the
file, on its own branch).
"""

from __future__ import annotations

from typing import Any

from mlx_harmony.chat_history import ChatLog, ChatMessage
from mlx_harmony.harmony_format import Message, Role

from .turns import FinishReason, Turn, TurnResult

__all__ = ["drop_last_turn", "record_turn", "turns_from_log"]


def record_turn(log: ChatLog, result: TurnResult) -> list[ChatMessage]:
    """Append the turn to `log`; returns the messages added."""
    hyper = dict(result.hyperparameters)
    specs: list[tuple[str, dict[str, Any]]] = []
    pending: list[str] = []
    for m in result.new_replies:
        if not isinstance(m, Message):
            continue
        if m.role is Role.ASSISTANT and m.channel == "analysis" and not m.recipient:
            pending.append(m.text)
            continue
        analysis = "\n\n".join(pending) or None
        if m.role is Role.ASSISTANT and m.recipient:
            extra = {"content_type": m.content_type} if m.content_type else {}
            specs.append(
                (
                    "call",
                    {
                        "recipient": m.recipient,
                        "arguments": m.text,
                        "channel": m.channel or "commentary",
                        "analysis": analysis,
                        **extra,
                    },
                )
            )
        elif m.role is Role.TOOL:
            specs.append(("result", {"name": m.name, "content": m.text, "channel": m.channel}))
            continue  # reasoning stays pending for the next assistant message
        elif m.role is Role.ASSISTANT:
            specs.append(
                (
                    "assistant",
                    {"content": m.text, "channel": m.channel or "final", "analysis": analysis},
                )
            )
        else:
            continue
        pending = []
    if pending:
        specs.append(("assistant", {"content": "\n\n".join(pending), "channel": "analysis"}))
    if not any(kind in ("assistant", "call") for kind, _ in specs):
        specs.append(("assistant", {"content": "", "channel": "final"}))

    last_assistant = max(i for i, (kind, _) in enumerate(specs) if kind in ("assistant", "call"))
    turn_fields: dict[str, Any] = {"timing": result.timing()}
    if result.retries:
        turn_fields["retries"] = [r.to_dict() for r in result.retries]
    if result.tool_rounds:
        turn_fields["tool_rounds"] = result.tool_rounds
    if result.finish_reason is not FinishReason.STOP:
        turn_fields["finish_reason"] = result.finish_reason.value
    if result.truncated:
        turn_fields["truncated"] = True
    if result.dropped_turns:
        turn_fields["dropped_turns"] = result.dropped_turns

    added: list[ChatMessage] = []
    if result.user_is_new and isinstance(result.turn.user, Message):
        added.append(log.append_user(result.turn.user.text))
    open_calls: list[ChatMessage] = []
    for i, (kind, spec) in enumerate(specs):
        extra = turn_fields if i == last_assistant else {}
        if kind == "call":
            message = log.append_tool_call(
                spec.pop("recipient"), spec.pop("arguments"), hyperparameters=hyper, **spec, **extra
            )
            open_calls.append(message)
        elif kind == "result":
            call = next((c for c in open_calls if c.recipient == spec["name"]), None)
            if call is None and open_calls:
                call = open_calls[0]
            if call is None:  # the call came from the caller (a continued turn)
                message = log.append_message(
                    "tool",
                    spec["content"],
                    name=spec["name"],
                    channel=spec["channel"],
                    hyperparameters=hyper,
                )
            else:
                open_calls.remove(call)
                assert call.tool_call_id is not None
                message = log.append_tool_result(
                    call.tool_call_id,
                    spec["content"],
                    name=spec["name"],
                    channel=spec["channel"],
                    hyperparameters=hyper,
                )
        else:
            message = log.append_assistant(
                spec.pop("content"),
                hyperparameters=hyper,
                **{k: v for k, v in spec.items() if v is not None},
                **extra,
            )
        added.append(message)
    return added


def turns_from_log(log: ChatLog) -> tuple[Turn, ...]:
    """The conversation of `log` as turns of harmony-format messages, ready to continue.

    Assistant messages before the first user message (a greeting) and system messages are
    left out: the prompt config provides those.
    """
    turns: list[Turn] = []
    user: Message | None = None
    replies: list[Message] = []
    for m in log.branch():
        if m.role == "user":
            if user is not None:
                turns.append(Turn(user, tuple(replies)))
            user, replies = Message.user(m.content), []
        elif user is None:
            continue
        elif m.role == "assistant":
            if m.analysis:
                replies.append(Message.analysis(m.analysis))
            if m.recipient:
                content_type = getattr(m, "content_type", None)
                replies.append(
                    Message(
                        Role.ASSISTANT,
                        m.content,
                        channel=m.channel or "commentary",
                        recipient=m.recipient,
                        content_type=content_type if isinstance(content_type, str) else None,
                    )
                )
            elif m.channel == "analysis":
                replies.append(Message.analysis(m.content))
            elif m.content:
                replies.append(Message.assistant(m.content, channel=m.channel or "final"))
        elif m.role == "tool":
            name = m.name if m.name and not any(c.isspace() for c in m.name) else "tool"
            replies.append(Message.tool_result(name, m.content, channel=m.channel or "commentary"))
    if user is not None:
        turns.append(Turn(user, tuple(replies)))
    return tuple(turns)


def drop_last_turn(log: ChatLog) -> int:
    """Go back to before the last user message of the active branch; returns how many
    messages left it (chat-log v3 keeps them in the file, on a branch of their own)."""
    try:
        return len(log.active.undo())
    except ValueError:  # no user message on the branch: nothing to drop
        return 0
