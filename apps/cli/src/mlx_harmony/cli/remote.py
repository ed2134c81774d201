"""`ServerBackend`: the controller's `ChatBackend` over HTTP, so a front end that runs a local
model (the CLI's chat loop, `ChatFrontend`) runs against a server unchanged.

It sends the conversation as OpenAI messages (earlier reasoning as ``reasoning``, function
calls as ``tool_calls``, their results as ``tool`` messages) with the prompt config's sampling
values, and maps the streamed answer back onto the controller's events: `ThinkingDelta`,
`AnswerDelta`, `ToolCallEvent`, `StatsEvent` and a `TurnDone` whose `TurnResult` holds the
same messages a local turn would.

It lives in the CLI, not in the api-client (which stays free of MLX) nor in the controller
(which stays free of HTTP).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

from mlx_harmony.api_client import Client
from mlx_harmony.api_client.types import ContentDelta, ReasoningDelta
from mlx_harmony.controller import (
    AnswerDelta,
    ChatRequest,
    FinishReason,
    GenerationInfo,
    PromptConfig,
    StatsEvent,
    ThinkingDelta,
    TokenCount,
    ToolCallEvent,
    Turn,
    TurnDone,
    TurnEvent,
    TurnResult,
    as_turn,
    hyperparameters_of,
)
from mlx_harmony.harmony_format import FunctionTool, Message, Role, ToolCall

__all__ = ["ServerBackend", "request_body"]

_SAMPLING = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "logit_bias",
)
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


def _cancelled(cancel: threading.Event | Callable[[], bool] | None) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)  # an Event, or anything with is_set()
    return bool(is_set() if callable(is_set) else cast("Callable[[], bool]", cancel)())


def _text(message: object) -> str:
    return message.text if isinstance(message, Message) else str(message or "")


def _function_name(recipient: str) -> str:
    namespace, dot, name = recipient.partition(".")
    return name if dot and namespace == "functions" else recipient


def _messages(turns: Sequence[Turn], config: PromptConfig) -> list[dict[str, Any]]:
    """The OpenAI messages for `turns` (the last one in progress)."""
    out: list[dict[str, Any]] = []
    if config.developer_instructions:
        out.append({"role": "system", "content": config.developer_instructions})
    for dialogue in config.example_dialogues:
        out.extend({"role": m.role, "content": m.content} for m in dialogue)
    if config.assistant_greeting:
        out.append({"role": "assistant", "content": config.assistant_greeting})
    ids = itertools.count(1)
    for turn in turns:
        if turn.user is not None:
            out.append({"role": "user", "content": _text(turn.user)})
        reasoning: list[str] = []
        pending: dict[str, list[str]] = {}  # function name -> call ids waiting for a result
        assistant: dict[str, Any] | None = None
        for m in turn.replies:
            if not isinstance(m, Message):
                out.append({"role": "assistant", "content": _text(m)})
                continue
            if m.role is Role.TOOL:
                name = _function_name(m.name or "")
                waiting = pending.get(name) or []
                call_id = waiting.pop(0) if waiting else f"call_{next(ids)}"
                out.append({"role": "tool", "tool_call_id": call_id, "content": m.text})
                assistant = None
                continue
            if m.role is not Role.ASSISTANT:
                continue
            if m.channel == "analysis" and not m.recipient:
                reasoning.append(m.text)
                continue
            if assistant is None:
                assistant = {"role": "assistant", "content": None}
                if reasoning:
                    assistant["reasoning"] = "\n\n".join(reasoning)
                    reasoning = []
                out.append(assistant)
            if m.recipient:
                call_id = f"call_{next(ids)}"
                name = _function_name(m.recipient)
                pending.setdefault(name, []).append(call_id)
                assistant.setdefault("tool_calls", []).append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": m.text},
                    }
                )
            else:
                assistant["content"] = (assistant["content"] or "") + m.text
                if m.channel in (None, "final"):
                    assistant = None
        if reasoning:
            out.append({"role": "assistant", "content": None, "reasoning": "\n\n".join(reasoning)})
    return out


def request_body(
    turns: Sequence[Turn],
    *,
    config: PromptConfig,
    function_tools: Sequence[FunctionTool] = (),
) -> dict[str, Any]:
    """The chat-completions fields (but ``model`` and ``stream``) for a conversation."""
    cfg = config.effective()
    body: dict[str, Any] = {"messages": _messages(turns, cfg)}
    for name in _SAMPLING:
        value = cfg.setting(name)
        if value is not None:
            body[name] = {str(k): v for k, v in value.items()} if name == "logit_bias" else value
    if cfg.max_tokens is not None:
        body["max_tokens"] = cfg.max_tokens
    body["reasoning_effort"] = cfg.reasoning_effort
    if cfg.end_token_strings:
        body["stop"] = list(cfg.end_token_strings)
    if function_tools:
        body["tools"] = [tool.to_openai() for tool in function_tools]
    return body


class ServerBackend:
    """A `ChatBackend` whose model runs on an mlx-harmony server; see the module docstring.

    The server keeps no conversation state (its prompt cache reuses the shared prefix), so
    `reset` has nothing to forget. Cancelling (``ChatRequest.cancel``) closes the stream, and
    the server stops generating.
    """

    def __init__(self, client: Client, *, model: str | None = None) -> None:
        self.client = client
        self.model = model

    def stream_turn(self, request: ChatRequest) -> Iterator[TurnEvent]:
        turn = as_turn(request.turn)
        body = request_body(
            [*request.history, turn], config=request.config, function_tools=request.function_tools
        )
        messages = body.pop("messages")
        started = time.perf_counter()
        cancelled = False
        with self.client.stream_chat(messages, model=self.model, **body) as stream:
            for event in stream:
                if _cancelled(request.cancel):
                    cancelled = True
                    break
                if isinstance(event, ReasoningDelta):
                    yield ThinkingDelta(event.text)
                elif isinstance(event, ContentDelta):
                    yield AnswerDelta(event.text)
        elapsed = time.perf_counter() - started
        calls = tuple(
            ToolCall(
                f"functions.{call.name}",
                call.arguments,
                channel="commentary",
                content_type="<|constrain|>json",
            )
            for call in stream.tool_calls
        )
        for call in calls:
            yield ToolCallEvent(call, handled=False)
        usage = stream.usage
        finish_reason = (
            FinishReason.CANCELLED
            if cancelled
            else FinishReason.TOOL_CALLS
            if calls
            else _FINISH.get(stream.finish_reason or "stop", FinishReason.STOP)
        )
        if not cancelled and not calls and not stream.content.strip():
            finish_reason = FinishReason.NO_FINAL
        completion = usage.completion_tokens if usage else stream.deltas
        ttft = stream.time_to_first_token or 0.0
        decode_s = max(elapsed - ttft, 0.0)
        info = GenerationInfo(
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=completion,
            reused_prompt_tokens=usage.cached_tokens if usage else 0,
            time_to_first_token_s=ttft,
            prefill_s=ttft,
            decode_s=decode_s,
            decode_tokens_per_s=(completion - 1) / decode_s if completion > 1 and decode_s else 0.0,
            stop_reason="cancelled" if cancelled else (stream.finish_reason or "stop"),
            draft_tokens=(
                usage.accepted_prediction_tokens + usage.rejected_prediction_tokens if usage else 0
            ),
            accepted_draft_tokens=usage.accepted_prediction_tokens if usage else 0,
        )
        yield StatsEvent(info, 1, 0)
        replies: list[Message] = []
        if stream.reasoning:
            replies.append(Message.analysis(stream.reasoning))
        if calls:
            if stream.content:
                replies.append(Message.assistant(stream.content, channel="commentary"))
            replies.extend(call.to_message() for call in calls)
        elif stream.content:
            replies.append(Message.assistant(stream.content))
        start = len(turn.replies)
        yield TurnDone(
            TurnResult(
                turn=Turn(turn.user, (*turn.replies, *replies)),
                final="" if calls else stream.content,
                finish_reason=finish_reason,
                analysis=stream.reasoning,
                tool_calls=calls,
                truncated=finish_reason is FinishReason.LENGTH,
                generations=(info,),
                hyperparameters=hyperparameters_of(request.config),
                prompt_tokens=info.prompt_tokens,
                total_s=elapsed,
                user_is_new=start == 0,
                replies_start=start,
            )
        )

    def count_tokens(
        self,
        turns: Sequence[Turn],
        *,
        config: PromptConfig,
        function_tools: Sequence[FunctionTool] = (),
    ) -> TokenCount:
        if not turns:
            return TokenCount(0, None, 0)
        body = request_body(turns, config=config, function_tools=function_tools)
        messages = body.pop("messages")
        counted = self.client.count_tokens(messages, model=self.model, **body)
        return TokenCount(
            int(counted["prompt_tokens"]),
            counted.get("max_context_tokens"),
            int(counted.get("margin") or 0),
        )

    def reset(self) -> None:
        """Nothing to forget: the server holds no per-conversation state."""
