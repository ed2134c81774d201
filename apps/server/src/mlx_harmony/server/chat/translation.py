"""Chat completions <-> the controller's turns.

`plan_chat` checks a request and turns it into a `ChatPlan` (the conversation as turns, the
prompt config with the request's sampling fields, the function tools with safe names); the
functions after it read a finished turn back as the chat answer's parts.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from mlx_harmony.controller import (
    FinishReason,
    PromptConfig,
    TemplateKwargsError,
    TurnResult,
    with_request_template_kwargs,
)

from ..conversation import AssistantCall, Conversation, ConversationBuilder, join_text
from ..errors import APIError
from ..models import ModelEntry
from ..planning import (
    AnswerFormat,
    FunctionChoice,
    FunctionSpec,
    TokenCounts,
    ToolChoice,
    build_config,
    openai_calls,
    plan_tools_and_format,
    plan_turn,
    request_sampling,
)
from ..tool_names import ToolNameMap
from ..worker import TurnPlan
from .protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatMessage,
    CompletionTokensDetails,
    Content,
    DeveloperMessage,
    FunctionCall,
    FunctionMessage,
    NamedToolChoice,
    OtherPart,
    PromptTokensDetails,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Usage,
    UserMessage,
)

__all__ = [
    "ChatPlan",
    "FinishName",
    "answer_content",
    "chat_usage",
    "choice_plans",
    "choice_seed",
    "content_text",
    "finish_reason",
    "plan_chat",
    "to_conversation",
    "tool_calls",
]

FinishName = Literal["stop", "length", "tool_calls"]
_FINISH: dict[FinishReason, FinishName] = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.LOOP: "length",
    FinishReason.NO_FINAL: "stop",
    FinishReason.TOOL_LIMIT: "stop",
    FinishReason.CANCELLED: "stop",
}


@dataclass(frozen=True)
class ChatPlan:
    """A checked chat request: the worker's plan and how to render the answer."""

    turn_plan: TurnPlan
    names: ToolNameMap
    model: str
    stream: bool = False
    include_usage: bool = False
    include_reasoning: bool = True
    return_analysis: bool = False
    """mlx-harmony 0.4's field: the reasoning also as ``analysis``."""
    logprobs: bool = False
    n: int = 1
    seed: int | None = None
    """The request's seed; with ``n`` > 1 and none given, a random one (see `choice_plans`)."""


def choice_seed(seed: int, index: int) -> int:
    """Choice `index`'s seed: the request's own for choice 0 (so ``n: 1`` and the first of
    ``n`` choices agree), a hash of (seed, index) for the others: different choices, the
    same ones again for the same seed."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def choice_plans(plan: ChatPlan) -> list[TurnPlan]:
    """The worker's plan for each of ``n`` choices: the same turn with its `choice_seed`."""
    if plan.n == 1:
        return [plan.turn_plan]
    base = plan.seed if plan.seed is not None else secrets.randbits(63)
    return [
        replace(plan.turn_plan, config=plan.turn_plan.config.updated(seed=choice_seed(base, i)))
        for i in range(plan.n)
    ]


def content_text(content: Content | None, *, param: str) -> str:
    """The text of a message's content; other parts (images, audio) are refused."""
    if content is None:
        return ""
    return join_text(
        content,
        param=param,
        text_of=lambda part: None if isinstance(part, OtherPart) else part.text,
        text_part="{'type': 'text', 'text': ...}",
    )


def to_conversation(messages: Sequence[ChatMessage], names: ToolNameMap) -> Conversation:
    """Split `messages` into instructions, earlier turns and the turn to answer."""
    builder = ConversationBuilder(names)
    for i, m in enumerate(messages):
        param = f"messages[{i}].content"
        if isinstance(m, SystemMessage | DeveloperMessage):
            builder.instructions(content_text(m.content, param=param))
        elif isinstance(m, UserMessage):
            builder.user(content_text(m.content, param=param))
        elif isinstance(m, AssistantMessage):
            calls = [
                AssistantCall(c.id, c.function.name, c.function.arguments)
                for c in m.tool_calls or ()
            ]
            reasoning = m.reasoning if m.reasoning is not None else m.reasoning_content
            builder.assistant(
                reasoning=reasoning, text=content_text(m.content, param=param), calls=calls
            )
        elif isinstance(m, ToolMessage):
            builder.tool_result(
                m.tool_call_id,
                content_text(m.content, param=param),
                where=f"messages[{i}]",
                field="tool_call_id",
                missing="no earlier assistant message's tool_calls has; send the assistant "
                "message with that call before its result",
                code="unknown_tool_call_id",
            )
        elif isinstance(m, FunctionMessage):
            builder.function_result(m.name, m.content or "")
    if not builder.has_user:
        raise APIError(
            400,
            "the conversation has no user message; add {'role': 'user', 'content': ...}",
            param="messages",
            code="no_user_message",
        )
    return builder.build()


def _tool_choice(body: ChatCompletionRequest) -> ToolChoice:
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        return FunctionChoice(choice.function.name)
    return choice


def _response_format(body: ChatCompletionRequest) -> AnswerFormat:
    """The format's type and its JSON schema (None when there is none)."""
    fmt = body.response_format
    if not fmt:
        return AnswerFormat()
    spec = fmt.get("json_schema")
    return AnswerFormat(fmt.get("type"), spec.get("schema") if isinstance(spec, dict) else None)


def _with_template_kwargs(config: PromptConfig, body: ChatCompletionRequest) -> PromptConfig:
    """`config` with the request's ``chat_template_kwargs`` over the server's
    (``--chat-template-args``; see `with_request_template_kwargs`). gpt-oss turns them into
    Harmony settings when it renders; the worker refuses the keys it cannot (it knows the
    model type)."""
    try:
        return with_request_template_kwargs(
            config, body.chat_template_kwargs or {}, reasoning_effort=body.reasoning_effort
        )
    except TemplateKwargsError as error:
        raise APIError(
            400, str(error), param=f"chat_template_kwargs.{error.key}", code="invalid_value"
        ) from error


def plan_chat(
    body: ChatCompletionRequest,
    entry: ModelEntry,
    *,
    max_tokens_cap: int | None = None,
    max_n: int = 1,
) -> ChatPlan:
    """Check `body` against `entry` and build the worker's plan; `APIError` when it is wrong."""
    n = body.n or 1
    if n > max_n:
        raise APIError(
            400,
            f"n must be at most {max_n} on this server, got {n} (the server's --max-n sets the "
            "limit)",
            param="n",
            code="invalid_value",
        )
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(
            400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value"
        )
    names = ToolNameMap(t.function.name for t in body.tools or ())
    conversation = to_conversation(body.messages, names)
    specs = [
        FunctionSpec(
            t.function.name,
            t.function.description,
            t.function.parameters,
            name_param=f"tools[{i}].function.name",
            param=f"tools[{i}]",
            strict=bool(t.function.strict),
        )
        for i, t in enumerate(body.tools or ())
    ]
    planned = plan_tools_and_format(
        specs, names, _tool_choice(body), conversation.instructions, entry, _response_format(body)
    )
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    config = build_config(
        entry.prompt_config,
        sampling=request_sampling(body),
        reasoning_effort=body.reasoning_effort,
        instructions=planned.instructions,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        max_tokens_cap=max_tokens_cap,
        stops=stops,
    )
    config = _with_template_kwargs(config, body)
    explicit = (
        body.max_tokens is not None
        or body.max_completion_tokens is not None
        or max_tokens_cap is not None
    )
    plan = plan_turn(
        entry,
        conversation,
        config,
        planned.function_tools,
        explicit_limit=explicit,
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        constraint=planned.constraint,
    )
    return ChatPlan(
        turn_plan=plan,
        names=names,
        model=entry.id,
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        include_reasoning=body.include_reasoning,
        logprobs=bool(body.logprobs),
        n=n,
        seed=body.seed,
    )


# -- a finished turn, as the chat answer's parts -------------------------------------------------


def chat_usage(counts: TokenCounts) -> Usage:
    return Usage(
        prompt_tokens=counts.prompt,
        completion_tokens=counts.completion,
        total_tokens=counts.prompt + counts.completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=counts.cached),
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=counts.reasoning, **counts.prediction_details()
        ),
    )


def tool_calls(result: TurnResult, names: ToolNameMap) -> list[ToolCall]:
    return [
        ToolCall(
            id=f"call_{secrets.token_hex(12)}",
            type="function",
            function=FunctionCall(name=name, arguments=arguments),
        )
        for name, arguments in openai_calls(result, names)
    ]


def finish_reason(result: TurnResult, *, has_calls: bool) -> FinishName:
    return "tool_calls" if has_calls else _FINISH.get(result.finish_reason, "stop")


def answer_content(result: TurnResult) -> str:
    """The answer; without one, the preamble the model wrote before its tool calls."""
    if result.final:
        return result.final
    return "".join(
        m.text
        for m in result.new_replies
        if getattr(m, "channel", None) == "commentary" and getattr(m, "recipient", None) is None
    )
