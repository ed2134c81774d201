"""`ChatService`: chat completions served on the model worker (the chat side of `Serving`),
and `answer_choices`, which runs a request's ``n`` choices as ``n`` turns submitted together
(rows of the batch engine when ``--max-concurrency`` allows) and merges them into one answer
or one stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import KW_ONLY, dataclass, field, replace

from fastapi import Request
from fastapi.responses import Response

from ..channel import EventChannel
from ..errors import APIError
from ..extras import OriginalFieldsService, PromptConfigs, check_unknown_fields
from ..models import ModelRegistry
from ..serving import KEEPALIVE, EventStreamResponse, Outcome, Receive
from ..worker import CountJob, Finished, ModelWorker, PromptCount, TurnJob, WorkerEvent
from .events import ChatOutput, merge_completions, new_id, sum_usage
from .protocol import ChatCompletionRequest, TokenCountResponse
from .translation import ChatPlan, choice_plans, plan_chat

__all__ = ["ChatService", "answer_choices"]


@dataclass
class ChatService:
    """Checks chat requests against the registry's models and renders their turns."""

    registry: ModelRegistry
    worker: ModelWorker
    _: KW_ONLY
    max_tokens_cap: int | None = None
    max_n: int = 1
    original_fields: OriginalFieldsService | None = None
    """mlx-harmony 0.4's request fields (`extras`); default: the configs the server was
    started with, no folder of prompt configs."""

    def __post_init__(self) -> None:
        if self.original_fields is None:
            configs = PromptConfigs.of_registry(self.registry)
            self.original_fields = OriginalFieldsService(self.registry, configs)

    def plan(self, body: ChatCompletionRequest, *, count_seed: bool = True) -> ChatPlan:
        """`body` checked and planned; `count_seed`: count it in its seed's chain (a request
        with ``reseed_each_turn: false``), which a token count does not."""
        check_unknown_fields(body)
        fields = self.original_fields
        assert fields is not None
        applied = fields.entry(body, body.model)
        plan = plan_chat(body, applied.entry, max_tokens_cap=self.max_tokens_cap, max_n=self.max_n)
        turn_plan = fields.turn_plan(plan.turn_plan, applied, advance=count_seed)
        seed = turn_plan.config.sampling.seed if plan.seed is not None else None
        return replace(plan, turn_plan=turn_plan, seed=seed, return_analysis=body.return_analysis)

    def output(self, plan: ChatPlan, *, stream: bool) -> ChatOutput:
        return ChatOutput(plan, stream=stream)

    async def count_tokens(self, body: ChatCompletionRequest) -> TokenCountResponse:
        """The prompt size of `body`'s conversation, counted on the worker."""
        plan = self.plan(body, count_seed=False)
        channel: EventChannel[PromptCount] = EventChannel(asyncio.get_running_loop())
        self.worker.submit(CountJob(plan.turn_plan, channel))
        items: list[PromptCount] = []
        while not channel.closed:
            items.extend(await channel.get_batch())
        prompt, window, margin = items[0]
        return TokenCountResponse(prompt_tokens=prompt, max_context_tokens=window, margin=margin)


# -- n choices ----------------------------------------------------------------------------------

_Item = tuple[int, list[WorkerEvent] | BaseException | None]
"""A choice's next batch; an error it failed with; None when its channel ended early."""


@dataclass
class _Choices:
    """The ``n`` turns of one request, their outputs, and the one watcher of the client."""

    jobs: list[TurnJob]
    outputs: list[ChatOutput]
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    items: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    gone: bool = False

    def start(self, receive: Receive | None) -> None:
        loop = asyncio.get_running_loop()
        if receive is not None:
            self.tasks.append(loop.create_task(self._watch(receive)))
        self.tasks.extend(loop.create_task(self._pump(i, job)) for i, job in enumerate(self.jobs))

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                self.gone = True
                self.cancel()
                return

    async def _pump(self, index: int, job: TurnJob) -> None:
        try:
            while True:
                batch = await job.channel.get_batch()
                if batch:
                    self.items.put_nowait((index, batch))
                    if isinstance(batch[-1], Finished):
                        return
                elif job.channel.closed or job.cancel.is_set():
                    self.items.put_nowait((index, None))
                    return
        except Exception as error:
            self.items.put_nowait((index, error))

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel.set()
            job.channel.interrupt()

    def stop(self) -> None:
        """Cancel every turn not finished and every helper task."""
        self.cancel()
        for task in self.tasks:
            if not task.done():
                task.cancel()

    async def next(self, timeout: float | None) -> _Item | None:
        """The next choice's item; None when `timeout` seconds passed first."""
        try:
            return await asyncio.wait_for(self.items.get(), timeout)
        except TimeoutError:
            return None


def _submit(worker: ModelWorker, plan: ChatPlan) -> list[TurnJob]:
    """Queue every choice's turn; none stays queued when one is refused (a full queue)."""
    loop = asyncio.get_running_loop()
    jobs: list[TurnJob] = []
    try:
        for turn_plan in choice_plans(plan):
            channel: EventChannel[WorkerEvent] = EventChannel(loop)
            job = TurnJob(turn_plan, channel)
            worker.submit(job)
            jobs.append(job)
    except BaseException:
        for job in jobs:
            job.cancel.set()
        raise
    return jobs


def _as_api_error(error: BaseException) -> APIError:
    if isinstance(error, APIError):
        return error
    return APIError(500, f"the turn failed: {type(error).__name__}: {error}")


async def answer_choices(
    service: ChatService, plan: ChatPlan, request: Request, outcome: Outcome
) -> Response:
    """Run `plan`'s ``n`` choices together: one ``chat.completion`` with ``n`` choices (usage
    summed), or one stream whose chunks carry each choice's ``index``. An error before any
    choice started is an HTTP status, as for one choice."""
    jobs = _submit(service.worker, plan)
    answer_id, created = new_id(), int(time.time())
    outputs = [
        ChatOutput(plan, stream=plan.stream, index=i, id=answer_id, created=created, close=False)
        for i in range(len(jobs))
    ]
    choices = _Choices(jobs, outputs)
    choices.start(request.receive)
    settings = getattr(request.app.state, "settings", None)
    keepalive_s: float | None = getattr(settings, "keepalive_s", None)
    try:
        first = await choices.next(keepalive_s if plan.stream else None)
    except BaseException:
        choices.stop()
        raise
    if first is not None:
        if isinstance(first[1], BaseException):
            choices.stop()
            raise _as_api_error(first[1])
        if first[1] is None:
            choices.stop()
            outcome.cancelled = True
            return Response(status_code=499)
    if plan.stream:
        return EventStreamResponse(
            _stream(choices, first, outcome, keepalive_s),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        completed = await _collect(choices, first, outcome)
    finally:
        choices.stop()
    if completed is None:
        outcome.cancelled = True
        return Response(status_code=499)
    merged = merge_completions([o.completion() for o in completed])
    return Response(merged.model_dump_json(exclude_unset=True), media_type="application/json")


def _take(choices: _Choices, item: _Item, outcome: Outcome) -> tuple[bytes, bool]:
    """Feed one choice's batch to its output: (the stream's bytes, whether it finished)."""
    index, batch = item
    assert isinstance(batch, list)
    output = choices.outputs[index]
    finished = output.feed(batch)
    data = output.take()
    if finished is None:
        return data, False
    outcome.generations += tuple(finished.result.generations)
    return data + output.finish(finished, outcome), True


async def _collect(
    choices: _Choices, first: _Item | None, outcome: Outcome
) -> Sequence[ChatOutput] | None:
    done = 0
    item = first
    while done < len(choices.outputs):
        if item is None:
            item = await choices.next(None)
            assert item is not None
        if isinstance(item[1], BaseException):
            raise _as_api_error(item[1])
        if item[1] is None:
            return None
        done += _take(choices, item, outcome)[1]
        item = None
    return choices.outputs


async def _stream(
    choices: _Choices, first: _Item | None, outcome: Outcome, keepalive_s: float | None
) -> AsyncIterator[bytes]:
    outputs = choices.outputs
    done = 0
    item = first
    try:
        yield b"".join(o.start() for o in outputs) if first is not None else KEEPALIVE
        while done < len(outputs):
            if item is None:
                item = await choices.next(keepalive_s)
                if item is None:
                    yield KEEPALIVE
                    continue
            if isinstance(item[1], BaseException):
                yield outputs[item[0]].fail(_as_api_error(item[1]))
                return
            if item[1] is None:
                outcome.cancelled = True
                return
            if first is None:  # the turns started after a keep-alive: open the choices now
                yield b"".join(o.start() for o in outputs)
                first = item
            data, finished = _take(choices, item, outcome)
            done += finished
            item = None
            if data:
                yield data
        usages = [o.usage for o in outputs if o.usage is not None]
        yield outputs[0].closing(sum_usage(usages))
    finally:
        if done < len(outputs):
            outcome.cancelled = True
        choices.stop()
