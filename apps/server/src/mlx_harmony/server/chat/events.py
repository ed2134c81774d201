"""A chat turn's events as a ``chat.completion`` or as ``chat.completion.chunk`` server-sent
events (one per token as it is generated), from the protocol models with ``model_dump_json``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

from pydantic import TypeAdapter

from mlx_harmony.controller import AnswerDelta, CommentaryDelta, ThinkingDelta

from ..errors import APIError
from ..planning import TokenCounts
from ..serving import Outcome
from ..worker import Finished, TokenLogprobs, WorkerEvent
from .protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    ChunkToolCall,
    CompletionTokensDetails,
    PromptTokensDetails,
    ResponseMessage,
    TokenLogprob,
    ToolCall,
    Usage,
)
from .translation import (
    ChatPlan,
    FinishName,
    answer_content,
    chat_usage,
    finish_reason,
    tool_calls,
)

__all__ = ["ChatOutput", "encode_chunk", "merge_completions", "new_id", "sum_usage"]

_DONE = b"data: [DONE]\n\n"
_DELTA: TypeAdapter[ChunkDelta] = TypeAdapter(ChunkDelta)


def new_id() -> str:
    return f"chatcmpl-{secrets.token_hex(12)}"


def encode_chunk(chunk: ChatCompletionChunk) -> bytes:
    """One ``data:`` event; fields the server did not set stay off the wire."""
    return b"data: " + chunk.model_dump_json(exclude_unset=True).encode() + b"\n\n"


class ChatOutput:
    """One chat turn's answer (see `TurnOutput`): with ``stream``, its chunks as it goes.

    With ``n`` > 1 each choice has its own output (``index``; one ``id`` and ``created`` for
    all) that does not ``close`` the stream: `ChoicesOutput` sends the usage and ``[DONE]``.
    """

    def __init__(
        self,
        plan: ChatPlan,
        *,
        stream: bool,
        index: int = 0,
        id: str | None = None,
        created: int | None = None,
        close: bool = True,
    ) -> None:
        self.plan = plan
        self.stream = stream
        self.index = index
        self.close = close
        self.id = id or new_id()
        self.created = created if created is not None else int(time.time())
        self.usage: Usage | None = None
        self._reasoning: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self._pending_logprobs: list[TokenLogprob] | None = None
        self._chunks: list[bytes] = []
        self._answer: ChatCompletion | None = None
        self._frame_bytes = self._frame() if stream else (b"", b"")

    def _chunk(
        self,
        delta: ChunkDelta,
        *,
        logprobs: ChoiceLogprobs | None = None,
        finish: FinishName | None = None,
    ) -> bytes:
        choice = ChunkChoice(index=self.index, delta=delta, logprobs=logprobs, finish_reason=finish)
        return encode_chunk(
            ChatCompletionChunk(
                id=self.id,
                object="chat.completion.chunk",
                created=self.created,
                model=self.plan.model,
                choices=[choice],
            )
        )

    def _frame(self) -> tuple[bytes, bytes]:
        """The bytes around the delta of a chunk with no logprobs and no finish reason: the
        `ChatCompletionChunk` serialised once per answer, so that a token only serialises
        its `ChunkDelta` (a whole chunk model per token cost ~4x as much)."""
        head, mark, tail = self._chunk(ChunkDelta()).partition(b'"delta":{}')
        if not mark:
            raise RuntimeError("the chunk's JSON has no empty delta to fill")
        return head + b'"delta":', tail

    def _delta_chunk(self, delta: ChunkDelta) -> bytes:
        """A chunk of `delta` alone: the frame around the delta's JSON (fields not set are
        left out, as `encode_chunk` leaves them out of a whole chunk)."""
        head, tail = self._frame_bytes
        return head + _DELTA.dump_json(delta, exclude_unset=True) + tail

    def start(self) -> bytes:
        return self._delta_chunk(ChunkDelta(role="assistant", content=""))

    def feed(self, batch: Sequence[WorkerEvent]) -> Finished | None:
        finished = None
        stream = self.stream
        for item in batch:
            if isinstance(item, AnswerDelta | CommentaryDelta):
                if stream:
                    self._content(item.text)
            elif isinstance(item, ThinkingDelta):
                if not stream:
                    self._reasoning.append(item.text)
                elif self.plan.include_reasoning or self.plan.return_analysis:
                    self._chunks.append(self._delta_chunk(self._reasoning_delta(item.text)))
            elif isinstance(item, TokenLogprobs):
                entries = [TokenLogprob.model_validate(e) for e in item.entries]
                if stream:
                    self._pending_logprobs = entries
                else:
                    self._logprobs.extend(entries)
            elif isinstance(item, Finished):
                finished = item
        return finished

    def _reasoning_delta(self, text: str) -> ChunkDelta:
        if not self.plan.return_analysis:
            return ChunkDelta(reasoning=text, reasoning_content=text)
        if not self.plan.include_reasoning:
            return ChunkDelta(analysis=text)
        return ChunkDelta(reasoning=text, reasoning_content=text, analysis=text)

    def _content(self, text: str) -> None:
        delta = ChunkDelta(content=text)
        if self.plan.logprobs:
            logprobs = ChoiceLogprobs(content=self._pending_logprobs or [])
            self._pending_logprobs = None
            self._chunks.append(self._chunk(delta, logprobs=logprobs))
        else:
            self._chunks.append(self._delta_chunk(delta))

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def finish(self, finished: Finished, outcome: Outcome) -> bytes:
        result = finished.result
        calls = tool_calls(result, self.plan.names)
        finish = finish_reason(result, has_calls=bool(calls))
        usage = self.usage = chat_usage(TokenCounts.of(finished))
        outcome.prompt_tokens += usage.prompt_tokens
        outcome.completion_tokens += usage.completion_tokens
        outcome.finish_reason = finish
        if not self.stream:
            self._answer = self._completion(finished, calls, finish, usage)
            return b""
        parts = [
            self._chunk(
                ChunkDelta(
                    tool_calls=[ChunkToolCall(index=i, id=c.id, type=c.type, function=c.function)]
                )
            )
            for i, c in enumerate(calls)
        ]
        parts.append(self._chunk(ChunkDelta(), finish=finish))
        if self.close:
            parts.append(self.closing(usage))
        return b"".join(parts)

    def closing(self, usage: Usage) -> bytes:
        """The end of the stream: the usage chunk when asked for, then ``[DONE]``."""
        if not self.plan.include_usage:
            return _DONE
        usage_chunk = ChatCompletionChunk(
            id=self.id,
            object="chat.completion.chunk",
            created=self.created,
            model=self.plan.model,
            choices=[],
            usage=usage,
        )
        return encode_chunk(usage_chunk) + _DONE

    def _completion(
        self, finished: Finished, calls: list[ToolCall], finish: FinishName, usage: Usage
    ) -> ChatCompletion:
        result = finished.result
        message = ResponseMessage(role="assistant", content=answer_content(result) or None)
        thinking = "".join(self._reasoning) or result.analysis
        if self.plan.include_reasoning:
            message.reasoning = thinking or None
            message.reasoning_content = thinking or None
        if self.plan.return_analysis:
            message.analysis = thinking or None
        if calls:
            message.tool_calls = calls
        return ChatCompletion(
            id=self.id,
            object="chat.completion",
            created=self.created,
            model=self.plan.model,
            system_fingerprint=None,
            choices=[
                Choice(
                    index=self.index,
                    message=message,
                    logprobs=ChoiceLogprobs(content=self._logprobs) if self.plan.logprobs else None,
                    finish_reason=finish,
                )
            ],
            usage=usage,
        )

    def completion(self) -> ChatCompletion:
        if self._answer is None:
            raise RuntimeError("answer() before finish()")
        return self._answer

    def answer(self) -> bytes:
        return self.completion().model_dump_json(exclude_unset=True).encode()

    def fail(self, error: APIError) -> bytes:
        return b"data: " + error.body_json().encode() + b"\n\n" + _DONE


def sum_usage(usages: Sequence[Usage]) -> Usage:
    """The usage of several choices: every count summed (each choice prefilled its prompt)."""
    return Usage(
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        total_tokens=sum(u.total_tokens for u in usages),
        prompt_tokens_details=PromptTokensDetails(
            cached_tokens=sum(u.prompt_tokens_details.cached_tokens for u in usages)
        ),
        completion_tokens_details=CompletionTokensDetails(
            reasoning_tokens=sum(u.completion_tokens_details.reasoning_tokens for u in usages),
            **_prediction_sums([u.completion_tokens_details for u in usages]),
        ),
    )


def _prediction_sums(details: Sequence[CompletionTokensDetails]) -> dict[str, int]:
    """The choices' speculative-decoding counts summed (none when no choice speculated)."""
    sums: dict[str, int] = {}
    for name in ("accepted_prediction_tokens", "rejected_prediction_tokens"):
        values = [v for d in details if (v := getattr(d, name)) is not None]
        if values:
            sums[name] = sum(values)
    return sums


def merge_completions(completions: Sequence[ChatCompletion]) -> ChatCompletion:
    """One ``chat.completion`` with every choice, in index order, and the summed usage."""
    first = completions[0]
    choices = sorted((c for done in completions for c in done.choices), key=lambda c: c.index)
    return first.model_copy(
        update={"choices": choices, "usage": sum_usage([c.usage for c in completions])}
    )
