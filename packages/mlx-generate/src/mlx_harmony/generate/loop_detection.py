"""Detect a generation stuck repeating itself, on token ids.

A loop is a periodic tail: the last ``max(min_repeats * p, min_span)`` generated tokens repeat
with some period ``p``. Candidate periods come from the earlier occurrences of the last
``ngram`` tokens within the last ``window`` tokens; the byte-string compares run in C.

- ``cheap`` checks every ``check_every`` tokens and tries one candidate (the nearest earlier
  occurrence, the smallest period): a constant amount of work per check, far below 1% of a
  decode step.
- ``full`` checks after every token and tries every candidate in the window, so it also finds a
  loop whose unit contains the n-gram twice, and finds it on the token that completes it.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LoopDetectionMode", "LoopDetector", "make_loop_detector"]

_ITEM = array("i").itemsize


class LoopDetectionMode(StrEnum):
    OFF = "off"
    CHEAP = "cheap"
    FULL = "full"


@dataclass(frozen=True, slots=True)
class LoopDetector:
    """Finds a periodic tail in a token list; ``interval`` says how often the loop asks."""

    mode: LoopDetectionMode = LoopDetectionMode.CHEAP
    ngram: int = 8
    min_repeats: int = 3
    min_span: int = 48
    window: int = 1024
    check_every: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", LoopDetectionMode(self.mode))
        for name in ("ngram", "min_repeats", "min_span", "window", "check_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.min_repeats < 2:
            raise ValueError(f"min_repeats must be at least 2, got {self.min_repeats}")
        if self.window < max(self.min_span, 2 * self.ngram):
            raise ValueError(
                f"window ({self.window}) must cover min_span ({self.min_span}) and two n-grams "
                f"({2 * self.ngram}); raise window"
            )

    @property
    def interval(self) -> int:
        """Tokens between checks: 0 means never."""
        if self.mode is LoopDetectionMode.OFF:
            return 0
        return 1 if self.mode is LoopDetectionMode.FULL else self.check_every

    def __call__(self, tokens: Sequence[int]) -> bool:
        return self.find_period(tokens) is not None

    def find_period(self, tokens: Sequence[int]) -> int | None:
        """The period of the loop the tokens end in, or None."""
        if self.mode is LoopDetectionMode.OFF or len(tokens) < self.min_span:
            return None
        buf = array("i", tokens[-self.window :]).tobytes()
        size = len(buf)
        gram = buf[size - self.ngram * _ITEM :]
        # Occurrences ending at least one token before the end (the last n-gram itself).
        end = size - _ITEM
        exhaustive = self.mode is LoopDetectionMode.FULL
        while True:
            pos = buf.rfind(gram, 0, end)
            if pos < 0:
                return None
            end = pos + len(gram) - 1
            if pos % _ITEM:
                continue
            period = (size - len(gram) - pos) // _ITEM
            span = max(self.min_repeats * period, self.min_span) * _ITEM
            if span > size:
                return None
            tail = buf[size - span :]
            shift = period * _ITEM
            if tail[shift:] == tail[:-shift]:
                return period
            if not exhaustive:
                return None


def make_loop_detector(
    mode: LoopDetectionMode | str = LoopDetectionMode.CHEAP,
    *,
    ngram: int = 8,
    min_repeats: int = 3,
    min_span: int = 48,
    window: int = 1024,
    check_every: int = 16,
) -> LoopDetector:
    """A loop detector for `mode` ('off', 'cheap' or 'full')."""
    try:
        mode = LoopDetectionMode(mode)
    except ValueError:
        raise ValueError(
            f"loop detection mode must be one of 'off', 'cheap', 'full', got {mode!r}"
        ) from None
    return LoopDetector(
        mode=mode,
        ngram=ngram,
        min_repeats=min_repeats,
        min_span=min_span,
        window=window,
        check_every=check_every,
    )
