"""A tolerant scanner over completion token ids: the parser of last resort.

It follows openai-harmony's grammar where openai-harmony accepts the input (same header rules,
incomplete UTF-8 replaced at a message's end) and never raises where openai-harmony would: text
after ``<|end|>`` starts a new assistant message, a header cut short by a stop token becomes
content, token ids the tokenizer does not know become U+FFFD.

Special-token text never becomes content. A special token out of place ends or is skipped as the
structure says: ``<|start|>`` always starts a new header (ending the message or header in
progress), ``<|channel|>`` and ``<|constrain|>`` inside content end the message and start a new
assistant header, and every other special token (a stray ``<|message|>``, ``<|endoftext|>``, a
reserved id) is skipped. ``first_out_of_place`` finds such a token, so that callers use
openai-harmony's parsers (which would print the token's text) only on input without one.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from typing import NamedTuple

from openai_harmony import HarmonyEncoding

from .encoding import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    FIRST_SPECIAL,
    MESSAGE,
    RETURN,
    START,
    VOCAB_SIZE,
)
from .messages import Message, Role

_EXPECT, _HEADER, _CONTENT = 0, 1, 2
_TERMINATORS = frozenset({END, RETURN, CALL})
_ROLES = {role.value: role for role in Role}
_CHANNEL_MARK = "<|channel|>"
_CONSTRAIN_MARK = "<|constrain|>"
_OPENERS = frozenset({CHANNEL, CONSTRAIN})  # header tokens that may also open a header
# Rust's (and so openai-harmony's) whitespace: Python's str.isspace() adds U+001C..U+001F.
_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_SPACES = re.compile(f"[{_WHITESPACE}]+")


class Header(NamedTuple):
    role: Role
    name: str | None
    channel: str | None
    recipient: str | None
    content_type: str | None


class Piece(NamedTuple):
    """New text of message ``index``."""

    index: int  # pyright: ignore[reportIncompatibleMethodOverride]  # a field, as NamedTuple allows
    header: Header
    text: str


DEFAULT_HEADER = Header(Role.ASSISTANT, None, None, None, None)


def parse_header(text: str, role: Role | None, *, complete: bool) -> tuple[Header, str]:
    """openai-harmony's ``parse_header_from_string``, minus its errors; returns leftover text.

    ``complete`` says the header ended with ``<|message|>``; otherwise (a stop token cut it)
    whatever is not role or channel is content, as in openai-harmony's non-strict mode.
    """
    channel = None
    at = text.find(_CHANNEL_MARK)
    if at >= 0:
        after = text[at + len(_CHANNEL_MARK) :]
        end = next((i for i, c in enumerate(after) if c in _WHITESPACE or c == "<"), len(after))
        channel = after[:end] or None
        text = text[:at] + after[end:]
    text = text.strip(_WHITESPACE)
    if _CONSTRAIN_MARK in text:
        text = text.replace(_CONSTRAIN_MARK, " " + _CONSTRAIN_MARK).strip(_WHITESPACE)
    parts = [part for part in _SPACES.split(text) if part]

    name = None
    if role is None:
        first = parts[0] if parts else ""
        if first in _ROLES:
            role = _ROLES[first]
        elif first and (len(parts) > 1 or first.startswith("to=") or "." in first):
            role, name = Role.TOOL, parts.pop(0)  # an unknown role is a tool's name
        else:
            role = Role.ASSISTANT
    if parts and parts[0] == role.value:
        parts.pop(0)
    if role is Role.TOOL and name is None:
        name = role.value  # "<|start|>tool": the tool has no other name

    recipient = content_type = None
    if complete and parts:
        count = len(parts)
        last = parts.pop()
        if last.startswith("to="):
            recipient = last[3:] or None
        elif count == 1:  # openai-harmony 0.0.8: a lone part is the recipient
            recipient = last
        else:
            content_type = last
            if parts:
                raw = parts.pop()
                recipient = (raw[3:] if raw.startswith("to=") else raw) or None
        parts = []  # openai-harmony rejects leftovers; we drop them
    # Leftover header text becomes content: never with a marker in it.
    leftover = " ".join(p for p in parts if _CHANNEL_MARK not in p and _CONSTRAIN_MARK not in p)
    return Header(role, name, channel, recipient, content_type), leftover


class Layout:
    """Where the next token falls (between messages, header, content), to spot a special
    token out of place: openai-harmony would print its text, so the scanner must parse.

    A header cut by a stop token becomes content; openai-harmony keeps the text of a
    ``<|constrain|>`` or of a second ``<|channel|>`` in it, so such a cut header is out of place.
    """

    __slots__ = ("marks", "state")

    def __init__(self, *, headerless: bool) -> None:
        self.state = _HEADER if headerless else _EXPECT
        self.marks = 0  # <|channel|> counts 1, <|constrain|> 2: a cut header keeps marks > 1

    def step(self, token: int) -> bool:
        """Take one token; False when it is out of place (or not a known id)."""
        state = self.state
        if 0 <= token < FIRST_SPECIAL:
            if state == _EXPECT:
                self.state = _CONTENT  # text after <|end|>
            return True
        if token in _TERMINATORS:
            self.state = _EXPECT
            return state != _HEADER or self.marks < 2
        if state == _HEADER:
            if token == MESSAGE:
                self.state = _CONTENT
                return True
            self.marks += 1 if token == CHANNEL else 2
            return token in _OPENERS
        if state == _EXPECT and token == START:
            self.state, self.marks = _HEADER, 0
            return True
        return False


def first_out_of_place(tokens: Sequence[int], *, headerless: bool) -> int | None:
    """The index of the first token ``Layout`` rejects, or None."""
    layout = Layout(headerless=headerless)
    step = layout.step
    for index, token in enumerate(tokens):
        if not step(token):
            return index
    return None


def _message(header: Header, text: str) -> Message:
    return Message(
        header.role,
        text,
        channel=header.channel,
        recipient=header.recipient,
        content_type=header.content_type,
        name=header.name,
    )


class Scanner:
    """Feed token ids one at a time; completed messages collect in ``messages``.

    ``headerless=True`` means the input starts inside an assistant header (a completion after
    ``<|start|>assistant``); otherwise it starts before a ``<|start|>``.
    """

    def __init__(self, encoding: HarmonyEncoding, *, headerless: bool) -> None:
        self._enc = encoding
        self.messages: list[Message] = []
        self._state = _HEADER if headerless else _EXPECT
        self._role: Role | None = Role.ASSISTANT if headerless else None
        self._header_ids: list[int] = []
        self.header: Header = DEFAULT_HEADER
        self._chunks: list[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @property
    def in_content(self) -> bool:
        return self._state == _CONTENT

    def current_text(self) -> str:
        return "".join(self._chunks) if self._state == _CONTENT else ""

    def feed(self, token: int, text: str | None = None) -> Piece | None:
        """Take one token; ``text`` is its text as the generator decoded it (then content
        is not decoded again; a special token inside content is its marker, as decoded)."""
        state = self._state
        if token in _TERMINATORS:
            if state == _CONTENT:
                return self._close_content(self._held(token, text))
            if state == _HEADER:
                return self._close_header()
            return None
        special = FIRST_SPECIAL <= token < VOCAB_SIZE
        if state == _CONTENT:
            return self._stray(token, text) if special else self._content(token, text)
        if state == _HEADER:
            if token == MESSAGE:
                self._open_content()
            elif token == START:  # a new header: the one in progress is abandoned
                self._role = None
                self._header_ids.clear()
            elif token in _OPENERS or 0 <= token < FIRST_SPECIAL:
                self._header_ids.append(token)  # other special and unknown ids are left out
            return None
        # between messages
        if token == START:
            self._state, self._role = _HEADER, None
            self._header_ids.clear()
        elif token in _OPENERS:  # a header that forgot <|start|>assistant
            self._open_header(token)
        elif token == MESSAGE:
            self._begin(DEFAULT_HEADER)
        elif not special:  # text after <|end|>: a new assistant message without a header
            self._begin(DEFAULT_HEADER)
            return self._content(token, text)
        return None  # any other special token is skipped

    def close(self) -> Piece | None:
        """End of input: close the message in progress."""
        if self._state == _CONTENT:
            return self._close_content()
        if self._state == _HEADER:
            return self._close_header()
        return None

    # -- internals ---------------------------------------------------------------------------

    def _open_header(self, token: int) -> None:
        self._state, self._role = _HEADER, Role.ASSISTANT
        self._header_ids[:] = [token]

    def _stray(self, token: int, text: str | None) -> Piece | None:
        """A special token inside content: ``<|start|>``, ``<|channel|>`` and ``<|constrain|>``
        end the message and start a header, any other is skipped; its text is never content.

        Like a streaming detokenizer, a character cut by the special token becomes U+FFFD.
        """
        held = self._held(token, text)
        if token == START or token in _OPENERS:
            piece = self._close_content(held)
            if token == START:
                self._state, self._role = _HEADER, None
                self._header_ids.clear()
            else:
                self._open_header(token)
            return piece
        tail = self._decoder.decode(b"", final=True) if held is None else held
        self._decoder.reset()
        if not tail:
            return None
        self._chunks.append(tail)
        return Piece(len(self.messages), self.header, tail)

    def _begin(self, header: Header) -> None:
        self._state = _CONTENT
        self.header = header
        self._chunks = []
        self._decoder.reset()

    def _open_content(self) -> None:
        text = self._enc.decode(self._header_ids)
        header, _ = parse_header(text, self._role, complete=True)
        self._header_ids.clear()
        self._begin(header)

    def _close_header(self) -> Piece | None:
        self._state = _EXPECT
        if not self._header_ids:
            return None
        header, text = parse_header(self._enc.decode(self._header_ids), self._role, complete=False)
        self._header_ids.clear()
        index = len(self.messages)
        self.messages.append(_message(header, text))
        return Piece(index, header, text) if text else None

    def _content(self, token: int, given: str | None = None) -> Piece | None:
        if given is not None:
            text = given
        elif 0 <= token < VOCAB_SIZE:
            data = self._enc.decode([token], errors="surrogateescape").encode(
                "utf-8", "surrogateescape"
            )
            text = self._decoder.decode(data)
        else:
            text = self._decoder.decode(b"", final=True) + "\ufffd"
            self._decoder.reset()
        if not text:
            return None
        self._chunks.append(text)
        return Piece(len(self.messages), self.header, text)

    def _held(self, token: int, text: str | None) -> str | None:
        """The text a special token's given text carries before its own marker."""
        if text is None:
            return None
        return text.removesuffix(self._enc.decode([token]))

    def _close_content(self, given: str | None = None) -> Piece | None:
        # Given text: what the generator held back (an incomplete character) comes with the end.
        tail = self._decoder.decode(b"", final=True) if given is None else given
        self._decoder.reset()
        self._chunks.append(tail)
        index = len(self.messages)
        self.messages.append(_message(self.header, "".join(self._chunks)))
        self._chunks = []
        self._state = _EXPECT
        return Piece(index, self.header, tail) if tail else None
