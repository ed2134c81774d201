"""The request side both APIs share: the `Serving` interface, handing a turn to the worker
while watching for the client leaving, and the one loop that streams a turn as SSE.

An API implements `Serving` (its ``plan`` checks a request, its ``output`` collects a turn's
events into the API's answer and, when streaming, encodes them as the API's events); `answer`
runs any such plan: it queues the turn on the `ModelWorker` (the one place work is scheduled
onto the engine), then returns the whole answer or the event stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Never, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive as ASGIReceive
from starlette.types import Scope, Send

from mlx_harmony.controller import GenerationInfo

from .channel import EventChannel
from .errors import APIError
from .worker import (
    CountJob,
    Finished,
    ModelWorker,
    PromptCount,
    TurnJob,
    TurnPlan,
    WorkerEvent,
)

__all__ = [
    "KEEPALIVE",
    "ClientWatch",
    "EventStreamResponse",
    "Outcome",
    "PlannedTurn",
    "Receive",
    "Serving",
    "TurnOutput",
    "answer",
    "first_events",
    "run_to_end",
    "serve",
    "stream_events",
    "submit_turn",
]

Receive = Callable[[], Awaitable[Mapping[str, Any]]]
"""The ASGI ``receive`` of the request: it says ``http.disconnect`` when the client leaves."""


@dataclass
class Outcome:
    """What the request log reports for a request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cancelled: bool = False
    generations: tuple[GenerationInfo, ...] = ()
    """The finished turn's generations (timings, prompt-cache reuse), for the metrics."""


class PlannedTurn(Protocol):
    """A checked request of either API: the worker's plan and whether to stream."""

    @property
    def turn_plan(self) -> TurnPlan: ...

    @property
    def stream(self) -> bool: ...


class TurnOutput(Protocol):
    """One API's view of one turn: collects its events into the answer; when streaming, also
    encodes them as the API's server-sent events (`take` hands over what is ready)."""

    def start(self) -> bytes:
        """The events that open a stream."""
        ...

    def feed(self, batch: Sequence[WorkerEvent]) -> Finished | None:
        """Take a batch of the worker's events; the `Finished` when the turn ended."""
        ...

    def take(self) -> bytes:
        """The stream's events encoded since the last call."""
        ...

    def finish(self, finished: Finished, outcome: Outcome) -> bytes:
        """Close the answer (counting into `outcome`); the stream's closing events."""
        ...

    def answer(self) -> bytes:
        """The whole answer as JSON, after `finish`."""
        ...

    def fail(self, error: APIError) -> bytes:
        """The stream's closing events for a turn that failed after it started."""
        ...


P = TypeVar("P", bound=PlannedTurn)
B_contra = TypeVar("B_contra", contravariant=True)


class Serving(Protocol[B_contra, P]):
    """An API served on the model worker: checks its requests, renders its answers."""

    @property
    def worker(self) -> ModelWorker: ...

    def plan(self, body: B_contra) -> P:
        """Check `body` and plan its turn; `APIError` when it is wrong."""
        ...

    def output(self, plan: P, *, stream: bool) -> TurnOutput:
        """A fresh output for one run of `plan`."""
        ...


@dataclass
class ClientWatch:
    """Watches for the client going away while its job waits or runs."""

    job: TurnJob | CountJob
    channel: EventChannel[WorkerEvent] | EventChannel[PromptCount]
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
    channel: EventChannel[WorkerEvent] = EventChannel(asyncio.get_running_loop())
    job = TurnJob(plan, channel)
    worker.submit(job)
    watch = ClientWatch(job, channel)
    watch.start(receive)
    return job, watch


async def run_to_end(job: TurnJob, watch: ClientWatch, output: TurnOutput) -> Finished | None:
    """Hand the job's events to `output` until the turn's `Finished`; None when the client
    left first (the job is cancelled then)."""
    finished = None
    try:
        while finished is None:
            batch = await job.channel.get_batch()
            if not batch:
                if watch.gone or job.channel.closed:
                    break
                continue
            finished = output.feed(batch)
    finally:
        watch.stop()
        if finished is None:
            job.cancel.set()
    return finished


KEEPALIVE = b": keep-alive\n\n"
"""An SSE comment: clients ignore it, but it resets their read timeouts."""


async def _get_batch(job: TurnJob, timeout: float | None) -> list[WorkerEvent] | None:
    """The channel's next batch; None when `timeout` seconds passed first (`get_batch` takes
    nothing from the channel until it returns, so giving up on it loses nothing)."""
    if timeout is None:
        return await job.channel.get_batch()
    try:
        return await asyncio.wait_for(job.channel.get_batch(), timeout)
    except TimeoutError:
        return None


async def first_events(
    job: TurnJob, watch: ClientWatch, *, timeout: float | None = None
) -> list[WorkerEvent] | None:
    """The job's first events, before a streamed answer starts (so an error found before
    generating is still an HTTP status); [] when the client left first (the job is cancelled
    then, and when this raises); None when `timeout` seconds passed first (the job goes on)."""
    try:
        first: list[WorkerEvent] | None = []
        while not first:
            first = await _get_batch(job, timeout)
            if first is None:
                return None
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


async def stream_events(
    job: TurnJob,
    watch: ClientWatch,
    first: list[WorkerEvent],
    output: TurnOutput,
    outcome: Outcome,
    *,
    keepalive_s: float | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body of a turn: `output`'s events as the worker's batches arrive (a
    `KEEPALIVE` comment after `keepalive_s` silent seconds). A turn that fails ends with
    `output`'s failure events; a client that leaves cancels the turn."""
    finished: Finished | None = None
    batch = first
    try:
        yield output.start()
        while True:
            finished = output.feed(batch)
            if finished is not None:
                outcome.generations = tuple(finished.result.generations)
                yield output.take() + output.finish(finished, outcome)
                return
            ready = output.take()
            if ready:
                yield ready
            try:
                waited = await _get_batch(job, keepalive_s)
                while waited is None:
                    yield KEEPALIVE
                    waited = await _get_batch(job, keepalive_s)
                batch = waited
            except Exception as error:
                if not isinstance(error, APIError):
                    error = APIError(500, f"the turn failed: {type(error).__name__}: {error}")
                yield output.fail(error)
                return
            if not batch and (watch.gone or job.channel.closed):
                outcome.cancelled = watch.gone
                return
    finally:
        watch.stop()
        if finished is None:
            job.cancel.set()
            outcome.cancelled = True


class EventStreamResponse(StreamingResponse):
    """Server-sent events. `ClientWatch` watches for the client leaving, so this only sends;
    a send to a closed connection ends the stream."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: Send) -> None:
        try:
            await self.stream_response(send)
        except OSError:
            pass
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


async def answer(
    service: Serving[Never, P], plan: P, request: Request, outcome: Outcome
) -> Response:
    """Run a planned turn of `service`: server-sent events when the plan streams, else the
    whole answer; 499 when the client left before it started.

    A stream waits for the worker's first event before answering, so that an error found
    before generating (a prompt longer than the context) is still an HTTP error status.
    """
    job, watch = submit_turn(service.worker, plan.turn_plan, request.receive)
    output = service.output(plan, stream=plan.stream)
    if plan.stream:
        keepalive_s = _keepalive_s(request)
        first = await first_events(job, watch, timeout=keepalive_s)
        if first is None:
            body = _waiting_stream(job, watch, output, outcome, keepalive_s)
        elif not first:
            outcome.cancelled = True
            return Response(status_code=499)
        else:
            body = stream_events(job, watch, first, output, outcome, keepalive_s=keepalive_s)
        return EventStreamResponse(
            body, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
    finished = await run_to_end(job, watch, output)
    if finished is None:
        outcome.cancelled = True
        return Response(status_code=499)
    outcome.generations = tuple(finished.result.generations)
    output.finish(finished, outcome)
    return Response(output.answer(), media_type="application/json")


def _keepalive_s(request: Request) -> float | None:
    settings = getattr(request.app.state, "settings", None)
    return getattr(settings, "keepalive_s", None)


async def _waiting_stream(
    job: TurnJob,
    watch: ClientWatch,
    output: TurnOutput,
    outcome: Outcome,
    keepalive_s: float | None,
) -> AsyncIterator[bytes]:
    """The SSE body of a turn that had not started after `keepalive_s` (queued behind others,
    or a long prompt prefilling): `KEEPALIVE` comments until it does, then `stream_events`.
    An error found before generating is then the stream's failure events (the status is sent)."""
    streaming = False
    try:
        first: list[WorkerEvent] | None = None
        while first is None:
            yield KEEPALIVE
            try:
                first = await first_events(job, watch, timeout=keepalive_s)
            except Exception as error:
                if not isinstance(error, APIError):
                    error = APIError(500, f"the turn failed: {type(error).__name__}: {error}")
                yield output.fail(error)
                return
        if not first:
            outcome.cancelled = True
            return
        streaming = True
        async for part in stream_events(
            job, watch, first, output, outcome, keepalive_s=keepalive_s
        ):
            yield part
    finally:
        if not streaming:
            watch.stop()
            job.cancel.set()


async def serve(service: Serving[B_contra, P], body: B_contra, request: Request) -> Response:
    """A route's whole job: plan `body` with `service`, then `answer` it; the request log
    reads the `Outcome` from ``request.state``."""
    outcome = Outcome()
    request.state.outcome = outcome
    return await answer(service, service.plan(body), request, outcome)
