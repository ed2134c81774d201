"""Test doubles shipped with the library, as pydantic-ai ships ``TestModel``.

- `ScriptedGenerator` stands in for mlx-generate's `TokenGenerator`: each ``stream()`` call
  plays the next `Script` (token ids, usually written with harmony-format's
  `render_completion`) as real `StreamEvent`s, honouring ``max_tokens``, stop tokens, stop
  strings and cancellation, and records the call (`GenerationCall`) so tests can check the
  prompt and the settings each attempt used. It simulates the prompt cache's reuse count.
- `FakeBackend` stands in for a whole `ChatBackend`: each turn plays the next `FakeReply` as
  events, so front ends (the CLI, the server's stdio client) are tested without any model.

    generator = ScriptedGenerator([
        Script.harmony("Paris.", analysis="The capital of France."),
    ])
    result = run_chat_turn(generator, HarmonyAdapter(), "Capital of France?", config=PromptConfig())
    assert result.final == "Paris."
    assert "Capital of France?" in generator.calls[0].prompt_text
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from mlx_harmony.harmony_format import (
    STOP_TOKENS,
    FunctionTool,
    Message,
    ToolCall,
    get_encoding,
    render_completion,
)

from .adapters import HarmonyAdapter
from .backend import ChatRequest, TokenCount
from .config import PromptConfig
from .context import ContextBudget
from .events import AnswerDelta, StatsEvent, ThinkingDelta, TurnDone, TurnEvent
from .turn import Cancel, hyperparameters_of
from .turns import FinishReason, GenerationInfo, Turn, TurnResult, as_turn

if TYPE_CHECKING:
    from mlx_harmony.generate import StreamEvent
    from mlx_harmony.sampling import SamplingParams

__all__ = [
    "FakeBackend",
    "FakeReply",
    "GenerationCall",
    "Script",
    "ScriptedGenerator",
    "scripted_turns",
]

ENDOFTEXT = 199999
"""``<|endoftext|>``: the EOS a scripted native model ends with."""


def _encode(text: str) -> list[int]:
    return list(get_encoding().encode(text, allowed_special="all"))


@dataclass(frozen=True, slots=True)
class Script:
    """One scripted generation: the tokens the model "writes", and how it ends.

    ``stop_reason=None`` ends with ``stop`` when a stop token comes and ``length`` when the
    tokens run out without one; set it to ``"loop_detected"`` or ``"cancelled"`` to end so
    once the tokens are played. ``max_tokens`` always wins: a longer script is cut there.
    """

    tokens: tuple[int, ...]
    stop_reason: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(int(t) for t in self.tokens))
        if self.stop_reason not in (None, "stop", "length", "loop_detected", "cancelled"):
            raise ValueError(
                "stop_reason must be None, 'stop', 'length', 'loop_detected' or 'cancelled', "
                f"got {self.stop_reason!r}"
            )

    @classmethod
    def from_messages(
        cls, messages: Sequence[Message], *, stop: bool = True, stop_reason: str | None = None
    ) -> Script:
        """What a Harmony model writes to say `messages` (`render_completion`); ``stop=False``
        leaves out the final stop token, as when max_tokens cut it."""
        return cls(tuple(render_completion(list(messages), stop=stop)), stop_reason)

    @classmethod
    def harmony(
        cls,
        final: str | None = None,
        *,
        analysis: str | None = None,
        call: tuple[str, str] | None = None,
        call_channel: str = "commentary",
        constrain: str | None = "json",
        stop: bool = True,
        stop_reason: str | None = None,
    ) -> Script:
        """A Harmony reply: optional reasoning, then a final answer or a tool call
        ``(recipient, arguments)`` (python calls use ``call_channel="analysis"``,
        ``constrain=None``)."""
        if final is not None and call is not None:
            raise ValueError("a reply ends with either a final answer or a tool call, not both")
        messages: list[Message] = []
        if analysis is not None:
            messages.append(Message.analysis(analysis))
        if call is not None:
            recipient, arguments = call
            messages.append(
                Message.tool_call(recipient, arguments, channel=call_channel, constrain=constrain)
            )
        if final is not None:
            messages.append(Message.assistant(final))
        if not messages:
            return cls((), stop_reason)
        return cls.from_messages(messages, stop=stop, stop_reason=stop_reason)

    @classmethod
    def looping(cls, text: str, *, times: int = 20, channel: str = "analysis") -> Script:
        """A reply stuck repeating `text` on `channel`, ended by the loop detector."""
        header = _encode(f"<|channel|>{channel}<|message|>")
        return cls(tuple(header + _encode(text) * times), "loop_detected")

    @classmethod
    def text(
        cls, text: str, *, eos: int | None = ENDOFTEXT, stop_reason: str | None = None
    ) -> Script:
        """A native (non-Harmony) model's plain reply, ended by `eos` (None: no EOS)."""
        tokens = _encode(text) + ([] if eos is None else [eos])
        return cls(tuple(tokens), stop_reason)


@dataclass(frozen=True, slots=True)
class GenerationCall:
    """What one ``stream()`` call was given."""

    prompt_tokens: tuple[int, ...]
    sampling: SamplingParams | None
    max_tokens: int
    stop_tokens: frozenset[int]
    stop_strings: tuple[str, ...]
    loop_detection: str | None

    @property
    def prompt_text(self) -> str:
        """The prompt as text, special tokens shown (``<|start|>user<|message|>...``)."""
        return get_encoding().decode(list(self.prompt_tokens))


def _cancelled(cancel: Cancel | None) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class ScriptedGenerator:
    """A `TokenGenerator` stand-in that plays `Script`s; see the module docstring.

    ``is_harmony=False`` makes it a native model: `adapter_for` then picks the
    `NativeAdapter`, and ``apply_chat_template`` renders a simple template.
    """

    def __init__(
        self,
        scripts: Iterable[Script] = (),
        *,
        is_harmony: bool = True,
        context_length: int | None = None,
        eos_token_ids: Iterable[int] = (ENDOFTEXT,),
    ) -> None:
        self._scripts: deque[Script] = deque(scripts)
        self.is_harmony = is_harmony
        self.context_length = context_length
        self.eos_token_ids = frozenset(eos_token_ids)
        self.calls: list[GenerationCall] = []
        self.cache_resets = 0
        self._cache: list[int] = []

    def add(self, *scripts: Script) -> None:
        self._scripts.extend(scripts)

    @property
    def remaining(self) -> int:
        return len(self._scripts)

    @property
    def default_stop_tokens(self) -> frozenset[int]:
        if self.is_harmony:
            return frozenset(STOP_TOKENS) | self.eos_token_ids
        return self.eos_token_ids

    def encode(self, text: str) -> list[int]:
        return _encode(text)

    def decode(self, tokens: Sequence[int]) -> str:
        return get_encoding().decode(list(tokens))

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        text = "".join(f"<|start|>{m['role']}<|message|>{m['content']}<|end|>" for m in messages)
        return _encode(text + "<|start|>assistant")

    def reset_cache(self) -> None:
        self.cache_resets += 1
        self._cache = []

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
        **_: object,
    ) -> Iterator[StreamEvent]:
        stops = frozenset(self.default_stop_tokens if stop_tokens is None else stop_tokens)
        prompt = list(prompt_tokens)
        self.calls.append(
            GenerationCall(
                tuple(prompt), sampling, max_tokens, stops, tuple(stop_strings), loop_detection
            )
        )
        if not self._scripts:
            raise AssertionError(
                f"ScriptedGenerator has no script left for call {len(self.calls)}; the prompt "
                f"ended with {self.decode(prompt[-40:])!r}. Add a Script for it."
            )
        return self._play(
            self._scripts.popleft(), prompt, stops, max_tokens, stop_strings, cancel, loop_detection
        )

    def _play(
        self,
        script: Script,
        prompt: list[int],
        stops: frozenset[int],
        max_tokens: int,
        stop_strings: Sequence[str],
        cancel: Cancel | None,
        loop_detection: str | None,
    ) -> Iterator[StreamEvent]:
        from mlx_harmony.generate import CacheReuseMode, GenerationStats, StopReason, StreamEvent

        reused = 0
        for a, b in zip(prompt[:-1], self._cache, strict=False):
            if a != b:
                break
            reused += 1
        generated: list[int] = []
        text = ""
        reason: str | None = None
        stop_token: int | None = None
        stop_string: str | None = None
        last: tuple[int | None, str] = (None, "")
        tokens = script.tokens
        for i, token in enumerate(tokens):
            if _cancelled(cancel):
                reason = "cancelled"
                break
            generated.append(token)
            delta = ""
            if token in stops:
                reason, stop_token = "stop", token
            else:
                full = self.decode([t for t in generated if t not in stops])
                if full.endswith("\ufffd"):
                    full = full[:-1]
                for s in stop_strings:
                    at = full.find(s, max(0, len(text) - len(s) + 1))
                    if at >= 0:
                        full, reason, stop_string = full[:at], "stop", s
                        break
                delta = full[len(text) :] if len(full) >= len(text) else ""
                text = full if len(full) >= len(text) else text
                if reason is None:
                    if len(generated) == max_tokens:
                        reason = "length"
                    elif i == len(tokens) - 1:
                        reason = script.stop_reason or "length"
            if reason is None:
                yield StreamEvent(token, delta)
                continue
            last = (token, delta)
            break
        if reason is None:  # an empty script
            reason = script.stop_reason or "length"
        self._cache = prompt + generated
        n = len(generated)
        stats = GenerationStats.measured(
            prompt_tokens=len(prompt),
            reused_prompt_tokens=reused,
            prefill_s=0.001 * (len(prompt) - reused),
            time_to_first_token_s=0.001 * (len(prompt) - reused) + 0.001,
            completion_tokens=n,
            decode_s=0.001 * (n - 1),
            peak_memory_gb=0.0,
            kv_length=len(prompt) + n,
            stop_reason=StopReason(reason),
            loop_detection=str(getattr(loop_detection, "value", loop_detection or "off")),
            cache_reuse=CacheReuseMode.EXTEND if reused else CacheReuseMode.FRESH,
            stop_token=stop_token,
            stop_string=stop_string,
        )
        token = None if reason == "cancelled" else last[0]
        yield StreamEvent(token, last[1], None, StopReason(reason), stats)


@dataclass(frozen=True, slots=True)
class FakeReply:
    """One scripted turn of a `FakeBackend`: thinking and answer text (streamed word by word),
    how it ends, function calls it returns, or an error it raises instead."""

    answer: str = ""
    thinking: str = ""
    finish_reason: FinishReason = FinishReason.STOP
    tool_calls: tuple[ToolCall, ...] = ()
    truncated: bool = False
    error: Exception | None = None


def _words(text: str) -> Iterator[str]:
    parts = text.split(" ")
    for i, part in enumerate(parts):
        yield part if i == len(parts) - 1 else part + " "


@dataclass
class FakeBackend:
    """A `ChatBackend` that plays `FakeReply`s (or plain answer strings), one per turn, and
    records every request (`requests`), token count and reset (`resets`)."""

    replies: Iterable[FakeReply | str] = ()
    context_length: int | None = None
    requests: list[ChatRequest] = field(default_factory=list)
    resets: int = 0

    def __post_init__(self) -> None:
        self._queue: deque[FakeReply | str] = deque(self.replies)
        self._adapter = HarmonyAdapter()

    def add(self, *replies: FakeReply | str) -> None:
        self._queue.extend(replies)

    def stream_turn(self, request: ChatRequest) -> Iterator[TurnEvent]:
        self.requests.append(request)
        if not self._queue:
            raise AssertionError(
                f"FakeBackend has no reply left for request {len(self.requests)} "
                f"({request.turn.user!r}); add a FakeReply"
            )
        reply = self._queue.popleft()
        if isinstance(reply, str):
            reply = FakeReply(answer=reply)
        if reply.error is not None:
            raise reply.error
        return self._play(reply, request)

    def _play(self, reply: FakeReply, request: ChatRequest) -> Iterator[TurnEvent]:
        for word in _words(reply.thinking) if reply.thinking else ():
            yield ThinkingDelta(word)
        for word in _words(reply.answer) if reply.answer else ():
            yield AnswerDelta(word)
        messages: list[Message] = []
        if reply.thinking:
            messages.append(Message.analysis(reply.thinking))
        messages.extend(call.to_message() for call in reply.tool_calls)
        if reply.answer or not reply.tool_calls:
            messages.append(Message.assistant(reply.answer))
        prompt = len(self._adapter.render([*request.history, request.turn], config=request.config))
        info = GenerationInfo(prompt, len(_encode(reply.thinking + reply.answer)) + 1)
        yield StatsEvent(info, 1, 0)
        turn = as_turn(request.turn)
        start = len(turn.replies)
        yield TurnDone(
            TurnResult(
                turn=Turn(turn.user, (*turn.replies, *messages)),
                final=reply.answer,
                finish_reason=reply.finish_reason,
                analysis=reply.thinking,
                tool_calls=reply.tool_calls,
                truncated=reply.truncated,
                generations=(info,),
                hyperparameters=hyperparameters_of(request.config),
                prompt_tokens=prompt,
                user_is_new=start == 0,
                replies_start=start,
            )
        )

    def count_tokens(
        self,
        turns: Sequence[Turn],
        *,
        config: PromptConfig,
        function_tools: Sequence[FunctionTool] = (),
    ) -> TokenCount:
        tokens = self._adapter.render(list(turns), config=config, function_tools=function_tools)
        budget = ContextBudget.from_config(config, context_length=self.context_length)
        return TokenCount(len(tokens), budget.window, budget.margin)

    def reset(self) -> None:
        self.resets += 1


def scripted_turns(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[Turn, ...]:
    """Turns from (user, answer) pairs, for building histories in tests."""
    items: Iterable[tuple[str, str]] = (
        cast("Mapping[str, str]", pairs).items() if isinstance(pairs, Mapping) else pairs
    )
    return tuple(Turn(Message.user(u), (Message.assistant(a),)) for u, a in items)
