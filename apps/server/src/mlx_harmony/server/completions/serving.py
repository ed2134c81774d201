"""Raw completions on the model worker: `plan_completion` checks a request, `CompletionJob`
generates from the prompt's tokens (no chat template, no controller: the model continues the
text), `serve_completion` answers with the whole text or streams it."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from fastapi.responses import Response

from mlx_harmony.controller import GenerationInfo, PromptConfig

from ..channel import EventChannel
from ..errors import APIError
from ..extras import check_unknown_fields
from ..models import ModelEntry, ModelRegistry
from ..planning import build_config, request_sampling
from ..serving import KEEPALIVE, EventStreamResponse, Outcome, Receive
from ..worker import ChannelJob, LoadedState, LogprobEntry, ModelWorker, _TokenTap
from .protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionUsage,
)

__all__ = ["CompletionJob", "CompletionPlan", "plan_completion", "serve_completion"]

_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class CompletionPlan:
    """A checked completion request."""

    entry: ModelEntry
    prompt: str | tuple[int, ...]
    config: PromptConfig
    stream: bool
    echo: bool
    logprobs: int | None
    include_usage: bool


def plan_completion(
    body: CompletionRequest, entry: ModelEntry, *, max_tokens_cap: int | None
) -> CompletionPlan:
    """Check `body` against `entry`; `APIError` naming the field when it is wrong."""
    check_unknown_fields(body)
    for name, value in (("n", body.n), ("best_of", body.best_of)):
        if value not in (None, 1):
            raise APIError(
                400,
                f"{name} must be 1 on /v1/completions, got {value}; send separate requests, or "
                "use /v1/chat/completions with n",
                param=name,
                code="unsupported_value",
            )
    if body.suffix:
        raise APIError(
            400,
            "suffix (insertion) is not supported; leave it out",
            param="suffix",
            code="unsupported_value",
        )
    if body.echo and body.logprobs is not None:
        raise APIError(
            400,
            "echo with logprobs needs the prompt tokens' logprobs, which this server does not "
            "compute; leave out one of them",
            param="logprobs",
            code="unsupported_value",
        )
    prompt: str | tuple[int, ...]
    if isinstance(body.prompt, str):
        prompt = body.prompt
    elif body.prompt and all(isinstance(p, int) for p in body.prompt):
        prompt = tuple(int(p) for p in body.prompt)
    elif len(body.prompt) == 1:
        prompt = str(body.prompt[0])
    else:
        raise APIError(
            400,
            f"prompt must be one text (or token ids), got a list of {len(body.prompt)}; send "
            "one request per prompt",
            param="prompt",
            code="unsupported_value",
        )
    if not prompt:
        raise APIError(400, "prompt is empty", param="prompt", code="invalid_value")
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    config = build_config(
        entry.prompt_config,
        sampling=request_sampling(body),
        reasoning_effort=None,
        instructions=None,
        max_tokens=body.max_tokens,
        max_tokens_cap=max_tokens_cap,
        stops=stops,
    )
    return CompletionPlan(
        entry=entry,
        prompt=prompt,
        config=config,
        stream=body.stream,
        echo=body.echo,
        logprobs=body.logprobs,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )


# -- on the worker ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str
    logprobs: tuple[LogprobEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class Done:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    info: GenerationInfo | None


CompletionEvent = TextDelta | Done


class CompletionJob(ChannelJob[CompletionPlan, CompletionEvent]):
    """Generate from a raw prompt; a row of the batch engine, like a chat turn."""

    batched = True

    def run(self, state: LoadedState, worker: ModelWorker) -> None:
        try:
            self._run(state)
        except APIError as error:
            self.channel.close(error)
        except BaseException as error:
            worker.count("failed")
            self.channel.close(error)
        else:
            worker.count("turns")
            self.channel.close()

    def _run(self, state: LoadedState) -> None:
        plan, generator = self.plan, state.generator
        if isinstance(plan.prompt, str):
            ids = list(generator.encode(plan.prompt))
        else:
            ids = list(plan.prompt)
            vocab = state.vocab_size
            bad = next((t for t in ids if t < 0 or (vocab is not None and t >= vocab)), None)
            if bad is not None:
                raise APIError(
                    400,
                    f"prompt holds token id {bad}, outside the model's vocabulary"
                    + (f" (0 to {vocab - 1})" if vocab is not None else ""),
                    param="prompt",
                    code="invalid_value",
                )
        config = plan.config
        window = state.context_length
        max_tokens = config.max_tokens or 16
        if window is not None and len(ids) + 1 > window:
            raise APIError(
                400,
                f"the prompt has {len(ids)} tokens; the model's context holds {window}",
                param="prompt",
                code="context_length_exceeded",
            )
        if window is not None:
            max_tokens = min(max_tokens, window - len(ids))
        top = plan.logprobs
        tap = _TokenTap(generator, top=top, harmony=False)
        put = self.channel.put
        if plan.echo:  # the prompt's text first, as the model's tokenizer reads it back
            prompt_text = plan.prompt if isinstance(plan.prompt, str) else generator.decode(ids)
            put(TextDelta(prompt_text))
        completion = 0
        reason = "length"
        info: GenerationInfo | None = None
        for event in tap.stream(
            prompt_tokens=ids,
            sampling=config.sampling_params(),
            max_tokens=max_tokens,
            stop_strings=tuple(config.end_token_strings),
            cancel=self.cancel,
            loop_detection="off",
        ):
            if event.token is not None:
                completion += 1
            entries = tap.take_content() if top is not None else ()
            if event.text or entries:
                put(TextDelta(event.text, entries))
            if event.stop_reason is not None:
                reason = str(getattr(event.stop_reason, "value", event.stop_reason))
            if event.stats is not None:
                info = GenerationInfo.from_stats(event.stats)
        put(Done(len(ids), completion, "length" if reason == "length" else "stop", info))


# -- the answer ---------------------------------------------------------------------------------


class _Answer:
    """Collects a completion's deltas into the legacy answer, or encodes them as chunks."""

    def __init__(self, plan: CompletionPlan) -> None:
        self.plan = plan
        self.id = f"cmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.text: list[str] = []
        self.offset = 0
        self.logprobs = CompletionLogprobs(
            tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[]
        )

    def _chunk(self, choice: CompletionChoice | None, usage: CompletionUsage | None) -> bytes:
        body = Completion(
            id=self.id,
            created=self.created,
            model=self.plan.entry.id,
            choices=[choice] if choice is not None else [],
            usage=usage,
        )
        return b"data: " + body.model_dump_json(exclude_none=False).encode() + b"\n\n"

    def _logprobs(self, entries: Sequence[LogprobEntry]) -> CompletionLogprobs:
        out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
        for entry in entries:
            out.tokens.append(entry["token"])
            out.token_logprobs.append(entry["logprob"])
            out.top_logprobs.append({t["token"]: t["logprob"] for t in entry["top_logprobs"]})
            out.text_offset.append(self.offset)
            self.offset += len(entry["token"])
        return out

    def delta(self, item: TextDelta) -> bytes:
        """The chunk of one delta (when streaming); else kept for the answer."""
        logprobs = self._logprobs(item.logprobs) if self.plan.logprobs is not None else None
        if not item.logprobs:
            self.offset += len(item.text)
        if not self.plan.stream:
            self.text.append(item.text)
            if logprobs is not None:
                for name in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    getattr(self.logprobs, name).extend(getattr(logprobs, name))
            return b""
        return self._chunk(CompletionChoice(text=item.text, logprobs=logprobs), None)

    def usage(self, done: Done) -> CompletionUsage:
        return CompletionUsage(
            prompt_tokens=done.prompt_tokens,
            completion_tokens=done.completion_tokens,
            total_tokens=done.prompt_tokens + done.completion_tokens,
        )

    def closing(self, done: Done) -> bytes:
        parts = [self._chunk(CompletionChoice(text="", finish_reason=done.finish_reason), None)]
        if self.plan.include_usage:
            parts.append(self._chunk(None, self.usage(done)))
        parts.append(_DONE)
        return b"".join(parts)

    def whole(self, done: Done) -> bytes:
        choice = CompletionChoice(
            text="".join(self.text),
            logprobs=self.logprobs if self.plan.logprobs is not None else None,
            finish_reason=done.finish_reason,
        )
        answer = Completion(
            id=self.id,
            created=self.created,
            model=self.plan.entry.id,
            choices=[choice],
            usage=self.usage(done),
        )
        return answer.model_dump_json().encode()


# -- the route's work ---------------------------------------------------------------------------


async def _watch(receive: Receive, job: CompletionJob) -> None:
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            job.cancel.set()
            job.channel.interrupt()
            return


async def _next(
    channel: EventChannel[CompletionEvent], timeout: float | None
) -> list[CompletionEvent] | None:
    if timeout is None:
        return await channel.get_batch()
    try:
        return await asyncio.wait_for(channel.get_batch(), timeout)
    except TimeoutError:
        return None


def _count(outcome: Outcome, done: Done) -> None:
    outcome.prompt_tokens = done.prompt_tokens
    outcome.completion_tokens = done.completion_tokens
    outcome.finish_reason = done.finish_reason
    if done.info is not None:
        outcome.generations = (done.info,)


async def serve_completion(
    registry: ModelRegistry,
    worker: ModelWorker,
    body: CompletionRequest,
    request: Request,
    *,
    max_tokens_cap: int | None,
    keepalive_s: float | None,
) -> Response:
    """Plan, queue and answer one completion; 499 when the client left before it began."""
    outcome = Outcome()
    request.state.outcome = outcome
    plan = plan_completion(body, registry.resolve(body.model), max_tokens_cap=max_tokens_cap)
    channel: EventChannel[CompletionEvent] = EventChannel(asyncio.get_running_loop())
    job = CompletionJob(plan, channel)
    worker.submit(job)
    watcher = asyncio.get_running_loop().create_task(_watch(request.receive, job))
    answer = _Answer(plan)
    try:
        # Wait for the first events (so a too-long prompt is still an HTTP status), or at
        # most `keepalive_s` when streaming.
        first = await _next(channel, keepalive_s if plan.stream else None)
    except BaseException:
        watcher.cancel()
        job.cancel.set()
        raise
    if first == []:
        watcher.cancel()
        outcome.cancelled = True
        return Response(status_code=499)
    if plan.stream:
        return EventStreamResponse(
            _stream(plan, answer, job, first, watcher, outcome, keepalive_s),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        batch: list[CompletionEvent] = first or []
        while True:
            for item in batch:
                if isinstance(item, Done):
                    _count(outcome, item)
                    return Response(answer.whole(item), media_type="application/json")
                answer.delta(item)
            batch = await channel.get_batch()
            if not batch and channel.closed:
                outcome.cancelled = True
                return Response(status_code=499)
    finally:
        watcher.cancel()
        job.cancel.set()


async def _stream(
    plan: CompletionPlan,
    answer: _Answer,
    job: CompletionJob,
    first: list[CompletionEvent] | None,
    watcher: asyncio.Task[None],
    outcome: Outcome,
    keepalive_s: float | None,
) -> AsyncIterator[bytes]:
    done = False
    batch = first
    try:
        while True:
            if batch is None:
                yield KEEPALIVE
            else:
                parts: list[bytes] = []
                for item in batch:
                    if isinstance(item, Done):
                        _count(outcome, item)
                        parts.append(answer.closing(item))
                        done = True
                        break
                    parts.append(answer.delta(item))
                if parts:
                    yield b"".join(parts)
                if done:
                    return
                if not batch and job.channel.closed:
                    outcome.cancelled = True
                    return
            try:
                batch = await _next(job.channel, keepalive_s)
            except Exception as error:
                if not isinstance(error, APIError):
                    error = APIError(500, f"the completion failed: {type(error).__name__}")
                yield b"data: " + error.body_json().encode() + b"\n\n" + _DONE
                return
    finally:
        watcher.cancel()
        if not done:
            job.cancel.set()
            outcome.cancelled = True
