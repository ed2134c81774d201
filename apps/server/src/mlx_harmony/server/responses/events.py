"""A response's output items, built from the turn's events as they arrive, and (streamed) its
server-sent events, from the protocol models with ``model_dump_json``.

The analysis channel becomes a ``reasoning`` item, the final channel a ``message``
(``phase: "final_answer"``), a preamble a ``message`` (``phase: "commentary"``), each call a
``function_call`` item. Streamed, each token is a ``response.reasoning_text.delta`` or
``response.output_text.delta`` event as it is generated.

With ``reasoning.summary`` a reasoning item's ``summary`` holds the analysis (``concise``: its
first sentences), streamed as ``response.reasoning_summary_*`` events when the item closes;
with ``include: ["reasoning.encrypted_content"]`` it carries the analysis sealed with the
server's key, to be sent back by clients that keep no state here (``store: false``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Literal

from pydantic import TypeAdapter

from mlx_harmony.controller import AnswerDelta, CommentaryDelta, ThinkingDelta

from ..errors import APIError
from ..planning import TokenCounts, was_cut
from ..serving import Outcome
from ..worker import Finished, WorkerEvent
from .protocol import (
    ContentPartEvent,
    FunctionCallArgumentsDeltaEvent,
    FunctionCallArgumentsDoneEvent,
    IncompleteDetails,
    InputItem,
    InputItemModel,
    InputTokensDetails,
    ItemStatus,
    OutputFunctionCall,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    OutputReasoning,
    OutputText,
    OutputTextDeltaEvent,
    OutputTextDoneEvent,
    OutputTokensDetails,
    ReasoningSummaryPartEvent,
    ReasoningSummaryTextDeltaEvent,
    ReasoningSummaryTextDoneEvent,
    ReasoningText,
    ReasoningTextDeltaEvent,
    ReasoningTextDoneEvent,
    ResponseError,
    ResponseEvent,
    ResponseObject,
    ResponseStateEvent,
    ResponseUsage,
    SummaryText,
)
from .translation import ResponsePlan, SummaryMode, new_id

__all__ = ["ResponseOutput", "encode_event", "response_object", "summarize"]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CONCISE_CHARS = 200


def summarize(text: str, mode: SummaryMode) -> str:
    """A reasoning summary: the analysis itself (auto, detailed), or for ``concise`` its
    first sentences up to about 200 characters (gpt-oss writes no summary of its own)."""
    text = text.strip()
    if mode != "concise" or len(text) <= _CONCISE_CHARS:
        return text
    out = ""
    for sentence in _SENTENCE_END.split(text):
        if out and len(out) + 1 + len(sentence) > _CONCISE_CHARS:
            break
        out = f"{out} {sentence}" if out else sentence
    return out if len(out) <= _CONCISE_CHARS else out[: _CONCISE_CHARS - 1].rstrip() + "…"


_Channel = Literal["reasoning", "final_answer", "commentary"]
_ITEM: TypeAdapter[InputItemModel] = TypeAdapter(InputItem)
Status = Literal["in_progress", "completed", "incomplete", "failed"]


def encode_event(event: ResponseEvent) -> bytes:
    """One ``event:``/``data:`` pair."""
    return f"event: {event.type}\ndata: {event.model_dump_json()}\n\n".encode()


def response_object(
    plan: ResponsePlan,
    *,
    status: Status,
    output: Sequence[OutputItem] = (),
    usage: ResponseUsage | None = None,
    error: ResponseError | None = None,
    incomplete: bool = False,
) -> ResponseObject:
    done = status in ("completed", "incomplete")
    return ResponseObject(
        id=plan.id,
        created_at=plan.created_at,
        completed_at=int(time.time()) if done else None,
        status=status,
        error=error,
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if incomplete else None,
        model=plan.model,
        output=list(output),
        usage=usage,
        **plan.settings.model_dump(),
    )


def _usage(counts: TokenCounts) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=counts.prompt,
        input_tokens_details=InputTokensDetails(cached_tokens=counts.cached),
        output_tokens=counts.completion,
        output_tokens_details=OutputTokensDetails(reasoning_tokens=counts.reasoning),
        total_tokens=counts.prompt + counts.completion,
    )


class ResponseOutput:
    """One response's output (see `TurnOutput`): with ``stream``, its events as it goes.
    ``keep`` stores the finished response with its conversation's items."""

    def __init__(
        self,
        plan: ResponsePlan,
        *,
        stream: bool,
        keep: Callable[[ResponseObject, tuple[InputItemModel, ...]], None],
    ) -> None:
        self.plan = plan
        self.stream = stream
        self.keep = keep
        self.items: list[OutputItem] = []
        self.sequence = 0
        self._chunks: list[bytes] = []
        self._channel: _Channel | None = None
        self._texts: list[str] = []
        self._response: ResponseObject | None = None

    def _emit(self, event: ResponseEvent) -> None:
        self._chunks.append(encode_event(event))
        self.sequence += 1

    def start(self) -> bytes:
        opening = response_object(self.plan, status="in_progress")
        self._emit(ResponseStateEvent(type="response.created", sequence_number=0, response=opening))
        self._emit(
            ResponseStateEvent(type="response.in_progress", sequence_number=1, response=opening)
        )
        return self.take()

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def feed(self, batch: Sequence[WorkerEvent]) -> Finished | None:
        finished = None
        for item in batch:
            if isinstance(item, AnswerDelta):
                self._text("final_answer", item.text)
            elif isinstance(item, ThinkingDelta):
                self._text("reasoning", item.text)
            elif isinstance(item, CommentaryDelta):
                self._text("commentary", item.text)
            elif isinstance(item, Finished):
                finished = item
        return finished

    def _text(self, channel: _Channel, text: str) -> None:
        if channel != self._channel:
            self._close("completed")
            self._open(channel)
        self._texts.append(text)
        if not self.stream:
            return
        item_id, index, seq = self.items[-1].id, len(self.items) - 1, self.sequence
        if channel == "reasoning":
            event: ResponseEvent = ReasoningTextDeltaEvent(
                item_id=item_id,
                output_index=index,
                content_index=0,
                delta=text,
                sequence_number=seq,
            )
        else:
            event = OutputTextDeltaEvent(
                item_id=item_id,
                output_index=index,
                content_index=0,
                logprobs=[],
                delta=text,
                sequence_number=seq,
            )
        self._emit(event)

    def _open(self, channel: _Channel) -> None:
        index = len(self.items)
        item: OutputItem
        part: OutputText | ReasoningText
        if channel == "reasoning":
            item = OutputReasoning(id=new_id("rs"), status="in_progress", summary=[], content=[])
            part = ReasoningText(text="")
        else:
            item = OutputMessage(id=new_id("msg"), status="in_progress", phase=channel, content=[])
            part = OutputText(text="")
        self.items.append(item)
        self._channel = channel
        self._texts = []
        if self.stream:
            self._item_event("response.output_item.added", index, item)
            self._emit(
                ContentPartEvent(
                    type="response.content_part.added",
                    item_id=item.id,
                    output_index=index,
                    content_index=0,
                    part=part,
                    sequence_number=self.sequence,
                )
            )

    def _item_event(
        self,
        kind: Literal["response.output_item.added", "response.output_item.done"],
        index: int,
        item: OutputItem,
    ) -> None:
        self._emit(
            OutputItemEvent(type=kind, output_index=index, item=item, sequence_number=self.sequence)
        )

    def _close(self, status: ItemStatus) -> None:
        channel = self._channel
        if channel is None:
            return
        self._channel = None
        index = len(self.items) - 1
        text = "".join(self._texts)
        old = self.items[index]
        part: OutputText | ReasoningText
        part = ReasoningText(text=text) if channel == "reasoning" else OutputText(text=text)
        update: dict[str, object] = {"status": status, "content": [part]}
        summary = self.plan.summary
        if channel == "reasoning":
            if summary is not None and text.strip():
                update["summary"] = [SummaryText(text=summarize(text, summary))]
            if self.plan.seal is not None:
                update["encrypted_content"] = self.plan.seal.seal(text)
        item = old.model_copy(update=update)
        self.items[index] = item
        if not self.stream:
            return
        item_id = item.id
        done: ResponseEvent
        if isinstance(part, ReasoningText):
            done = ReasoningTextDoneEvent(
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
                sequence_number=self.sequence,
            )
        else:
            done = OutputTextDoneEvent(
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
                sequence_number=self.sequence,
            )
        self._emit(done)
        self._emit(
            ContentPartEvent(
                type="response.content_part.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=part,
                sequence_number=self.sequence,
            )
        )
        if isinstance(item, OutputReasoning):
            self._summary_events(item, index)
        self._item_event("response.output_item.done", index, item)

    def _summary_events(self, item: OutputReasoning, index: int) -> None:
        """A closed reasoning item's summary parts, each as one delta (gpt-oss writes no
        summary, so it exists only once the analysis is complete)."""
        for n, part in enumerate(item.summary):
            where = {"item_id": item.id, "output_index": index, "summary_index": n}
            self._emit(
                ReasoningSummaryPartEvent(
                    type="response.reasoning_summary_part.added",
                    part=SummaryText(text=""),
                    sequence_number=self.sequence,
                    **where,
                )
            )
            self._emit(
                ReasoningSummaryTextDeltaEvent(
                    delta=part.text, sequence_number=self.sequence, **where
                )
            )
            self._emit(
                ReasoningSummaryTextDoneEvent(
                    text=part.text, sequence_number=self.sequence, **where
                )
            )
            self._emit(
                ReasoningSummaryPartEvent(
                    type="response.reasoning_summary_part.done",
                    part=part,
                    sequence_number=self.sequence,
                    **where,
                )
            )

    def _add_calls(self, calls: Sequence[tuple[str | None, str, str]]) -> None:
        for namespace, name, arguments in calls:
            index = len(self.items)
            item = OutputFunctionCall(
                id=new_id("fc"),
                status="completed",
                call_id=new_id("call"),
                name=name,
                arguments=arguments,
                namespace=namespace,
            )
            self.items.append(item)
            if not self.stream:
                continue
            added = item.model_copy(update={"status": "in_progress", "arguments": ""})
            self._item_event("response.output_item.added", index, added)
            self._emit(
                FunctionCallArgumentsDeltaEvent(
                    item_id=item.id,
                    output_index=index,
                    delta=arguments,
                    sequence_number=self.sequence,
                )
            )
            self._emit(
                FunctionCallArgumentsDoneEvent(
                    item_id=item.id,
                    output_index=index,
                    name=name,
                    arguments=arguments,
                    sequence_number=self.sequence,
                )
            )
            self._item_event("response.output_item.done", index, item)

    def finish(self, finished: Finished, outcome: Outcome) -> bytes:
        """Close the output, count the usage, keep the response; the closing events."""
        plan = self.plan
        calls = [
            (*plan.names.from_recipient(call.recipient), call.arguments)
            for call in finished.result.tool_calls
        ]
        incomplete = not calls and was_cut(finished.result)
        status: Literal["completed", "incomplete"] = "incomplete" if incomplete else "completed"
        self._close(status)
        self._add_calls(calls)
        usage = _usage(TokenCounts.of(finished))
        response = response_object(
            plan, status=status, output=self.items, usage=usage, incomplete=incomplete
        )
        self._response = response
        if plan.store:
            outputs = tuple(_ITEM.validate_python(item.model_dump()) for item in self.items)
            self.keep(response, plan.items + outputs)
        outcome.prompt_tokens = usage.input_tokens
        outcome.completion_tokens = usage.output_tokens
        outcome.finish_reason = "tool_calls" if calls else ("length" if incomplete else "stop")
        if self.stream:
            kind: Literal["response.completed", "response.incomplete"] = (
                "response.incomplete" if incomplete else "response.completed"
            )
            self._emit(
                ResponseStateEvent(type=kind, response=response, sequence_number=self.sequence)
            )
        return self.take()

    def answer(self) -> bytes:
        if self._response is None:
            raise RuntimeError("answer() before finish()")
        return self._response.model_dump_json().encode()

    def fail(self, error: APIError) -> bytes:
        failed = response_object(
            self.plan,
            status="failed",
            output=self.items,
            error=ResponseError(code=error.code or "server_error", message=error.message),
        )
        self._emit(
            ResponseStateEvent(
                type="response.failed", response=failed, sequence_number=self.sequence
            )
        )
        return self.take()
