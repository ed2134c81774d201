"""Responses requests <-> the controller's turns.

A request's items, after the stored conversation its ``previous_response_id`` names, map to
Harmony as vLLM's gpt-oss server maps them, through the same `ConversationBuilder` and
planning steps as a chat completion (so a response runs exactly the turn a chat completion of
the same conversation would):

- ``message`` items: ``user`` starts a turn, ``system``/``developer`` join the developer
  instructions (after ``instructions``), ``assistant`` is the final answer, or the preamble
  (commentary channel) when function calls follow it;
- ``reasoning`` items are the analysis channel, kept while their turn is in progress and dropped
  from earlier turns by the renderer; their text is ``content``, else the analysis sealed in
  ``encrypted_content`` (a blob that does not open is dropped with a warning), else ``summary``;
- ``function_call`` items are Harmony calls to ``functions.<name>`` (``<namespace>.<name>``
  with a ``namespace``); ``function_call_output``
  items are the tool's messages, named by the call their ``call_id`` answers.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from mlx_harmony.controller import with_request_template_kwargs

from ..conversation import AssistantCall, Conversation, ConversationBuilder, join_text
from ..errors import APIError
from ..models import ModelRegistry
from ..planning import (
    AnswerFormat,
    FunctionChoice,
    FunctionSpec,
    ToolChoice,
    build_config,
    plan_tools_and_format,
    plan_turn,
)
from ..reasoning_seal import ReasoningSeal
from ..tool_names import ToolNameMap
from ..worker import TurnPlan
from .protocol import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolSpec,
    InputItemModel,
    MessageItem,
    OtherContent,
    OtherItem,
    ReasoningItem,
    ResponseCreateRequest,
    ResponseSettings,
)
from .store import ResponseStore
from .tools import collect_tools

__all__ = [
    "ENCRYPTED_REASONING",
    "ResponsePlan",
    "SummaryMode",
    "new_id",
    "not_stored",
    "plan_response",
    "to_conversation",
]

ENCRYPTED_REASONING = "reasoning.encrypted_content"
"""The one ``include`` value this server acts on."""
SummaryMode = Literal["auto", "concise", "detailed"]

_PARAMS = {"max_tokens": "max_output_tokens", "reasoning_effort": "reasoning.effort"}
"""Prompt config fields, as a Responses request names them."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True)
class ResponsePlan:
    """A checked ``POST /v1/responses``: the worker's plan and what the answer says."""

    id: str
    turn_plan: TurnPlan
    names: ToolNameMap
    model: str
    items: tuple[InputItemModel, ...]
    """The conversation's input items: the stored ones before this request's."""
    settings: ResponseSettings
    created_at: int = field(default_factory=lambda: int(time.time()))
    store: bool = True
    stream: bool = False
    warnings: tuple[str, ...] = ()
    """What the server left out or could not use (the ``X-MLX-Harmony-Warning`` headers)."""
    summary: SummaryMode | None = None
    """``reasoning.summary``: reasoning items carry a summary."""
    seal: ReasoningSeal | None = None
    """With ``include: ["reasoning.encrypted_content"]``: seals reasoning items' text."""


def _text(content: str | Sequence[ContentPart], *, param: str) -> str:
    return join_text(
        content,
        param=param,
        text_of=lambda part: None if isinstance(part, OtherContent) else part.text,
        text_part="{'type': 'input_text', 'text': ...}",
    )


@dataclass
class _Reply:
    """An assistant reply being collected: its reasoning, text, then the calls after it."""

    reasoning: str | None = None
    text: str = ""
    calls: list[AssistantCall] = field(default_factory=list)


def to_conversation(
    items: Sequence[InputItemModel],
    names: ToolNameMap,
    *,
    instructions: str | None = None,
    first: int = 0,
    unseal: Callable[[str], str | None] | None = None,
    warnings: list[str] | None = None,
) -> Conversation:
    """The conversation of a request's input items (see the module docstring).

    ``first`` is the index of the request's own first item: errors name ``input[i - first]``.
    ``unseal`` opens ``encrypted_content``; what it cannot open is said in ``warnings``.
    """
    builder = ConversationBuilder(names)
    if instructions:
        builder.instructions(instructions)
    reply: _Reply | None = None

    def flush() -> None:
        nonlocal reply
        if reply is not None:
            builder.assistant(reasoning=reply.reasoning, text=reply.text, calls=reply.calls)
            reply = None

    for i, item in enumerate(items):
        where = f"input[{i - first}]"
        if isinstance(item, FunctionCallItem):
            # Calls join the reasoning and preamble before them: one Harmony reply.
            if reply is None:
                reply = _Reply()
            reply.calls.append(
                AssistantCall(item.call_id, item.name, item.arguments, item.namespace)
            )
            continue
        if isinstance(item, ReasoningItem):
            text = _reasoning_text(item, unseal, warnings, where=where)
            if text:
                flush()
                reply = _Reply(reasoning=text)
            continue
        flush()
        if isinstance(item, MessageItem):
            text = _text(item.content, param=f"{where}.content")
            if item.role == "user":
                builder.user(text)
            elif item.role in ("system", "developer"):
                builder.instructions(text)
            else:
                reply = _Reply(text=text)
        elif isinstance(item, FunctionCallOutputItem):
            call_id = item.call_id
            builder.tool_result(
                call_id,
                _text(item.output, param=f"{where}.output"),
                where=where,
                field="call_id",
                missing="no earlier function_call item has; send the function_call item (from "
                "the response's output) before its output, or continue that response with "
                "previous_response_id",
                code="unknown_call_id",
            )
        else:
            kind = item.type if isinstance(item, OtherItem) else type(item).__name__
            raise APIError(
                400,
                f"{where} is a {kind!r} item, which this server does not serve; use message, "
                "function_call, function_call_output or reasoning items",
                param=f"{where}.type",
                code="unsupported_item",
            )
    flush()
    if not builder.has_user:
        raise APIError(
            400,
            "the conversation has no user message; send input as a string, or add "
            "{'role': 'user', 'content': ...} to input",
            param="input",
            code="no_user_message",
        )
    return builder.build()


def _function_specs(body: ResponseCreateRequest) -> list[FunctionSpec]:
    """The plain function tools (namespace and hosted tools: `collect_tools`)."""
    specs: list[FunctionSpec] = []
    for i, tool in enumerate(body.tools or ()):
        if not isinstance(tool, FunctionToolSpec):
            continue
        specs.append(
            FunctionSpec(
                tool.name,
                tool.description,
                tool.parameters,
                name_param=f"tools[{i}].name",
                param=f"tools[{i}]",
                strict=bool(tool.strict),
            )
        )
    return specs


def _reasoning_text(
    item: ReasoningItem,
    unseal: Callable[[str], str | None] | None,
    warnings: list[str] | None,
    *,
    where: str,
) -> str:
    """A reasoning item's text: its content, else its sealed analysis, else its summary."""
    if item.content:
        return "".join(p.text for p in item.content)
    if item.encrypted_content:
        text = unseal(item.encrypted_content) if unseal is not None else None
        if text is not None:
            return text
        if warnings is not None:
            warnings.append(
                f"{where}.encrypted_content was not sealed with this server's reasoning key "
                "(altered, from another server, or the key changed): that reasoning was left out"
            )
    return "".join(p.text for p in item.summary)


def _summary(body: ResponseCreateRequest) -> SummaryMode | None:
    options = body.reasoning
    mode = (options.summary or options.generate_summary) if options is not None else None
    if mode is None:
        return None
    if mode == "auto" or mode == "concise" or mode == "detailed":
        return mode
    raise APIError(
        400,
        f"reasoning.summary {mode!r} is not supported; use auto, concise or detailed",
        param="reasoning.summary",
        code="unsupported_value",
    )


def _include(body: ResponseCreateRequest, warnings: list[str]) -> bool:
    """Whether reasoning is to be sealed; other ``include`` values are warned about."""
    wanted = body.include or []
    for i, value in enumerate(wanted):
        if value != ENCRYPTED_REASONING:
            warnings.append(
                f"include[{i}] {value!r} is not produced by this server; it was ignored"
            )
    return ENCRYPTED_REASONING in wanted


def _tool_choice(choice: object) -> ToolChoice:
    if choice is None:
        return None
    if choice == "auto":
        return "auto"
    if choice == "none":
        return "none"
    if choice == "required":
        return "required"
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if isinstance(name, str) and name:
            return FunctionChoice(name)
        raise APIError(
            400,
            "tool_choice {'type': 'function'} needs the function's 'name'",
            param="tool_choice.name",
            code="invalid_value",
        )
    what = repr(choice) if isinstance(choice, str) else f"of type {_type_of(choice)!r}"
    raise APIError(
        400,
        f"tool_choice {what} is not supported; use 'auto', 'none', 'required' or "
        "{'type': 'function', 'name': ...}",
        param="tool_choice",
        code="unsupported_value",
    )


def _type_of(value: object) -> object:
    return value.get("type") if isinstance(value, dict) else None


def _text_format(body: ResponseCreateRequest) -> AnswerFormat:
    """The text format's type and its JSON schema (None when there is none)."""
    fmt = body.text.format if body.text is not None else None
    kind, schema = (fmt.get("type"), fmt.get("schema")) if fmt else (None, None)
    return AnswerFormat(kind, schema, "text.format.type", "text.format.schema")


def _effort(body: ResponseCreateRequest) -> Literal["low", "medium", "high"] | None:
    effort = body.reasoning.effort if body.reasoning is not None else None
    if effort is None:
        return None
    if effort == "low" or effort == "medium" or effort == "high":
        return effort
    raise APIError(
        400,
        f"reasoning.effort {effort!r} is not a gpt-oss reasoning level; use low, medium or high",
        param="reasoning.effort",
        code="unsupported_value",
    )


def _refuse_unsupported(body: ResponseCreateRequest) -> None:
    if body.background:
        raise APIError(
            400,
            "background responses are not supported; leave background out (or false)",
            param="background",
            code="unsupported_value",
        )
    if body.conversation is not None:
        raise APIError(
            400,
            "conversation objects are not supported; chain responses with "
            "previous_response_id, or send the whole conversation as input",
            param="conversation",
            code="unsupported_value",
        )


def not_stored(response_id: str, store: ResponseStore, *, param: str | None) -> APIError:
    what = "previous_response_id" if param else "response"
    return APIError(
        404,
        f"{what} {response_id!r} is not in this server's response store: responses are kept in "
        f"memory only (the last {store.max_size}, --response-store-size), are lost on restart, "
        "and are not kept with store: false; send the whole conversation as input instead",
        param=param,
        code="previous_response_not_found" if param else "response_not_found",
    )


def _items(
    body: ResponseCreateRequest, store: ResponseStore
) -> tuple[int, tuple[InputItemModel, ...]]:
    """The stored conversation's items and the request's: (how many were stored, all)."""
    previous: tuple[InputItemModel, ...] = ()
    if body.previous_response_id:
        stored = store.get(body.previous_response_id)
        if stored is None:
            raise not_stored(body.previous_response_id, store, param="previous_response_id")
        previous = stored.items
    if isinstance(body.input, str):
        new: tuple[InputItemModel, ...] = (
            MessageItem(role="user", content=body.input, phase=None),
        )
    else:
        new = tuple(body.input or ())
    if not new:
        raise APIError(
            400,
            "input is empty; send the next user message (a string) or items such as "
            "function_call_output",
            param="input",
            code="missing_input",
        )
    return len(previous), previous + new


def plan_response(
    body: ResponseCreateRequest,
    registry: ModelRegistry,
    store: ResponseStore,
    *,
    max_tokens_cap: int | None = None,
    seal: ReasoningSeal | None = None,
) -> ResponsePlan:
    """Check `body` and plan its turn; `APIError` when it is wrong. `seal` opens sealed
    reasoning sent back, and seals the output's when the request includes it."""
    _refuse_unsupported(body)
    first, items = _items(body, store)
    entry = registry.resolve(body.model)
    specs = _function_specs(body)
    names = ToolNameMap(spec.name for spec in specs)
    tools = collect_tools(body.tools or (), names)
    warnings = list(tools.warnings)
    conversation = to_conversation(
        items,
        names,
        instructions=body.instructions,
        first=first,
        unseal=seal.open if seal is not None else None,
        warnings=warnings,
    )
    summary = _summary(body)
    encrypted = _include(body, warnings)
    choice = _tool_choice(body.tool_choice)
    planned = plan_tools_and_format(
        specs, names, choice, conversation.instructions, entry, _text_format(body), tools.namespaced
    )
    config = build_config(
        entry.prompt_config,
        sampling={"temperature": body.temperature, "top_p": body.top_p},
        reasoning_effort=_effort(body),
        instructions=planned.instructions,
        max_tokens=body.max_output_tokens,
        max_tokens_cap=max_tokens_cap,
        params=_PARAMS,
    )
    # The server's --chat-template-args (Responses has no per-request field): reasoning.effort
    # wins over their reasoning_effort, and theirs is the effort the response reports.
    config = with_request_template_kwargs(config, {}, reasoning_effort=_effort(body))
    explicit = body.max_output_tokens is not None or max_tokens_cap is not None
    turn_plan = plan_turn(
        entry,
        conversation,
        config,
        planned.function_tools,
        explicit_limit=explicit,
        conversation_param="input",
        constraint=planned.constraint,
    )
    settings = ResponseSettings(
        instructions=body.instructions,
        previous_response_id=body.previous_response_id,
        reasoning={"effort": str(config.reasoning_effort), "summary": summary},
        tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
        tool_choice=body.tool_choice if body.tool_choice is not None else "auto",
        parallel_tool_calls=body.parallel_tool_calls is not False,
        max_output_tokens=body.max_output_tokens,
        temperature=config.setting("temperature"),
        top_p=config.setting("top_p"),
        text={"format": (body.text.format if body.text else None) or {"type": "text"}},
        store=body.store,
        metadata=body.metadata or {},
        user=body.user,
    )
    return ResponsePlan(
        id=new_id("resp"),
        turn_plan=turn_plan,
        names=names,
        model=entry.id,
        items=items,
        settings=settings,
        store=body.store,
        stream=body.stream,
        warnings=tuple(warnings),
        summary=summary,
        seal=seal if encrypted else None,
    )
