"""One chat turn: prompt, generate, read, recover, run tools, record.

Layered like mlx-lm's generators: `stream_chat_turn` yields `TurnEvent`s as the turn runs and
ends with one `TurnDone`; `run_chat_turn` consumes it (passing each event to ``on_event``) and
returns the `TurnResult`.

A turn is a loop of generations. Each renders the prompt (system, developer, example
dialogues, greeting, the history that fits the context budget, the turn so far) through the
adapter, streams the reply through mlx-generate (one `TokenGenerator` per conversation, so its
prompt cache serves the common prefix) and reads it. Then, in order:

1. `decide_retry` may throw the attempt away (length, no final answer, loop), within the
   `RetryPolicy`'s bounds; each retry is a `RetryEvent` and a `RetryRecord` on the result.
2. A tool call to a built-in tool (python, browser.*, functions.apply_patch) is run, the call
   and its result join the turn, and generation goes on, at most ``max_tool_rounds`` times;
   a call past that is refused with a message and the model must answer. Calls to any other
   function are returned to the caller (``finish_reason="tool_calls"``).
3. Otherwise the reply is the answer and the turn ends.

Retries change only their own attempt (a larger max_tokens, a stronger repetition penalty, an
instruction appended to the user's message): the config is never changed, so the next attempt
or turn runs with the user's settings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from mlx_harmony.harmony_format import FunctionTool, Message, Role, ToolCall

from .adapters import ChatAdapter, TurnOutput
from .commands import Turn
from .config import PromptConfig
from .context import ContextBudget, fit_context
from .debug import DebugWriter
from .events import (
    ContextTrimmed,
    GenerationInfo,
    RetryEvent,
    RetryReason,
    StatsEvent,
    ToolCallEvent,
    ToolResultEvent,
    TurnDone,
    TurnEvent,
)
from .retries import DEFAULT_RETRY_POLICY, RetryDecision, RetryPolicy, decide_retry, looks_complete
from .tools import ToolDeclarations, ToolRegistry, ToolResult

if TYPE_CHECKING:
    from mlx_harmony.chat_history import ChatLog

__all__ = [
    "DEFAULT_MAX_TOOL_ROUNDS",
    "TRUNCATED_MARKER",
    "FinishReason",
    "RetryRecord",
    "TokenStreamer",
    "TurnResult",
    "as_turn",
    "hyperparameters_of",
    "run_chat_turn",
    "stream_chat_turn",
]

DEFAULT_MAX_TOOL_ROUNDS = 8
TRUNCATED_MARKER = "[truncated]"


class FinishReason(StrEnum):
    """How a turn ended (the server maps these to OpenAI's ``finish_reason``)."""

    STOP = "stop"
    """The model finished its answer."""
    LENGTH = "length"
    """max_tokens cut the answer and the retries did not help."""
    TOOL_CALLS = "tool_calls"
    """The model called functions the caller must run; see `TurnResult.tool_calls`."""
    LOOP = "loop"
    """The answer kept looping after the loop retries."""
    NO_FINAL = "no_final"
    """The model gave no final answer after the retries."""
    TOOL_LIMIT = "tool_limit"
    """The model kept calling tools after ``max_tool_rounds`` and being told to answer."""
    CANCELLED = "cancelled"
    """The caller cancelled the turn."""


class TokenStreamer(Protocol):
    """What the turn needs from a generator: mlx-generate's `TokenGenerator.stream`.

    `mlx_harmony.controller.testing.ScriptedGenerator` is the test double.
    """

    def stream(
        self,
        *,
        prompt_tokens: Sequence[int],
        sampling: Any = None,
        max_tokens: int = 512,
        stop_tokens: Any = None,
        stop_strings: Sequence[str] = (),
        cancel: Any = None,
        loop_detection: Any = None,
    ) -> Iterator[Any]: ...


@dataclass(frozen=True, slots=True)
class RetryRecord:
    """One thrown-away attempt: why, and what the next attempt changed."""

    attempt: int
    reason: RetryReason
    stop_reason: str
    completion_tokens: int
    max_tokens: int
    detail: str
    instruction: str | None = None
    sampling: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The form stored on the turn in the chat log (``retries``)."""
        data: dict[str, Any] = {
            "attempt": self.attempt,
            "reason": self.reason.value,
            "stop_reason": self.stop_reason,
            "completion_tokens": self.completion_tokens,
            "max_tokens": self.max_tokens,
            "detail": self.detail,
        }
        if self.instruction:
            data["instruction"] = self.instruction
        if self.sampling:
            data["sampling"] = dict(self.sampling)
        return data


@dataclass(frozen=True, slots=True)
class TurnResult:
    """Everything a turn produced.

    ``turn`` is the whole turn (user message and every reply, reasoning and tool messages
    included) to keep in the session; ``new_replies`` the replies this call added. ``final`` is
    the answer, ``tool_calls`` the calls returned to the caller. ``hyperparameters`` are the
    user's settings for the turn (never a retry's overrides), as stored in the chat log.
    """

    turn: Turn
    final: str
    finish_reason: FinishReason
    analysis: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    truncated: bool = False
    retries: tuple[RetryRecord, ...] = ()
    tool_rounds: int = 0
    generations: tuple[GenerationInfo, ...] = ()
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    dropped_turns: int = 0
    prompt_tokens: int = 0
    total_s: float = 0.0
    user_is_new: bool = True
    replies_start: int = 0

    @property
    def new_replies(self) -> tuple[Any, ...]:
        return self.turn.replies[self.replies_start :]

    @property
    def display_text(self) -> str:
        """The answer as shown to people: a cut answer ends with ``[truncated]``."""
        if not self.truncated:
            return self.final
        return (
            f"{self.final.rstrip()} {TRUNCATED_MARKER}" if self.final.strip() else TRUNCATED_MARKER
        )

    @property
    def completion_tokens(self) -> int:
        return sum(g.completion_tokens for g in self.generations)

    @property
    def reused_prompt_tokens(self) -> int:
        return self.generations[-1].reused_prompt_tokens if self.generations else 0

    def timing(self) -> dict[str, Any]:
        """The chat log's `TimingStats` values (mlx-lm's names) plus ``reused_prompt_tokens``
        and ``generations``; prompt numbers are those of the last generation."""
        if not self.generations:
            return {"total_time": round(self.total_s, 4)}
        first, last = self.generations[0], self.generations[-1]
        return {
            "prompt_tokens": last.prompt_tokens,
            "prompt_tps": round(last.prompt_tokens_per_s, 3),
            "generation_tokens": self.completion_tokens,
            "generation_tps": round(last.decode_tokens_per_s, 3),
            "time_to_first_token": round(first.time_to_first_token_s, 4),
            "total_time": round(self.total_s, 4),
            "peak_memory": round(max(g.peak_memory_gb for g in self.generations), 4),
            "reused_prompt_tokens": last.reused_prompt_tokens,
            "generations": len(self.generations),
        }


def as_turn(turn: str | Message | Turn) -> Turn:
    """A `Turn` from a user's text, a user `Message`, or a turn to continue."""
    if isinstance(turn, Turn):
        if isinstance(turn.user, str):
            return Turn(Message.user(turn.user), turn.replies)
        return turn
    if isinstance(turn, str):
        return Turn(Message.user(turn))
    if isinstance(turn, Message):
        if turn.role is not Role.USER:
            raise ValueError(
                f"a turn starts with a user message, got a {turn.role.value} message; pass a "
                "Turn(user, replies) to continue a turn"
            )
        return Turn(turn)
    raise TypeError(f"a turn is a str, a user Message or a Turn, got {type(turn).__name__}")


def hyperparameters_of(config: PromptConfig) -> dict[str, Any]:
    """The values recorded with a turn: the sampling parameters in use (defaults filled in)
    and the generation settings that change answers; unset values are left out."""
    config = config.effective()
    values: dict[str, Any] = {
        k: v for k, v in config.sampling_params().model_dump(mode="json").items() if v is not None
    }
    for name in ("max_tokens", "max_context_tokens", "reasoning_effort", "loop_detection"):
        value = getattr(config, name)
        if value is not None:
            values[name] = value
    return values


def _is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    return bool(is_set() if callable(is_set) else cancel())


def _cut_at_stop_string(output: TurnOutput, stop_string: str | None) -> TurnOutput:
    """A stop string ends the text before it; token parsers still saw it, so cut it off."""
    if not stop_string or stop_string not in output.final:
        return output
    final = output.final[: output.final.index(stop_string)]
    messages = list(output.messages)
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role is Role.ASSISTANT and m.channel in (None, "final") and stop_string in m.text:
            messages[i] = replace(m, content=m.text[: m.text.index(stop_string)])
            break
    return replace(output, final=final, messages=tuple(messages), final_closed=True)


def _analysis_messages(output: TurnOutput) -> list[Message]:
    return [
        m
        for m in output.messages
        if m.role is Role.ASSISTANT and m.channel == "analysis" and m.recipient is None
    ]


def _finish(output: TurnOutput, stop_reason: str) -> tuple[FinishReason, bool]:
    """The finish reason and whether the answer is shown as truncated."""
    if stop_reason == "cancelled":
        return FinishReason.CANCELLED, bool(output.final) and not output.final_closed
    if stop_reason == "loop_detected":
        return FinishReason.LOOP, True
    if stop_reason == "length":
        if output.final_closed:
            return FinishReason.STOP, False
        if not output.final.strip():
            return FinishReason.LENGTH, True
        return FinishReason.LENGTH, not looks_complete(output.final)
    if not output.final.strip():
        return FinishReason.NO_FINAL, False
    return FinishReason.STOP, False


def stream_chat_turn(
    generator: TokenStreamer,
    adapter: ChatAdapter,
    turn: str | Message | Turn,
    *,
    history: Sequence[Turn] = (),
    config: PromptConfig,
    tools: ToolRegistry | None = None,
    function_tools: Sequence[FunctionTool] = (),
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    context_length: int | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    debug: DebugWriter | None = None,
    log: ChatLog | None = None,
) -> Iterator[TurnEvent]:
    """Run one turn, yielding its events; the last one is `TurnDone`.

    `turn` is the user's new message (text or `Message`), or a `Turn` to continue (a turn
    whose replies end with the results of function calls the caller ran). `history` holds the
    earlier turns; `context_length` is the model's window, used when the config sets no
    ``max_context_tokens``. With a `log`, the turn is appended to it (`record_turn`) just
    before `TurnDone`. Raises `ContextOverflowError` before generating when even this turn
    alone does not fit.
    """
    if max_tool_rounds < 0:
        raise ValueError(
            f"max_tool_rounds must be >= 0 (0: never run tools), got {max_tool_rounds}"
        )
    started = time.perf_counter()
    cfg = config.effective()
    current = as_turn(turn)
    user_is_new = not isinstance(turn, Turn) or not turn.replies
    use_tools = tools is not None and bool(tools) and adapter.supports_tools
    declarations = tools.declarations() if use_tools and tools is not None else ToolDeclarations()
    base_sampling = cfg.sampling_params()
    budget = ContextBudget.from_config(cfg, context_length=context_length)
    stop_strings = tuple(cfg.end_token_strings)
    history = tuple(history)

    replies: list[Message] = list(current.replies)
    replies_start = len(replies)
    retries: list[RetryRecord] = []
    generations: list[GenerationInfo] = []
    kept: list[Message] = []  # reasoning a no_final retry keeps
    decision: RetryDecision | None = None
    rounds = 0
    attempt = 0
    tools_refused = False
    dropped_reported = 0
    dropped = 0
    prompt_len = 0
    returned: tuple[ToolCall, ...] = ()
    finish = FinishReason.STOP
    truncated = False
    if debug is not None:
        debug.begin_turn()

    while True:
        attempt += 1
        user = current.user
        if decision is not None and decision.instruction and isinstance(user, Message):
            user = Message.user(f"{user.text}\n\n{decision.instruction}")
        force_final = (decision is not None and decision.force_final) or tools_refused
        working = Turn(user, (*replies, *kept))

        def render(turns: Sequence[Turn], force_final: bool = force_final) -> list[int]:
            return adapter.render(
                turns,
                config=cfg,
                tools=declarations,
                function_tools=function_tools,
                force_final=force_final,
            )

        prompt, dropped = fit_context(render, [*history, working], budget=budget)
        prompt_len = len(prompt)
        if dropped and dropped != dropped_reported:
            dropped_reported = dropped
            yield ContextTrimmed(dropped, prompt_len, budget.limit or 0)
        wanted = decision.max_tokens if decision is not None else cfg.max_tokens
        max_tokens = budget.max_new_tokens(prompt_len, wanted)
        sampling = (
            base_sampling.updated(**decision.sampling)
            if decision is not None and decision.sampling
            else base_sampling
        )
        if debug is not None:
            debug.prompt(attempt=attempt, tokens=prompt, decode=adapter.decode)

        parser = adapter.make_stream_parser(force_final=force_final)
        completion: list[int] = []
        stop_reason = "stop"
        info: GenerationInfo | None = None
        for event in generator.stream(
            prompt_tokens=prompt,
            sampling=sampling,
            max_tokens=max_tokens,
            stop_tokens=adapter.stop_tokens,
            stop_strings=stop_strings,
            cancel=cancel,
            loop_detection=cfg.loop_detection,
        ):
            token = event.token
            if token is not None:
                completion.append(token)
                deltas = parser.feed(token, event.text)
                if deltas:
                    yield from deltas
            if event.stats is not None:
                info = GenerationInfo.from_stats(event.stats)
                stop_reason = info.stop_reason
            elif event.stop_reason is not None:
                stop_reason = str(getattr(event.stop_reason, "value", event.stop_reason))
        yield from parser.flush()
        output = parser.finish()
        if info is None:
            info = GenerationInfo(prompt_len, len(completion), stop_reason=stop_reason)
        output = _cut_at_stop_string(output, info.stop_string)
        generations.append(info)
        yield StatsEvent(info, attempt, rounds)

        room = budget.max_new_tokens(prompt_len, None) if budget.window is not None else None
        new = decide_retry(
            output,
            stop_reason,
            max_tokens=max_tokens,
            previous=[r.reason for r in retries],
            sampling=sampling,
            policy=policy,
            max_tokens_cap=room,
        )
        trace: dict[str, Any] = {
            "attempt": attempt,
            "tool_round": rounds,
            "stop_reason": stop_reason,
            "max_tokens": max_tokens,
            "sampling_overrides": dict(decision.sampling) if decision is not None else {},
            "force_final": force_final,
        }
        if new is not None:
            retries.append(
                RetryRecord(
                    attempt=attempt,
                    reason=new.reason,
                    stop_reason=stop_reason,
                    completion_tokens=len(completion),
                    max_tokens=new.max_tokens,
                    detail=new.detail,
                    instruction=new.instruction,
                    sampling=dict(new.sampling),
                )
            )
            if debug is not None:
                debug.completion(
                    attempt=attempt,
                    tokens=completion,
                    decode=adapter.decode,
                    output=output,
                    stop_reason=stop_reason,
                    decision={**trace, "action": "retry", "retry": new.to_dict()},
                )
            yield RetryEvent(
                attempt + 1, new.reason, new.detail, new.max_tokens, dict(new.sampling)
            )
            kept = [*kept, *_analysis_messages(output)] if new.keep_analysis else []
            decision = new
            continue

        # The attempt is kept.
        replies.extend(kept)
        replies.extend(output.messages)
        kept, decision = [], None
        if output.called_tool and output.tool_calls:
            handled = [
                c
                for c in output.tool_calls
                if use_tools and tools is not None and tools.handles(c.recipient)
            ]
            others = tuple(c for c in output.tool_calls if c not in handled)
            for call in output.tool_calls:
                yield ToolCallEvent(call, handled=call in handled)
            if handled and tools_refused:
                finish, returned = FinishReason.TOOL_LIMIT, others
                action = "tool_limit"
            else:
                ran = False
                for call in handled:
                    if rounds >= max_tool_rounds:
                        tools_refused = True
                        result = ToolResult(
                            name=call.recipient,
                            content=(
                                f"Error: not run: this turn already used its {max_tool_rounds} "
                                "tool calls. Answer the user now with what you have."
                            ),
                            error=True,
                        )
                    else:
                        assert tools is not None
                        result = tools.execute(call)
                        ran = True
                    replies.append(adapter.tool_result_message(call, result))
                    yield ToolResultEvent(call, result)
                rounds += ran
                if others:
                    finish, returned = FinishReason.TOOL_CALLS, others
                    action = "return_tool_calls"
                elif _is_cancelled(cancel):
                    finish = FinishReason.CANCELLED
                    action = "cancelled"
                else:
                    action = "tool_round"
            if debug is not None:
                debug.completion(
                    attempt=attempt,
                    tokens=completion,
                    decode=adapter.decode,
                    output=output,
                    stop_reason=stop_reason,
                    decision={**trace, "action": action},
                )
            if action == "tool_round":
                continue
            break
        finish, truncated = _finish(output, stop_reason)
        if debug is not None:
            debug.completion(
                attempt=attempt,
                tokens=completion,
                decode=adapter.decode,
                output=output,
                stop_reason=stop_reason,
                decision={**trace, "action": "accept", "finish_reason": finish.value},
            )
        break

    new_replies = replies[replies_start:]
    final = next(
        (
            m.text
            for m in reversed(new_replies)
            if m.role is Role.ASSISTANT and m.channel in (None, "final") and not m.recipient
        ),
        "",
    )
    analysis = "\n\n".join(
        m.text
        for m in new_replies
        if m.role is Role.ASSISTANT and m.channel == "analysis" and not m.recipient
    )
    result = TurnResult(
        turn=Turn(current.user, tuple(replies)),
        final=final,
        finish_reason=finish,
        analysis=analysis,
        tool_calls=returned,
        truncated=truncated,
        retries=tuple(retries),
        tool_rounds=rounds,
        generations=tuple(generations),
        hyperparameters=hyperparameters_of(cfg),
        dropped_turns=dropped,
        prompt_tokens=prompt_len,
        total_s=time.perf_counter() - started,
        user_is_new=user_is_new,
        replies_start=replies_start,
    )
    if log is not None:
        from .recording import record_turn

        record_turn(log, result)
    yield TurnDone(result)


def run_chat_turn(
    generator: TokenStreamer,
    adapter: ChatAdapter,
    turn: str | Message | Turn,
    *,
    history: Sequence[Turn] = (),
    config: PromptConfig,
    tools: ToolRegistry | None = None,
    function_tools: Sequence[FunctionTool] = (),
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS,
    context_length: int | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    debug: DebugWriter | None = None,
    log: ChatLog | None = None,
    on_event: Callable[[TurnEvent], None] | None = None,
) -> TurnResult:
    """`stream_chat_turn` to the end: each event goes to `on_event`; returns the result."""
    result: TurnResult | None = None
    for event in stream_chat_turn(
        generator,
        adapter,
        turn,
        history=history,
        config=config,
        tools=tools,
        function_tools=function_tools,
        policy=policy,
        max_tool_rounds=max_tool_rounds,
        context_length=context_length,
        cancel=cancel,
        debug=debug,
        log=log,
    ):
        if on_event is not None:
            on_event(event)
        if isinstance(event, TurnDone):
            result = event.result
    assert result is not None, "stream_chat_turn always ends with TurnDone"
    return result
