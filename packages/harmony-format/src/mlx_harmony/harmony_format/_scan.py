"""A tolerant scanner over completion token ids: the parser of last resort.

It follows openai-harmony's grammar where openai-harmony accepts the input (same header rules,
special tokens inside content kept as their text, incomplete UTF-8 replaced at a message's end)
and never raises where openai-harmony would: text after ``<|end|>`` starts a new assistant
message, a header cut short by a stop token becomes content, token ids the tokenizer does not
know become U+FFFD.
"""

from __future__ import annotations

import codecs
from typing import NamedTuple

from openai_harmony import HarmonyEncoding

from .encoding import CALL, CHANNEL, CONSTRAIN, END, MESSAGE, RETURN, START, VOCAB_SIZE
from .messages import Message, Role

_EXPECT, _HEADER, _CONTENT = 0, 1, 2
_TERMINATORS = frozenset({END, RETURN, CALL})
_ROLES = {role.value: role for role in Role}
_CHANNEL_MARK = "<|channel|>"
_CONSTRAIN_MARK = "<|constrain|>"


class Header(NamedTuple):
    role: Role
    name: str | None
    channel: str | None
    recipient: str | None
    content_type: str | None


class Piece(NamedTuple):
    """New text of message ``index``."""

    index: int
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
        end = next((i for i, c in enumerate(after) if c.isspace() or c == "<"), len(after))
        channel = after[:end] or None
        text = text[:at] + after[end:]
    text = text.strip()
    if _CONSTRAIN_MARK in text:
        text = text.replace(_CONSTRAIN_MARK, " " + _CONSTRAIN_MARK).strip()
    parts = text.split()

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
    return Header(role, name, channel, recipient, content_type), " ".join(parts)


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

    def feed(self, token: int) -> Piece | None:
        state = self._state
        if token in _TERMINATORS:
            if state == _CONTENT:
                return self._close_content()
            if state == _HEADER:
                return self._close_header()
            return None
        if state == _CONTENT:
            return self._content(token)
        if state == _HEADER:
            if token == MESSAGE:
                self._open_content()
            elif 0 <= token < VOCAB_SIZE:  # like openai-harmony, even <|start|> joins the header
                self._header_ids.append(token)
            return None
        # between messages
        if token == START:
            self._state, self._role = _HEADER, None
            self._header_ids.clear()
        elif token in (CHANNEL, CONSTRAIN):  # a header that forgot <|start|>assistant
            self._state, self._role = _HEADER, Role.ASSISTANT
            self._header_ids[:] = [token]
        elif token == MESSAGE:
            self._begin(DEFAULT_HEADER)
        else:  # text after <|end|>: a new assistant message without a header
            self._begin(DEFAULT_HEADER)
            return self._content(token)
        return None

    def close(self) -> Piece | None:
        """End of input: close the message in progress."""
        if self._state == _CONTENT:
            return self._close_content()
        if self._state == _HEADER:
            return self._close_header()
        return None

    # -- internals ---------------------------------------------------------------------------

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

    def _content(self, token: int) -> Piece | None:
        if 0 <= token < VOCAB_SIZE:
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

    def _close_content(self) -> Piece | None:
        tail = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._chunks.append(tail)
        index = len(self.messages)
        self.messages.append(_message(self.header, "".join(self._chunks)))
        self._chunks = []
        self._state = _EXPECT
        return Piece(index, self.header, tail) if tail else None
