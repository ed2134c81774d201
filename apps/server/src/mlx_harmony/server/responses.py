"""The Responses API: ``POST /v1/responses`` (whole or streamed), ``GET`` and ``DELETE
/v1/responses/{id}``.

A request's items, after the stored conversation its ``previous_response_id`` names, are
translated to chat messages and planned by `plan_chat`, so a response runs exactly the turn a
chat completion of the same conversation would: same Harmony rendering, tools, sampling,
retry policy and worker queue. Input items map to Harmony as vLLM's gpt-oss server maps them:

- ``message`` items: ``user`` starts a turn, ``system``/``developer`` join the developer
  instructions (after ``instructions``), ``assistant`` is the final answer, or the preamble
  (commentary channel) when function calls follow it;
- ``reasoning`` items are the analysis channel, kept while their turn is in progress and dropped
  from earlier turns by the renderer;
- ``function_call`` items are Harmony calls to ``functions.<name>``; ``function_call_output``
  items are the tool's messages, named by the call their ``call_id`` answers.

The turn's events come back as output items: the analysis channel as a ``reasoning`` item,
the final channel as a ``message`` (``phase: "final_answer"``), a preamble as a ``message``
(``phase: "commentary"``), each call as a ``function_call`` item. Streamed, each token is a
``response.reasoning_text.delta`` or ``response.output_text.delta`` event as it is generated.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import TypeAdapter, ValidationError

from mlx_harmony.controller import AnswerDelta, CommentaryDelta, FinishReason, ThinkingDelta

from .errors import APIError, json_dumps
from .models import ModelRegistry
from .protocol import (
    AssistantMessage,
    ChatCompletionRequest,
    DeveloperMessage,
    ErrorResponse,
    FunctionCall,
    FunctionDefinition,
    NamedToolChoice,
    SystemMessage,
    Tool,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from .response_store import ResponseStore, StoredResponse
from .responses_protocol import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    MessageItem,
    OtherContent,
    OtherItem,
    OtherTool,
    ReasoningItem,
    ResponseCreateRequest,
    ResponseDeleted,
    ResponseObject,
)
from .routes import answer, require_api_key
from .service import (
    ClientWatch,
    Outcome,
    Receive,
    RequestPlan,
    chat_usage,
    first_events,
    plan_chat,
    run_to_end,
    submit_turn,
)
from .worker import Finished, ModelWorker, TurnJob

__all__ = [
    "ResponsePlan",
    "ResponsesService",
    "plan_response",
    "responses_router",
    "to_chat_messages",
]

_REASONING = "reasoning"
_FINAL = "final_answer"
_COMMENTARY = "commentary"
_ITEM = TypeAdapter(InputItem)
_CUT = (FinishReason.LENGTH, FinishReason.LOOP)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# -- planning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponsePlan:
    """A checked ``POST /v1/responses``: the chat plan that runs it and what the answer says."""

    id: str
    request: RequestPlan
    items: tuple[Any, ...]
    """The conversation's input items: the stored ones before this request's."""
    echo: dict[str, Any]
    """The request's settings, as the response object repeats them."""
    created_at: int
    store: bool = True
    stream: bool = False


def _text(content: str | Sequence[Any], *, param: str) -> str:
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for i, part in enumerate(content):
        if isinstance(part, OtherContent):
            raise APIError(
                400,
                f"{param}[{i}] is a {part.type!r} part; this server reads text only: send the "
                "content as a string or as {'type': 'input_text', 'text': ...} parts",
                param=f"{param}[{i}].type",
                code="unsupported_content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def to_chat_messages(
    items: Sequence[Any], *, instructions: str | None = None, first: int = 0
) -> list[Any]:
    """The chat messages of a conversation's input items (see the module docstring).

    ``first`` is the index of the request's own first item: errors name ``input[i - first]``.
    """
    messages: list[Any] = []
    if instructions:
        messages.append(DeveloperMessage(role="developer", content=instructions))
    calls: set[str] = set()
    has_user = False
    for i, item in enumerate(items):
        where = f"input[{i - first}]"
        if isinstance(item, MessageItem):
            text = _text(item.content, param=f"{where}.content")
            if item.role == "user":
                has_user = True
                messages.append(UserMessage(role="user", content=text))
            elif item.role == "system":
                messages.append(SystemMessage(role="system", content=text))
            elif item.role == "developer":
                messages.append(DeveloperMessage(role="developer", content=text))
            else:
                messages.append(AssistantMessage(role="assistant", content=text))
        elif isinstance(item, ReasoningItem):
            parts = item.content if item.content else item.summary
            text = "".join(p.text for p in parts)
            if text:
                messages.append(AssistantMessage(role="assistant", reasoning=text))
        elif isinstance(item, FunctionCallItem):
            calls.add(item.call_id)
            call = ToolCall(
                id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
            )
            last = messages[-1] if messages else None
            if isinstance(last, AssistantMessage):
                # Calls join the reasoning and preamble before them: one Harmony reply.
                last.tool_calls = [*(last.tool_calls or ()), call]
            else:
                messages.append(AssistantMessage(role="assistant", tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in calls:
                raise APIError(
                    400,
                    f"{where} answers call_id {item.call_id!r}, which no earlier function_call "
                    "item has; send the function_call item (from the response's output) before "
                    "its output, or continue that response with previous_response_id",
                    param=f"{where}.call_id",
                    code="unknown_call_id",
                )
            text = _text(item.output, param=f"{where}.output")
            messages.append(ToolMessage(role="tool", tool_call_id=item.call_id, content=text))
        else:
            kind = item.type if isinstance(item, OtherItem) else type(item).__name__
            raise APIError(
                400,
                f"{where} is a {kind!r} item, which this server does not serve; use message, "
                "function_call, function_call_output or reasoning items",
                param=f"{where}.type",
                code="unsupported_item",
            )
    if not has_user:
        raise APIError(
            400,
            "the conversation has no user message; send input as a string, or add "
            "{'role': 'user', 'content': ...} to input",
            param="input",
            code="no_user_message",
        )
    return messages


def _chat_tools(body: ResponseCreateRequest) -> list[Tool] | None:
    if not body.tools:
        return None
    tools: list[Tool] = []
    for i, tool in enumerate(body.tools):
        if isinstance(tool, OtherTool):
            raise APIError(
                400,
                f"tools[{i}] is a {tool.type!r} tool; this server runs function tools only "
                "({'type': 'function', 'name': ..., 'parameters': {...}}): declare what you can "
                "run yourself as a function",
                param=f"tools[{i}].type",
                code="unsupported_tool",
            )
        tools.append(
            Tool(
                function=FunctionDefinition(
                    name=tool.name,
                    description=tool.description,
                    parameters=tool.parameters,
                    strict=tool.strict,
                )
            )
        )
    return tools


def _chat_tool_choice(choice: str | dict[str, Any] | None) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if isinstance(name, str) and name:
            return NamedToolChoice(function={"name": name})  # type: ignore[arg-type]
        raise APIError(
            400,
            "tool_choice {'type': 'function'} needs the function's 'name'",
            param="tool_choice.name",
            code="invalid_value",
        )
    what = repr(choice) if isinstance(choice, str) else f"of type {choice.get('type')!r}"
    raise APIError(
        400,
        f"tool_choice {what} is not supported; use 'auto', 'none', 'required' or "
        "{'type': 'function', 'name': ...}",
        param="tool_choice",
        code="unsupported_value",
    )


def _response_format(body: ResponseCreateRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text is not None else None
    if not fmt or fmt.get("type") != "json_schema":
        return fmt
    return {"type": "json_schema", "json_schema": fmt}  # the chat shape: name and schema inside


def _effort(body: ResponseCreateRequest) -> str | None:
    effort = body.reasoning.effort if body.reasoning is not None else None
    if effort is not None and effort not in ("low", "medium", "high"):
        raise APIError(
            400,
            f"reasoning.effort {effort!r} is not a gpt-oss reasoning level; use low, medium or "
            "high",
            param="reasoning.effort",
            code="unsupported_value",
        )
    return effort


def _responses_param(param: str | None) -> str | None:
    """A chat request's parameter name, as the Responses request calls it."""
    if param is None:
        return None
    if param.startswith("messages"):
        return "input"
    if param.startswith("tools[") and ".function" in param:
        return param.replace(".function", "", 1)
    return {
        "response_format.type": "text.format.type",
        "max_tokens": "max_output_tokens",
        "reasoning_effort": "reasoning.effort",
    }.get(param, param)


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


def _not_stored(response_id: str, store: ResponseStore, *, param: str | None) -> APIError:
    what = "previous_response_id" if param else "response"
    return APIError(
        404,
        f"{what} {response_id!r} is not in this server's response store: responses are kept in "
        f"memory only (the last {store.max_size}, --response-store-size), are lost on restart, "
        "and are not kept with store: false; send the whole conversation as input instead",
        param=param,
        code="previous_response_not_found" if param else "response_not_found",
    )


def plan_response(
    body: ResponseCreateRequest,
    registry: ModelRegistry,
    store: ResponseStore,
    *,
    max_tokens_cap: int | None = None,
) -> ResponsePlan:
    """Check `body` and build the chat plan that runs it; `APIError` when it is wrong."""
    _refuse_unsupported(body)
    previous: tuple[Any, ...] = ()
    if body.previous_response_id:
        stored = store.get(body.previous_response_id)
        if stored is None:
            raise _not_stored(body.previous_response_id, store, param="previous_response_id")
        previous = stored.items
    if isinstance(body.input, str):
        new: tuple[Any, ...] = (MessageItem(role="user", content=body.input),)
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
    items = previous + new
    entry = registry.resolve(body.model)
    try:
        chat = ChatCompletionRequest(
            messages=to_chat_messages(items, instructions=body.instructions, first=len(previous)),
            model=body.model,
            temperature=body.temperature,
            top_p=body.top_p,
            max_completion_tokens=body.max_output_tokens,
            reasoning_effort=_effort(body),  # type: ignore[arg-type]
            tools=_chat_tools(body),
            tool_choice=_chat_tool_choice(body.tool_choice),
            parallel_tool_calls=body.parallel_tool_calls,
            response_format=_response_format(body),
        )
        rp = plan_chat(chat, entry, max_tokens_cap=max_tokens_cap)
    except APIError as error:
        error.param = _responses_param(error.param)
        raise
    except ValidationError as error:  # a shape the Responses models let through
        first = error.errors()[0]
        message = str(first.get("msg", "invalid value"))
        raise APIError(400, message, param="input", code="invalid_value") from None
    config = rp.plan.config
    echo = {
        "instructions": body.instructions,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": str(config.reasoning_effort), "summary": None},
        "tools": [t.model_dump(exclude_none=True) for t in body.tools or ()],
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "max_output_tokens": body.max_output_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "text": {"format": (body.text.format if body.text else None) or {"type": "text"}},
        "store": body.store,
        "metadata": body.metadata or {},
        "truncation": "disabled",
        "background": False,
        "user": body.user,
    }
    return ResponsePlan(
        id=_new_id("resp"),
        request=rp,
        items=items,
        echo=echo,
        created_at=int(time.time()),
        store=body.store,
        stream=body.stream,
    )


# -- output -------------------------------------------------------------------------------------


class _Output:
    """The response's output items, built from the turn's events as they arrive; with ``sse``
    also the stream's events (a delta's event is one string concatenation, its head built
    once per item)."""

    def __init__(self, *, sse: bool) -> None:
        self.sse = sse
        self.items: list[dict[str, Any]] = []
        self.sequence = 0
        self._chunks: list[str] = []
        self._kind: str | None = None
        self._texts: list[str] = []
        self._head = ""

    @property
    def pending(self) -> bool:
        return bool(self._chunks)

    def take(self) -> bytes:
        data = "".join(self._chunks).encode()
        self._chunks.clear()
        return data

    def event(self, kind: str, fields: dict[str, Any]) -> None:
        if self.sse:
            body = {"type": kind, "sequence_number": self.sequence, **fields}
            self.sequence += 1
            self._chunks.append(f"event: {kind}\ndata: {json_dumps(body)}\n\n")

    def feed(self, batch: Sequence[Any]) -> Finished | None:
        """Take a batch of the worker's events; the `Finished` when the turn ended."""
        finished = None
        for item in batch:
            kind = type(item)
            if kind is AnswerDelta:
                self._text(_FINAL, item.text)
            elif kind is ThinkingDelta:
                self._text(_REASONING, item.text)
            elif kind is CommentaryDelta:
                self._text(_COMMENTARY, item.text)
            elif kind is Finished:
                finished = item
        return finished

    def _text(self, kind: str, text: str) -> None:
        if kind != self._kind:
            self._close("completed")
            self._open(kind)
        self._texts.append(text)
        if self.sse:
            self._chunks.append(
                f'{self._head}{json_dumps(text)},"sequence_number":{self.sequence}}}\n\n'
            )
            self.sequence += 1

    def _open(self, kind: str) -> None:
        index = len(self.items)
        item: dict[str, Any]
        if kind == _REASONING:
            item = {
                "id": _new_id("rs"),
                "type": "reasoning",
                "status": "in_progress",
                "summary": [],
                "content": [],
            }
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
            delta, extra = "response.reasoning_text.delta", ""
        else:
            item = {
                "id": _new_id("msg"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "phase": kind,
                "content": [],
            }
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            delta, extra = "response.output_text.delta", ',"logprobs":[]'
        self.items.append(item)
        self._kind = kind
        self._texts = []
        if self.sse:
            self.event("response.output_item.added", {"output_index": index, "item": item})
            self.event(
                "response.content_part.added",
                {"item_id": item["id"], "output_index": index, "content_index": 0, "part": part},
            )
            self._head = (
                f'event: {delta}\ndata: {{"type":"{delta}","item_id":"{item["id"]}",'
                f'"output_index":{index},"content_index":0{extra},"delta":'
            )

    def _close(self, status: str) -> None:
        kind = self._kind
        if kind is None:
            return
        self._kind = None
        index = len(self.items) - 1
        text = "".join(self._texts)
        if kind == _REASONING:
            part: dict[str, Any] = {"type": "reasoning_text", "text": text}
            done, fields = "response.reasoning_text.done", {"text": text}
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            done, fields = "response.output_text.done", {"text": text, "logprobs": []}
        item = {**self.items[index], "status": status, "content": [part]}
        self.items[index] = item
        if self.sse:
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            self.event(done, {**ids, **fields})
            self.event("response.content_part.done", {**ids, "part": part})
            self.event("response.output_item.done", {"output_index": index, "item": item})

    def finish(self, calls: Sequence[tuple[str, str]], *, status: str) -> None:
        """Close the open item with `status`, then add the function calls (name, arguments)."""
        self._close(status)
        for name, arguments in calls:
            index = len(self.items)
            item = {
                "id": _new_id("fc"),
                "type": "function_call",
                "status": "completed",
                "call_id": _new_id("call"),
                "name": name,
                "arguments": arguments,
            }
            self.items.append(item)
            if self.sse:
                ids = {"item_id": item["id"], "output_index": index}
                added = {**item, "status": "in_progress", "arguments": ""}
                self.event("response.output_item.added", {"output_index": index, "item": added})
                self.event("response.function_call_arguments.delta", {**ids, "delta": arguments})
                self.event(
                    "response.function_call_arguments.done",
                    {**ids, "name": name, "arguments": arguments},
                )
                self.event("response.output_item.done", {"output_index": index, "item": item})


def _calls(result: Any, plan: ResponsePlan) -> list[tuple[str, str]]:
    names = plan.request.names
    return [
        (
            names.to_openai(call.name) if call.namespace == "functions" else call.recipient,
            call.arguments,  # the raw text, valid JSON or not: the client decides
        )
        for call in result.tool_calls
    ]


def _response_usage(finished: Finished) -> dict[str, Any]:
    usage = chat_usage(finished)
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": usage["completion_tokens_details"],
        "total_tokens": usage["total_tokens"],
    }


def _response_object(
    plan: ResponsePlan,
    *,
    status: str,
    output: Sequence[dict[str, Any]] = (),
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    incomplete: bool = False,
) -> dict[str, Any]:
    done = status in ("completed", "incomplete")
    return {
        "id": plan.id,
        "object": "response",
        "created_at": plan.created_at,
        "completed_at": int(time.time()) if done else None,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "model": plan.request.model,
        "output": list(output),
        "usage": usage,
        **plan.echo,
    }


# -- the service --------------------------------------------------------------------------------


class ResponsesService:
    """Runs responses on the worker and keeps them in the store; see the module docstring."""

    def __init__(
        self,
        registry: ModelRegistry,
        worker: ModelWorker,
        store: ResponseStore,
        *,
        max_tokens_cap: int | None = None,
    ) -> None:
        self.registry = registry
        self.worker = worker
        self.store = store
        self.max_tokens_cap = max_tokens_cap

    def plan(self, body: ResponseCreateRequest) -> ResponsePlan:
        return plan_response(body, self.registry, self.store, max_tokens_cap=self.max_tokens_cap)

    def get(self, response_id: str) -> dict[str, Any]:
        stored = self.store.get(response_id)
        if stored is None:
            raise _not_stored(response_id, self.store, param=None)
        return stored.response

    def delete(self, response_id: str) -> dict[str, Any]:
        if not self.store.delete(response_id):
            raise _not_stored(response_id, self.store, param=None)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    def _submit(self, plan: ResponsePlan, receive: Receive | None) -> tuple[TurnJob, ClientWatch]:
        return submit_turn(self.worker, plan.request.plan, receive)

    def _complete(
        self, plan: ResponsePlan, output: _Output, finished: Finished, outcome: Outcome
    ) -> dict[str, Any]:
        """The finished response: output closed, usage counted, stored when asked."""
        result = finished.result
        calls = _calls(result, plan)
        incomplete = not calls and result.finish_reason in _CUT
        status = "incomplete" if incomplete else "completed"
        output.finish(calls, status=status)
        usage = _response_usage(finished)
        response = _response_object(
            plan, status=status, output=output.items, usage=usage, incomplete=incomplete
        )
        if plan.store:
            outputs = tuple(_ITEM.validate_python(item) for item in output.items)
            self.store.put(plan.id, StoredResponse(response, plan.items + outputs))
        outcome.prompt_tokens = usage["input_tokens"]
        outcome.completion_tokens = usage["output_tokens"]
        outcome.finish_reason = "tool_calls" if calls else ("length" if incomplete else "stop")
        return response

    async def complete(
        self,
        plan: ResponsePlan,
        *,
        receive: Receive | None = None,
        outcome: Outcome | None = None,
    ) -> dict[str, Any] | None:
        """The response object for `plan`; None when the client went away first."""
        outcome = outcome if outcome is not None else Outcome()
        job, watch = self._submit(plan, receive)
        output = _Output(sse=False)
        try:
            finished = await run_to_end(job, watch, output.feed)
        except APIError as error:
            error.param = _responses_param(error.param)  # the worker's errors name chat fields
            raise
        if finished is None:
            outcome.cancelled = True
            return None
        return self._complete(plan, output, finished, outcome)

    async def start_stream(
        self,
        plan: ResponsePlan,
        *,
        receive: Receive | None = None,
        outcome: Outcome | None = None,
    ) -> AsyncIterator[bytes] | None:
        """The SSE body for `plan`, or None when the client left before the first event.

        Waits for the worker's first event before answering, so that an error found before
        generating (a prompt longer than the context) is still an HTTP error status.
        """
        outcome = outcome if outcome is not None else Outcome()
        job, watch = self._submit(plan, receive)
        try:
            first = await first_events(job, watch)
        except APIError as error:
            error.param = _responses_param(error.param)  # the worker's errors name chat fields
            raise
        if not first:
            outcome.cancelled = True
            return None
        return self._stream(plan, job, watch, first, outcome)

    async def _stream(
        self,
        plan: ResponsePlan,
        job: TurnJob,
        watch: ClientWatch,
        first: list[Any],
        outcome: Outcome,
    ) -> AsyncIterator[bytes]:
        output = _Output(sse=True)
        finished: Finished | None = None
        batch = first
        try:
            opening = _response_object(plan, status="in_progress")
            output.event("response.created", {"response": opening})
            output.event("response.in_progress", {"response": opening})
            while True:
                finished = output.feed(batch)
                if finished is not None:
                    response = self._complete(plan, output, finished, outcome)
                    output.event(f"response.{response['status']}", {"response": response})
                    yield output.take()
                    return
                if output.pending:
                    yield output.take()
                try:
                    batch = await job.channel.get_batch()
                except Exception as error:
                    if not isinstance(error, APIError):
                        error = APIError(500, f"the turn failed: {type(error).__name__}: {error}")
                    failed = _response_object(
                        plan,
                        status="failed",
                        output=output.items,
                        error={"code": error.code or "server_error", "message": error.message},
                    )
                    output.event("response.failed", {"response": failed})
                    yield output.take()
                    return
                if not batch and (watch.gone or job.channel.closed):
                    outcome.cancelled = watch.gone
                    return
        finally:
            watch.stop()
            if finished is None:
                job.cancel.set()
                outcome.cancelled = True


# -- routes -------------------------------------------------------------------------------------

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Malformed JSON, a value out of range, an unsupported item, tool or content type, "
        "or a prompt longer than the context",
        401: "Missing or wrong API key",
        404: "Unknown model, or a response (previous_response_id) not in the store",
        413: "Request body too large",
        422: "The body does not match the schema (wrong types, missing fields)",
        503: "The model cannot be loaded, or the queue is full",
    }.items()
}

responses_router = APIRouter(
    prefix="/v1", dependencies=[Depends(require_api_key)], responses=_ERRORS, tags=["responses"]
)


@responses_router.post(
    "/responses",
    response_model=ResponseObject,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def create_response(body: ResponseCreateRequest, request: Request) -> Response:
    """An OpenAI response; ``stream: true`` sends the Responses events as the tokens come."""
    service: ResponsesService = request.app.state.responses
    outcome = Outcome()
    request.state.outcome = outcome
    return await answer(service, service.plan(body), request, outcome)


@responses_router.get("/responses/{response_id}", response_model=ResponseObject)
async def get_response(response_id: str, request: Request) -> Response:
    """A stored response (``store`` was not false, and it is among the last ones kept)."""
    return JSONResponse(request.app.state.responses.get(response_id))


@responses_router.delete("/responses/{response_id}", response_model=ResponseDeleted)
async def delete_response(response_id: str, request: Request) -> Response:
    """Forget a stored response; later ``previous_response_id`` uses of it get a 404."""
    return JSONResponse(request.app.state.responses.delete(response_id))
