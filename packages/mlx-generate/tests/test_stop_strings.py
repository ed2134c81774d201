from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlx_harmony.generate import StopStringMatcher


def _feed_all(matcher: StopStringMatcher, pieces: list[str]) -> tuple[str, str | None]:
    out = []
    for piece in pieces:
        text, stop = matcher.feed(piece)
        out.append(text)
        if stop is not None:
            return "".join(out), stop
    return "".join(out) + matcher.flush(), None


def test_a_stop_string_across_pieces_stops_before_it() -> None:
    matcher = StopStringMatcher(["END"])
    assert _feed_all(matcher, ["Hello E", "N", "D and more"]) == ("Hello ", "END")


def test_a_possible_start_is_held_back_then_released() -> None:
    matcher = StopStringMatcher(["END"])
    assert matcher.feed("Hello EN") == ("Hello ", None)
    assert matcher.feed("ough") == ("ENough", None)


def test_the_stop_string_completed_first_wins() -> None:
    assert _feed_all(StopStringMatcher(["world", "lo w"]), ["hello world"]) == ("hel", "lo w")
    # "ab" and "b" both end at the same character: the longer one started first.
    assert _feed_all(StopStringMatcher(["b", "ab"]), ["xab"]) == ("x", "ab")
    assert _feed_all(StopStringMatcher(["abc", "b"]), ["xabc"]) == ("xa", "b")


def test_held_text_is_flushed_at_the_end() -> None:
    matcher = StopStringMatcher(["###"])
    assert _feed_all(matcher, ["a #", "#"]) == ("a ##", None)


def test_empty_stop_strings_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(["ok", ""])


@given(
    st.text(alphabet="abc", max_size=40),
    st.lists(st.text(alphabet="abc", min_size=1, max_size=4), min_size=1, max_size=3),
    st.lists(st.integers(1, 5), max_size=20),
)
def test_streaming_equals_cutting_the_whole_text(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    pieces, i = [], 0
    for c in cuts:
        pieces.append(text[i : i + c])
        i += c
    pieces.append(text[i:])
    got = _feed_all(StopStringMatcher(stops), pieces)
    hits = [(text.find(s) + len(s), text.find(s), s) for s in set(stops) if s in text]
    if hits:
        # What a character-by-character stream sees complete first.
        _, start, stop = min(hits)
        assert got == (text[:start], stop)
    else:
        assert got == (text, None)
