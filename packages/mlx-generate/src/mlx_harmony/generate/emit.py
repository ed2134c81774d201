"""From generated token ids to `StreamEvent`s: stop tokens, stop strings, text, length, loops.

One generation's bookkeeping, shared by the single-stream loop and the batch generator, so
both end a generation for the same reasons and hand out the same text.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx

from .detokenizer import make_detokenizer
from .loop_detection import LoopDetectionMode, LoopDetector, make_loop_detector
from .stats import GenerationStats, StopReason
from .stop_strings import StopStringMatcher

__all__ = ["StreamEvent", "TokenEvents"]


@dataclass(slots=True)
class StreamEvent:
    """One generated token and the text it completes; the last event of a generation carries
    `stop_reason` and `stats` (and `token` is None when it ended without a new token:
    cancellation)."""

    token: int | None
    text: str = ""
    logprobs: mx.array | None = None
    stop_reason: StopReason | None = None
    stats: GenerationStats | None = None


class TokenEvents:
    """Feed generated tokens with `add`; it returns the event to hand out, or None once the
    generation has ended (then `reason` says why and `final` builds the last event)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        stop_tokens: Iterable[int],
        stop_strings: Sequence[str] = (),
        detokenize: bool = True,
        loop_detection: LoopDetector | LoopDetectionMode | str = LoopDetectionMode.OFF,
        max_tokens: int = 256,
    ) -> None:
        self.stops = frozenset(int(t) for t in stop_tokens)
        self.matcher = StopStringMatcher(stop_strings) if stop_strings else None
        if (detokenize or self.matcher is not None) and tokenizer is None:
            raise ValueError(
                "text deltas and stop strings need a tokenizer; pass one, or detokenize=False "
                "without stop strings"
            )
        self.detokenizer = (
            make_detokenizer(tokenizer) if (detokenize or self.matcher is not None) else None
        )
        self.detector = (
            loop_detection
            if isinstance(loop_detection, LoopDetector)
            else make_loop_detector(loop_detection)
        )
        self.max_tokens = max_tokens
        self.generated: list[int] = []
        """Every token the model produced, a cancelled one included."""
        self.reason: StopReason | None = None
        self.stop_token: int | None = None
        self.stop_string: str | None = None
        self._interval = self.detector.interval
        self._next_check = self._interval if self._interval else -1
        self._last: StreamEvent | None = None
        self._held_back = 0

    @property
    def handed_out(self) -> int:
        """Completion tokens: those handed out (a cancelled token never is)."""
        return len(self.generated) - self._held_back

    def add(self, token: int, scores: mx.array | None = None) -> StreamEvent | None:
        generated = self.generated
        generated.append(token)
        n = len(generated)
        text = ""
        reason = None
        if token in self.stops:
            reason = StopReason.STOP
            self.stop_token = token
        else:
            if self.detokenizer is not None:
                text = self.detokenizer.add_token(token)
                if self.matcher is not None:
                    text, self.stop_string = self.matcher.feed(text)
                    if self.stop_string is not None:
                        reason = StopReason.STOP
            if reason is None:
                if n == self.max_tokens:
                    reason = StopReason.LENGTH
                elif n == self._next_check:
                    self._next_check += self._interval
                    if self.detector(generated):
                        reason = StopReason.LOOP_DETECTED
        event = StreamEvent(token, text, scores)
        if reason is None:
            return event
        self.reason = reason
        self._last = event
        return None

    def cancel(self, token: int | None = None) -> None:
        """End as cancelled; `token` was produced (and fed to the cache) but is not handed out."""
        if token is not None:
            self.generated.append(token)
            self._held_back = 1
        self.reason = StopReason.CANCELLED
        self._last = None

    def final(self, stats: GenerationStats | None = None) -> StreamEvent:
        """The last event: the last token (None when cancelled) with the held-back text."""
        if self.reason is None:
            self.reason = StopReason.CANCELLED
        last = self._last
        text = last.text if last is not None else ""
        if self.stop_string is None and self.detokenizer is not None:
            tail = self.detokenizer.finalize()
            if self.matcher is not None:
                tail, self.stop_string = self.matcher.feed(tail)
                if self.stop_string is None:
                    tail += self.matcher.flush()
                elif self.reason is not StopReason.STOP:
                    self.reason = StopReason.STOP
            text += tail
        if last is None or self.reason is StopReason.CANCELLED:
            return StreamEvent(None, text, None, self.reason, stats)
        return StreamEvent(last.token, text, last.logprobs, self.reason, stats)
