"""Chat completions: an OpenAI request in, a turn on the model worker, OpenAI JSON or SSE out.

`plan_chat` checks a request and turns it into a `TurnPlan` (the conversation as turns, the
prompt config with the request's sampling fields, the function tools with safe names);
`ChatService` queues it on the `ModelWorker` and renders the events as a ``chat.completion``
or as ``chat.completion.chunk`` server-sent events, one per token as it is generated.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mlx_harmony.controller import (
    AnswerDelta,
    CommentaryDelta,
    FinishReason,
    PromptConfig,
    RetryPolicy,
    ThinkingDelta,
)
from mlx_harmony.harmony_format import (
    DeveloperConfig,
    FunctionTool,
    Message,
    Role,
    render_message,
)

from .channel import EventChannel
from .conversation import to_conversation
from .errors import APIError, json_dumps
from .models import ModelEntry, ModelRegistry
from .protocol import ChatCompletionRequest, NamedToolChoice
from .tool_names import ToolNameMap
from .worker import CountJob, Finished, ModelWorker, TokenLogprobs, TurnJob, TurnPlan

__all__ = [
    "SERVER_RETRY_POLICY",
    "STRICT_RETRY_POLICY",
    "ChatService",
    "ClientWatch",
    "Outcome",
    "RequestPlan",
    "chat_usage",
    "first_events",
    "plan_chat",
    "run_to_end",
    "submit_turn",
]

SERVER_RETRY_POLICY = RetryPolicy(
    max_retries=1, length_retries=0, no_final_retries=1, loop_retries=0
)
"""What the server recovers from: a model that only thought gets one more attempt that starts
the final answer (its reasoning kept). No length retries (``max_tokens`` is the client's hard
limit) and no loop retries (streamed text cannot be taken back)."""
STRICT_RETRY_POLICY = RetryPolicy(max_retries=0)
"""With an explicit ``max_tokens`` (or ``--max-tokens-cap``): no retries at all, so a reply
never generates more than that."""

_SAMPLING_FIELDS = (
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
_FINISH = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.LOOP: "length",
    FinishReason.NO_FINAL: "stop",
    FinishReason.TOOL_LIMIT: "stop",
    FinishReason.CANCELLED: "stop",
}


@dataclass(frozen=True)
class RequestPlan:
    """A checked request: the worker's plan and how to render the answer."""

    plan: TurnPlan
    names: ToolNameMap
    model: str
    stream: bool = False
    include_usage: bool = False
    include_reasoning: bool = True
    logprobs: bool = False


def _config(
    body: ChatCompletionRequest,
    base: PromptConfig,
    *,
    instructions: str | None,
    max_tokens_cap: int | None,
) -> PromptConfig:
    changes: dict[str, Any] = {"performance_mode": False}
    for name in _SAMPLING_FIELDS:
        value = getattr(body, name)
        if value is not None:
            changes[name] = value
    if body.reasoning_effort is not None:
        changes["reasoning_effort"] = body.reasoning_effort
    if instructions is not None:
        changes["developer_instructions"] = instructions
    max_tokens = body.max_completion_tokens or body.max_tokens
    effective = base.effective()
    if max_tokens is None:
        max_tokens = effective.max_tokens
    if max_tokens_cap is not None:
        max_tokens = min(max_tokens or max_tokens_cap, max_tokens_cap)
    changes["max_tokens"] = max_tokens
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    stops = [s for s in stops if s]
    if stops:
        changes["end_token_strings"] = [*effective.end_token_strings, *stops]
    try:
        # effective(): a performance-mode config's perf_* values are the base the request
        # overrides.
        return effective.updated(**changes)
    except ValidationError as error:
        first = error.errors()[0]
        loc = first.get("loc", ())
        param = str(loc[0]) if loc else None
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if param == "logit_bias":
            message = f"logit_bias keys must be token ids (integers as strings): {message}"
        raise APIError(400, message, param=param, code="invalid_value") from None


def _function_tools(
    body: ChatCompletionRequest, names: ToolNameMap
) -> tuple[tuple[FunctionTool, ...], str | None]:
    """The request's tools with Harmony names, and an instruction for ``tool_choice``."""
    tools = body.tools or []
    seen: set[str] = set()
    out: list[FunctionTool] = []
    for i, tool in enumerate(tools):
        name = tool.function.name
        if name in seen:
            raise APIError(
                400,
                f"tools[{i}]: a tool named {name!r} is already declared; tool names must be unique",
                param=f"tools[{i}].function.name",
                code="duplicate_tool",
            )
        seen.add(name)
        try:
            out.append(
                FunctionTool(
                    names.to_harmony(name),
                    tool.function.description or "",
                    tool.function.parameters,
                )
            )
        except (TypeError, ValueError) as error:
            raise APIError(
                400, f"tools[{i}]: {error}", param=f"tools[{i}]", code="invalid_tool"
            ) from None
    if out:
        try:  # a schema openai-harmony cannot render is the client's mistake, not a 500
            render_message(Message(Role.DEVELOPER, DeveloperConfig(None, tuple(out))))
        except Exception as error:
            raise APIError(
                400,
                f"tools: the parameters cannot be rendered as a Harmony declaration: {error}",
                param="tools",
                code="invalid_tool",
            ) from None
    choice = body.tool_choice
    instruction: str | None = None
    if choice == "none":
        return (), None
    if choice == "required":
        if not out:
            raise APIError(
                400, "tool_choice is 'required' but no tools are given", param="tool_choice"
            )
        instruction = "You must call one of the functions before answering."
    elif isinstance(choice, NamedToolChoice):
        if choice.function.name not in seen:
            raise APIError(
                400,
                f"tool_choice names {choice.function.name!r}, which is not in tools",
                param="tool_choice",
                code="unknown_tool",
            )
        instruction = (
            f"You must call the function functions.{names.to_harmony(choice.function.name)} now."
        )
    return tuple(out), instruction


def _format_instruction(body: ChatCompletionRequest) -> str | None:
    fmt = body.response_format
    if not fmt:
        return None
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "Answer with a single JSON object and nothing else."
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        text = json.dumps(schema) if schema is not None else "{}"
        return (
            "Answer with a single JSON value that follows this JSON schema, and nothing "
            f"else: {text}"
        )
    raise APIError(
        400,
        f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
        param="response_format.type",
        code="unsupported_value",
    )


def plan_chat(
    body: ChatCompletionRequest, entry: ModelEntry, *, max_tokens_cap: int | None = None
) -> RequestPlan:
    """Check `body` against `entry` and build the worker's plan; `APIError` when it is wrong."""
    if body.n not in (None, 1):
        raise APIError(400, f"n must be 1 (one choice per request), got {body.n}", param="n")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(
            400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value"
        )
    names = ToolNameMap(t.function.name for t in body.tools or ())
    conversation = to_conversation(body.messages, names)
    function_tools, tool_instruction = _function_tools(body, names)
    extra = [t for t in (tool_instruction, _format_instruction(body)) if t]
    instructions = conversation.instructions
    if extra:
        base = (
            instructions if instructions is not None else entry.prompt_config.developer_instructions
        )
        instructions = "\n\n".join([*([base] if base else []), *extra])
    config = _config(
        body, entry.prompt_config, instructions=instructions, max_tokens_cap=max_tokens_cap
    )
    explicit = (
        body.max_tokens is not None
        or body.max_completion_tokens is not None
        or max_tokens_cap is not None
    )
    plan = TurnPlan(
        entry=entry,
        turn=conversation.turn,
        history=conversation.history,
        config=config,
        function_tools=function_tools,
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
        policy=STRICT_RETRY_POLICY if explicit else SERVER_RETRY_POLICY,
    )
    return RequestPlan(
        plan=plan,
        names=names,
        model=entry.id,
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        include_reasoning=body.include_reasoning,
        logprobs=bool(body.logprobs),
    )


# -- answers ------------------------------------------------------------------------------------


def chat_usage(finished: Finished) -> dict[str, Any]:
    generations = finished.result.generations
    prompt = sum(g.prompt_tokens for g in generations)
    completion = sum(g.completion_tokens for g in generations)
    cached = sum(g.reused_prompt_tokens for g in generations)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {
            "reasoning_tokens": min(finished.reasoning_tokens, completion)
        },
    }


def _tool_calls(result: Any, names: ToolNameMap) -> list[dict[str, Any]]:
    calls = []
    for call in result.tool_calls:
        name = names.to_openai(call.name) if call.namespace == "functions" else call.recipient
        calls.append(
            {
                "id": f"call_{secrets.token_hex(12)}",
                "type": "function",
                # The raw text, valid JSON or not: the client decides what to do with it.
                "function": {"name": name, "arguments": call.arguments},
            }
        )
    return calls


def _content(result: Any) -> str:
    """The answer; without one, the preamble the model wrote before its tool calls."""
    if result.final:
        return result.final
    return "".join(
        m.text
        for m in result.new_replies
        if getattr(m, "channel", None) == "commentary" and getattr(m, "recipient", None) is None
    )


Receive = Callable[[], Awaitable[dict[str, Any]]]
"""The ASGI ``receive`` of the request: it says ``http.disconnect`` when the client leaves."""


@dataclass
class ClientWatch:
    """Watches for the client going away while its job waits or runs."""

    job: TurnJob | CountJob
    channel: EventChannel
    task: asyncio.Task[None] | None = None
    gone: bool = False

    def start(self, receive: Receive | None) -> None:
        if receive is not None:
            self.task = asyncio.get_running_loop().create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                self.gone = True
                self.job.cancel.set()
                self.channel.interrupt()
                return

    def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


def submit_turn(
    worker: ModelWorker, plan: TurnPlan, receive: Receive | None
) -> tuple[TurnJob, ClientWatch]:
    """Queue `plan` on the worker and watch for its client leaving."""
    channel = EventChannel(asyncio.get_running_loop())
    job = TurnJob(plan, channel)
    worker.submit(job)
    watch = ClientWatch(job, channel)
    watch.start(receive)
    return job, watch


async def run_to_end(
    job: TurnJob, watch: ClientWatch, feed: Callable[[list[Any]], Finished | None]
) -> Finished | None:
    """Hand the job's events to `feed` until it returns the turn's `Finished`; None when the
    client left first (the job is cancelled then)."""
    finished = None
    try:
        while finished is None:
            batch = await job.channel.get_batch()
            if not batch:
                if watch.gone or job.channel.closed:
                    break
                continue
            finished = feed(batch)
    finally:
        watch.stop()
        if finished is None:
            job.cancel.set()
    return finished


async def first_events(job: TurnJob, watch: ClientWatch) -> list[Any]:
    """The job's first events, before a streamed answer starts (so an error found before
    generating is still an HTTP status); [] when the client left first. Either way out, the
    job is cancelled."""
    try:
        first: list[Any] = []
        while not first:
            first = await job.channel.get_batch()
            if not first and (watch.gone or job.channel.closed):
                break
    except BaseException:
        watch.stop()
        job.cancel.set()
        raise
    if not first:
        watch.stop()
        job.cancel.set()
    return first


@dataclass
class Outcome:
    """What the request log reports for a request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cancelled: bool = False


class ChatService:
    """Runs chat completions on the worker; see the module docstring."""

    def __init__(
        self,
        registry: ModelRegistry,
        worker: ModelWorker,
        *,
        max_tokens_cap: int | None = None,
    ) -> None:
        self.registry = registry
        self.worker = worker
        self.max_tokens_cap = max_tokens_cap

    def plan(self, body: ChatCompletionRequest) -> RequestPlan:
        entry = self.registry.resolve(body.model)
        return plan_chat(body, entry, max_tokens_cap=self.max_tokens_cap)

    def _submit(self, rp: RequestPlan, receive: Receive | None) -> tuple[TurnJob, ClientWatch]:
        return submit_turn(self.worker, rp.plan, receive)

    async def count_tokens(self, body: ChatCompletionRequest) -> dict[str, Any]:
        rp = self.plan(body)
        channel = EventChannel(asyncio.get_running_loop())
        self.worker.submit(CountJob(rp.plan, channel))
        items: list[Any] = []
        while not channel.closed:
            items.extend(await channel.get_batch())
        prompt, window, margin = items[0]
        return {"prompt_tokens": prompt, "max_context_tokens": window, "margin": margin}

    async def complete(
        self,
        rp: RequestPlan,
        *,
        receive: Receive | None = None,
        outcome: Outcome | None = None,
    ) -> dict[str, Any] | None:
        """The ``chat.completion`` for `rp`; None when the client went away first."""
        outcome = outcome if outcome is not None else Outcome()
        job, watch = self._submit(rp, receive)
        reasoning: list[str] = []
        logprobs: list[dict[str, Any]] = []

        def feed(batch: list[Any]) -> Finished | None:
            finished = None
            for item in batch:
                kind = type(item)
                if kind is ThinkingDelta:
                    reasoning.append(item.text)
                elif kind is TokenLogprobs:
                    logprobs.extend(item.entries)
                elif kind is Finished:
                    finished = item
            return finished

        finished = await run_to_end(job, watch, feed)
        if finished is None:
            outcome.cancelled = True
            return None
        result = finished.result
        usage = chat_usage(finished)
        outcome.prompt_tokens = usage["prompt_tokens"]
        outcome.completion_tokens = usage["completion_tokens"]
        tool_calls = _tool_calls(result, rp.names)
        finish = "tool_calls" if tool_calls else _FINISH.get(result.finish_reason, "stop")
        outcome.finish_reason = finish
        content = _content(result)
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if rp.include_reasoning:
            thinking = "".join(reasoning) or result.analysis
            message["reasoning"] = thinking or None
            message["reasoning_content"] = thinking or None
        if tool_calls:
            message["tool_calls"] = tool_calls
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": rp.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": {"content": logprobs} if rp.logprobs else None,
                    "finish_reason": finish,
                }
            ],
            "usage": usage,
        }

    async def start_stream(
        self,
        rp: RequestPlan,
        *,
        receive: Receive | None = None,
        outcome: Outcome | None = None,
    ) -> AsyncIterator[bytes] | None:
        """The SSE body for `rp`, or None when the client left before the first token.

        Waits for the first event before answering, so that an error the worker finds before
        generating (a prompt longer than the context) is still an HTTP error status.
        """
        outcome = outcome if outcome is not None else Outcome()
        job, watch = self._submit(rp, receive)
        first = await first_events(job, watch)
        if not first:
            outcome.cancelled = True
            return None
        return self._stream(rp, job, watch, first, outcome)

    async def _stream(
        self,
        rp: RequestPlan,
        job: TurnJob,
        watch: ClientWatch,
        first: list[Any],
        outcome: Outcome,
    ) -> AsyncIterator[bytes]:
        cid = f"chatcmpl-{secrets.token_hex(12)}"
        head = (
            f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{int(time.time())},'
            f'"model":{json_dumps(rp.model)},"choices":[{{"index":0,"delta":'
        )
        plain = ',"logprobs":null,"finish_reason":null}]}\n\n'
        usage_head = head.split('"choices":')[0]
        include_reasoning = rp.include_reasoning
        want_logprobs = rp.logprobs
        pending_logprobs: tuple[dict[str, Any], ...] = ()
        finished: Finished | None = None
        batch = first
        try:
            yield (head + '{"role":"assistant","content":""}' + plain).encode()
            while True:
                parts: list[str] = []
                for item in batch:
                    kind = type(item)
                    if kind is AnswerDelta or kind is CommentaryDelta:
                        delta = '{"content":' + json_dumps(item.text) + "}"
                        if want_logprobs:
                            lp = json_dumps({"content": list(pending_logprobs)})
                            pending_logprobs = ()
                            parts.append(
                                f'{head}{delta},"logprobs":{lp},"finish_reason":null}}]}}\n\n'
                            )
                        else:
                            parts.append(head + delta + plain)
                    elif kind is ThinkingDelta:
                        if include_reasoning:
                            text = json_dumps(item.text)
                            parts.append(
                                f'{head}{{"reasoning":{text},"reasoning_content":{text}}}{plain}'
                            )
                    elif kind is TokenLogprobs:
                        pending_logprobs = item.entries
                    elif kind is Finished:
                        finished = item
                if finished is not None:
                    parts.append(self._closing(rp, finished, head, usage_head, outcome))
                    yield "".join(parts).encode()
                    return
                if parts:
                    yield "".join(parts).encode()
                try:
                    batch = await job.channel.get_batch()
                except APIError as error:
                    yield f"data: {json_dumps(error.body())}\n\ndata: [DONE]\n\n".encode()
                    return
                except Exception as error:
                    body = APIError(500, f"the turn failed: {type(error).__name__}: {error}")
                    yield f"data: {json_dumps(body.body())}\n\ndata: [DONE]\n\n".encode()
                    return
                if not batch and (watch.gone or job.channel.closed):
                    outcome.cancelled = watch.gone
                    return
        finally:
            watch.stop()
            if finished is None:
                job.cancel.set()
                outcome.cancelled = True

    def _closing(
        self, rp: RequestPlan, finished: Finished, head: str, usage_head: str, outcome: Outcome
    ) -> str:
        result = finished.result
        parts: list[str] = []
        tool_calls = _tool_calls(result, rp.names)
        for i, call in enumerate(tool_calls):
            delta = {"tool_calls": [{"index": i, **call}]}
            parts.append(f'{head}{json_dumps(delta)},"logprobs":null,"finish_reason":null}}]}}\n\n')
        finish = "tool_calls" if tool_calls else _FINISH.get(result.finish_reason, "stop")
        parts.append(f'{head}{{}},"logprobs":null,"finish_reason":"{finish}"}}]}}\n\n')
        usage = chat_usage(finished)
        outcome.prompt_tokens = usage["prompt_tokens"]
        outcome.completion_tokens = usage["completion_tokens"]
        outcome.finish_reason = finish
        if rp.include_usage:
            parts.append(f'{usage_head}"choices":[],"usage":{json_dumps(usage)}}}\n\n')
        parts.append("data: [DONE]\n\n")
        return "".join(parts)
