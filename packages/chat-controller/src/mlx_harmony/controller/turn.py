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
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from mlx_harmony.harmony_format import FunctionTool, Message, Role, ToolCall
from mlx_harmony.sampling import SamplingParams
from mlx_harmony.tools import ToolDeclarations, ToolRegistry, ToolResult

from .adapters import ChatAdapter, TurnOutput
from .config import PromptConfig
from .context import ContextBudget, fit_context
from .debug import DebugWriter
from .events import (
    ContextTrimmed,
    RetryEvent,
    StatsEvent,
    ToolCallEvent,
    ToolResultEvent,
    TurnDone,
    TurnEvent,
)
from .recording import record_turn
from .retries import DEFAULT_RETRY_POLICY, RetryDecision, RetryPolicy, decide_retry, looks_complete
from .turns import (
    FinishReason,
    GenerationInfo,
    RetryRecord,
    Turn,
    TurnResult,
    as_turn,
    timing_line,
)

if TYPE_CHECKING:
    from mlx_harmony.chat_history import ChatLog
    from mlx_harmony.generate import StreamEvent

__all__ = [
    "DEFAULT_MAX_TOOL_ROUNDS",
    "TokenStreamer",
    "hyperparameters_of",
    "run_chat_turn",
    "stream_chat_turn",
    "with_xtc_special_tokens",
    "xtc_special_tokens",
]

DEFAULT_MAX_TOOL_ROUNDS = 8

Cancel = threading.Event | Callable[[], bool]
"""A cancel flag: an event, or a function that says whether to stop."""


class TokenStreamer(Protocol):
    """What the turn needs from a generator: mlx-generate's `TokenGenerator.stream`.

    `mlx_harmony.controller.testing.ScriptedGenerator` is the test double.
    """

    def stream(
        self,
        *,
        prompt_tokens: Sequence[int],
        sampling: SamplingParams | None = None,
        max_tokens: int = 512,
        stop_tokens: Iterable[int] | None = None,
        stop_strings: Sequence[str] = (),
        cancel: Cancel | None = None,
        loop_detection: str | None = None,
    ) -> Iterator[StreamEvent]: ...


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


def xtc_special_tokens(generator: object, adapter: ChatAdapter) -> tuple[int, ...]:
    """The tokens XTC must never exclude, as mlx-lm's ``generate`` (and mlx-harmony 0.4)
    derive them: the newline's ids, then the end-of-sequence ids (the adapter's stop tokens).
    The newline comes from the generator's tokenizer, else from the Harmony vocabulary."""
    encode: Callable[[str], Sequence[int]] | None = getattr(generator, "encode", None)
    if encode is not None:
        newline = [int(t) for t in encode("\n")]
    else:
        from mlx_harmony.harmony_format import get_encoding

        newline = list(get_encoding().encode("\n"))
    return tuple(dict.fromkeys([*newline, *sorted(adapter.stop_tokens)]))


def with_xtc_special_tokens(
    sampling: SamplingParams, generator: object, adapter: ChatAdapter
) -> SamplingParams:
    """`sampling` with ``xtc_special_tokens`` filled in when XTC is on and none were given."""
    if sampling.xtc_probability <= 0 or sampling.xtc_special_tokens:
        return sampling
    return sampling.updated(xtc_special_tokens=xtc_special_tokens(generator, adapter))


def _is_cancelled(cancel: Cancel | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _cut_at_stop_string(output: TurnOutput, stop_string: str | None) -> TurnOutput:
    """A stop string ends the text before it, in whichever channel the model was writing
    (reasoning included: the engine matches all generated text); token parsers still saw it,
    so cut it off there. Streams agree: `_attempt` drops the parser's catch-up past it."""
    if not stop_string:
        return output
    in_final = stop_string in output.final
    if not in_final and stop_string not in output.analysis:
        return output
    channels = (None, "final") if in_final else ("analysis",)
    messages = list(output.messages)
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m.role is Role.ASSISTANT and m.channel in channels and stop_string in m.text:
            messages[i] = replace(m, content=m.text[: m.text.index(stop_string)])
            del messages[i + 1 :]
            break
    if in_final:
        final = output.final[: output.final.index(stop_string)]
        return replace(output, final=final, messages=tuple(messages), final_closed=True)
    analysis = output.analysis[: output.analysis.index(stop_string)]
    return replace(output, analysis=analysis, messages=tuple(messages))


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


@dataclass
class _TurnState:
    """What one turn carries from one generation to the next."""

    generator: TokenStreamer
    adapter: ChatAdapter
    cfg: PromptConfig
    current: Turn
    history: tuple[Turn, ...]
    tools: ToolRegistry | None
    """The built-in tools, or None when this turn runs none."""
    declarations: ToolDeclarations
    function_tools: Sequence[FunctionTool]
    policy: RetryPolicy
    max_tool_rounds: int
    budget: ContextBudget
    cancel: Cancel | None
    debug: DebugWriter | None
    user_is_new: bool
    started: float = field(default_factory=time.perf_counter)
    replies: list[Message] = field(default_factory=list)
    replies_start: int = 0
    retries: list[RetryRecord] = field(default_factory=list)
    generations: list[GenerationInfo] = field(default_factory=list)
    kept: list[Message] = field(default_factory=list)
    """Reasoning a no_final retry keeps."""
    decision: RetryDecision | None = None
    """The retry the next attempt runs, if any."""
    rounds: int = 0
    attempt: int = 0
    tools_refused: bool = False
    dropped_reported: int = 0
    dropped: int = 0
    prompt_len: int = 0
    returned: tuple[ToolCall, ...] = ()
    finish: FinishReason = FinishReason.STOP
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class _Attempt:
    """One generation and what the turn read from it."""

    completion: list[int]
    output: TurnOutput
    stop_reason: str
    max_tokens: int
    sampling: SamplingParams
    force_final: bool
    sampling_overrides: dict[str, Any]


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
    cancel: Cancel | None = None,
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
    cfg = config.effective()
    current = as_turn(turn)
    active = tools if tools is not None and bool(tools) and adapter.supports_tools else None
    state = _TurnState(
        generator=generator,
        adapter=adapter,
        cfg=cfg,
        current=current,
        history=tuple(history),
        tools=active,
        declarations=active.declarations() if active is not None else ToolDeclarations(),
        function_tools=function_tools,
        policy=policy,
        max_tool_rounds=max_tool_rounds,
        budget=ContextBudget.from_config(cfg, context_length=context_length),
        cancel=cancel,
        debug=debug,
        user_is_new=not isinstance(turn, Turn) or not turn.replies,
        replies=list(current.replies),
        replies_start=len(current.replies),
    )
    if debug is not None:
        debug.begin_turn()
    while True:
        attempt = yield from _generate(state)
        if (yield from _retry(state, attempt)):
            continue
        if not (yield from _accept(state, attempt)):
            break
    result = _turn_result(state)
    if debug is not None and cfg.log_timing_stats:
        timing = result.timing()
        debug.timing(timing, timing_line(timing))
    if log is not None:
        record_turn(log, result)
    yield TurnDone(result)


def _generate(state: _TurnState) -> Generator[TurnEvent, None, _Attempt]:
    """Render the prompt that fits, stream one generation, read it."""
    state.attempt += 1
    cfg, adapter, decision = state.cfg, state.adapter, state.decision
    user = state.current.user
    if decision is not None and decision.instruction:
        user = Message.user(f"{user.text}\n\n{decision.instruction}")
    force_final = (decision is not None and decision.force_final) or state.tools_refused
    working = Turn(user, (*state.replies, *state.kept))

    def render(turns: Sequence[Turn]) -> list[int]:
        return adapter.render(
            turns,
            config=cfg,
            tools=state.declarations,
            function_tools=state.function_tools,
            force_final=force_final,
        )

    prompt, state.dropped = fit_context(render, [*state.history, working], budget=state.budget)
    state.prompt_len = len(prompt)
    if state.dropped and state.dropped != state.dropped_reported:
        state.dropped_reported = state.dropped
        yield ContextTrimmed(state.dropped, state.prompt_len, state.budget.limit or 0)
    wanted = decision.max_tokens if decision is not None else cfg.max_tokens
    max_tokens = state.budget.max_new_tokens(state.prompt_len, wanted)
    sampling = with_xtc_special_tokens(cfg.sampling_params(), state.generator, adapter)
    if decision is not None and decision.sampling:
        sampling = sampling.updated(**decision.sampling)
    if state.debug is not None:
        state.debug.prompt(attempt=state.attempt, tokens=prompt, decode=adapter.decode)

    parser = adapter.make_stream_parser(force_final=force_final)
    completion: list[int] = []
    stop_reason = "stop"
    info: GenerationInfo | None = None
    for event in state.generator.stream(
        prompt_tokens=prompt,
        sampling=sampling,
        max_tokens=max_tokens,
        stop_tokens=adapter.stop_tokens,
        stop_strings=tuple(cfg.end_token_strings),
        cancel=state.cancel,
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
    flushed = parser.flush()
    output = parser.finish()
    if info is None:
        info = GenerationInfo(state.prompt_len, len(completion), stop_reason=stop_reason)
    if info.stop_string is None:
        # Past a stop string the flush is the parser catching up on the tokens' text, which
        # the engine held back: the stop string itself and what followed it.
        yield from flushed
    output = _cut_at_stop_string(output, info.stop_string)
    state.generations.append(info)
    yield StatsEvent(info, state.attempt, state.rounds)
    return _Attempt(
        completion=completion,
        output=output,
        stop_reason=stop_reason,
        max_tokens=max_tokens,
        sampling=sampling,
        force_final=force_final,
        sampling_overrides=dict(decision.sampling) if decision is not None else {},
    )


def _retry(state: _TurnState, attempt: _Attempt) -> Generator[TurnEvent, None, bool]:
    """Throw the attempt away when `decide_retry` says so; True when it did. A stop string
    ends the turn where it is (the client asked for that), so it is never retried."""
    if state.generations and state.generations[-1].stop_string is not None:
        return False
    budget = state.budget
    room = budget.max_new_tokens(state.prompt_len, None) if budget.window is not None else None
    new = decide_retry(
        attempt.output,
        attempt.stop_reason,
        max_tokens=attempt.max_tokens,
        previous=[r.reason for r in state.retries],
        sampling=attempt.sampling,
        policy=state.policy,
        max_tokens_cap=room,
    )
    if new is None:
        return False
    state.retries.append(
        RetryRecord(
            attempt=state.attempt,
            reason=new.reason,
            stop_reason=attempt.stop_reason,
            completion_tokens=len(attempt.completion),
            max_tokens=new.max_tokens,
            detail=new.detail,
            instruction=new.instruction,
            sampling=dict(new.sampling),
        )
    )
    _debug_completion(state, attempt, action="retry", retry=new.to_dict())
    yield RetryEvent(state.attempt + 1, new.reason, new.detail, new.max_tokens, dict(new.sampling))
    state.kept = [*state.kept, *_analysis_messages(attempt.output)] if new.keep_analysis else []
    state.decision = new
    return True


def _accept(state: _TurnState, attempt: _Attempt) -> Generator[TurnEvent, None, bool]:
    """Keep the attempt; run its built-in tool calls. True when the turn goes on (a tool
    round), False when it is over."""
    state.replies.extend(state.kept)
    state.replies.extend(attempt.output.messages)
    state.kept, state.decision = [], None
    output = attempt.output
    if output.called_tool and output.tool_calls:
        action = yield from _run_tools(state, output.tool_calls)
        _debug_completion(state, attempt, action=action)
        return action == "tool_round"
    state.finish, state.truncated = _finish(output, attempt.stop_reason)
    _debug_completion(state, attempt, action="accept", finish_reason=state.finish.value)
    return False


def _run_tools(state: _TurnState, calls: Sequence[ToolCall]) -> Generator[TurnEvent, None, str]:
    """Run the calls the built-in tools handle (refusing them past ``max_tool_rounds``) and
    return the others to the caller; the action taken, for the debug trace."""
    tools = state.tools
    handled = [c for c in calls if tools is not None and tools.handles(c.recipient)]
    others = tuple(c for c in calls if c not in handled)
    for call in calls:
        yield ToolCallEvent(call, handled=call in handled)
    if handled and state.tools_refused:
        state.finish, state.returned = FinishReason.TOOL_LIMIT, others
        return "tool_limit"
    ran = False
    for call in handled:
        if state.rounds >= state.max_tool_rounds:
            state.tools_refused = True
            result = ToolResult(
                name=call.recipient,
                content=(
                    f"Error: not run: this turn already used its {state.max_tool_rounds} "
                    "tool calls. Answer the user now with what you have."
                ),
                error=True,
            )
        else:
            assert tools is not None
            result = tools.execute(call)
            ran = True
        state.replies.append(state.adapter.tool_result_message(call, result))
        yield ToolResultEvent(call, result)
    state.rounds += ran
    if others:
        state.finish, state.returned = FinishReason.TOOL_CALLS, others
        return "return_tool_calls"
    if _is_cancelled(state.cancel):
        state.finish = FinishReason.CANCELLED
        return "cancelled"
    return "tool_round"


def _debug_completion(state: _TurnState, attempt: _Attempt, **decision: object) -> None:
    if state.debug is None:
        return
    state.debug.completion(
        attempt=state.attempt,
        tokens=attempt.completion,
        decode=state.adapter.decode,
        output=attempt.output,
        stop_reason=attempt.stop_reason,
        decision={
            "attempt": state.attempt,
            "tool_round": state.rounds,
            "stop_reason": attempt.stop_reason,
            "max_tokens": attempt.max_tokens,
            "sampling_overrides": attempt.sampling_overrides,
            "force_final": attempt.force_final,
            **decision,
        },
    )


def _turn_result(state: _TurnState) -> TurnResult:
    new_replies = state.replies[state.replies_start :]
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
    return TurnResult(
        turn=Turn(state.current.user, tuple(state.replies)),
        final=final,
        finish_reason=state.finish,
        analysis=analysis,
        tool_calls=state.returned,
        truncated=state.truncated,
        retries=tuple(state.retries),
        tool_rounds=state.rounds,
        generations=tuple(state.generations),
        hyperparameters=hyperparameters_of(state.cfg),
        dropped_turns=state.dropped,
        prompt_tokens=state.prompt_len,
        total_s=time.perf_counter() - state.started,
        user_is_new=state.user_is_new,
        replies_start=state.replies_start,
    )


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
    cancel: Cancel | None = None,
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
