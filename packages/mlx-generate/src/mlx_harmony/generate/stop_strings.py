"""Stop strings on streamed text, including ones that span several tokens.

Text that might be the start of a stop string is held back until it is clear, so a caller never
sees part of a stop string; the stop string itself is not part of the output (OpenAI's rule).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopStringMatcher"]


class StopStringMatcher:
    """Feed text deltas; get back what is safe to show and the stop string once one appears."""

    __slots__ = ("_pending", "_stops")

    def __init__(self, stop_strings: Sequence[str]) -> None:
        if isinstance(stop_strings, str):
            stop_strings = [stop_strings]
        stops = tuple(dict.fromkeys(stop_strings))
        for stop in stops:
            if not isinstance(stop, str) or not stop:
                raise ValueError(f"stop strings must be non-empty strings, got {stop!r}")
        self._stops = stops
        self._pending = ""

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self._stops

    def feed(self, text: str) -> tuple[str, str | None]:
        """(text to emit, the stop string that matched or None)."""
        buf = self._pending + text
        best: tuple[int, int] | None = None
        matched: str | None = None
        for stop in self._stops:
            i = buf.find(stop)
            # The match a character-by-character stream completes first: earliest end, then
            # earliest start. This makes the result independent of how text is split.
            if i >= 0 and (best is None or (i + len(stop), i) < best):
                best, matched = (i + len(stop), i), stop
        if best is not None:
            self._pending = ""
            return buf[: best[1]], matched
        keep = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:k]):
                    keep = k
                    break
        if keep:
            self._pending = buf[-keep:]
            return buf[:-keep], None
        self._pending = ""
        return buf, None

    def flush(self) -> str:
        """The held-back text, when the stream ends for another reason."""
        pending, self._pending = self._pending, ""
        return pending
