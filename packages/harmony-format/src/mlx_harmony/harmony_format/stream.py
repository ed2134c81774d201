"""Parse a completion token by token, for servers and CLIs that show text as it comes.

``StreamParser`` drives openai-harmony's ``StreamableParser`` (non-strict) and tags each piece of
text with its message's channel and recipient. When openai-harmony gives up on malformed input,
or before it would print a special token that is out of place, it replays the tokens through the
same tolerant scanner ``parse_completion`` falls back to and goes on from there, so it never
raises on what the model writes and never shows special-token text.

The end of input can reveal text (an answer written without any header shows up only when the
stream ends), so finish with ``flush()``, which returns the last deltas, then ``finish()``, which
returns the same ``ParsedCompletion`` as ``parse_completion`` over the tokens fed. For every
field, the deltas joined in order equal that field of the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from openai_harmony import StreamableParser

from ._scan import Header, Layout, Scanner
from .encoding import CALL, END, RETURN, START, get_encoding
from .messages import Message, Role
from .parse import ParsedCompletion, _field_of, parse_completion

__all__ = ["StreamDelta", "StreamParser"]

_NONE: tuple[StreamDelta, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """New text of message ``message_index`` of the completion, with that message's header."""

    text: str
    channel: str | None
    recipient: str | None
    message_index: int
    role: Role = Role.ASSISTANT

    @property
    def field(self) -> str | None:
        """``analysis``, ``commentary``, ``final`` or ``tool_call`` (None: not the assistant)."""
        return _field_of(self.role, self.channel, self.recipient)


class StreamParser:
    """Feed generated token ids (and their text) one by one; get ``StreamDelta`` values back.

    ``feed`` returns a (usually empty or one-item) tuple. Tokens after the first stop token are
    ignored. ``flush()`` then ``finish()`` end the stream.
    """

    def __init__(self) -> None:
        self._encoding = get_encoding()
        self._tokens: list[int] = []
        self._parser: StreamableParser | None = None
        self._scanner: Scanner | None = None
        self._layout: Layout | None = None
        self._stop_token: int | None = None
        self._previous: int | None = None
        self._done: list[int] = []  # characters sent, per finished message
        self._sent = 0  # characters sent for the current message
        self._header: tuple[Role, str | None, str | None] | None = None
        self._result: ParsedCompletion | None = None

    @property
    def tokens(self) -> list[int]:
        """The token ids fed so far (up to and including the stop token)."""
        return list(self._tokens)

    @property
    def stop_token(self) -> int | None:
        return self._stop_token

    def feed(self, token: int, text: str | None = None) -> tuple[StreamDelta, ...]:
        """Take one generated token; ``text`` is the text the generator already decoded for it
        (mlx-generate's ``StreamEvent.text``).

        Given from the first token on, the parser walks the tokens itself and takes content
        text as given: no token is decoded twice (header tokens are decoded, a few per
        message). Without it, openai-harmony's parser decodes each token.
        """
        if self._stop_token is not None or self._result is not None:
            return _NONE
        tokens = self._tokens
        if text is not None and not tokens:
            self._scanner = Scanner(self._encoding, headerless=token != START)
        tokens.append(token)
        previous, self._previous = self._previous, token
        if token in (RETURN, CALL):
            self._stop_token = token
            if previous == END:  # the message is already closed; parse_completion skips it too
                return _NONE
        if self._scanner is not None:
            return self._feed_raw(token, text)
        parser, layout = self._parser, self._layout
        if parser is None or layout is None:
            role = None if token == START else Role.ASSISTANT
            parser = self._parser = StreamableParser(self._encoding, role, strict=False)
            layout = self._layout = Layout(headerless=role is not None)
        if not layout.step(token):  # openai-harmony would print it: parse_completion won't
            return self._to_raw()
        try:
            parser.process(token)
        except Exception:
            return self._to_raw()
        except BaseException as exc:
            if type(exc).__name__ != "PanicException":
                raise
            return self._to_raw()
        if token in (END, RETURN, CALL):
            return self._message_done(parser)
        delta = parser.last_content_delta
        if not delta:
            return _NONE
        header = self._header
        if header is None:
            role = parser.current_role or Role.ASSISTANT
            header = self._header = (
                role,
                parser.current_channel or None,
                parser.current_recipient or None,
            )
        self._sent += len(delta)
        return (StreamDelta(delta, header[1], header[2], len(self._done), header[0]),)

    def flush(self) -> tuple[StreamDelta, ...]:
        """End the input; return the deltas only the end reveals. Call it once, before finish."""
        if self._result is not None:
            return _NONE
        self._result = parse_completion(self._tokens)
        return self._catch_up(self._result.messages, None)

    def finish(self) -> ParsedCompletion:
        """The parse of every token fed (``parse_completion``); flushes if needed."""
        if self._result is None:
            self.flush()
        assert self._result is not None
        return self._result

    # -- internals ---------------------------------------------------------------------------

    def _message_done(self, parser: StreamableParser) -> tuple[StreamDelta, ...]:
        try:
            messages = parser.messages
            if len(messages) != len(self._done) + 1:  # non-strict dropped a message
                return self._to_raw()
            message = Message.from_harmony(messages[-1])
        except Exception:
            return self._to_raw()
        rest = message.text[self._sent :]
        self._done.append(len(message.text))
        self._sent, self._header = 0, None
        if not rest:
            return _NONE
        index = len(self._done) - 1
        return (StreamDelta(rest, message.channel, message.recipient, index, message.role),)

    def _to_raw(self) -> tuple[StreamDelta, ...]:
        """openai-harmony gave up: replay everything through the scanner and catch up."""
        self._parser, self._layout, self._header = None, None, None
        tokens = self._tokens
        scanner = self._scanner = Scanner(
            self._encoding, headerless=not tokens or tokens[0] != START
        )
        for token in tokens:
            scanner.feed(token)
        current = (scanner.header, scanner.current_text()) if scanner.in_content else None
        return self._catch_up(scanner.messages, current)

    def _feed_raw(self, token: int, text: str | None = None) -> tuple[StreamDelta, ...]:
        scanner = self._scanner
        assert scanner is not None
        finished = len(scanner.messages)
        piece = scanner.feed(token, text)
        out = _NONE
        if piece is not None:
            header = piece.header
            self._sent += len(piece.text)
            out = (
                StreamDelta(piece.text, header.channel, header.recipient, piece.index, header.role),
            )
        if len(scanner.messages) > finished:
            self._done.append(self._sent)
            self._sent = 0
        return out

    def _catch_up(
        self, messages: Sequence[Message], current: tuple[Header, str] | None
    ) -> tuple[StreamDelta, ...]:
        """Send whatever of ``messages`` (and the message in progress) was not sent yet."""
        done, sent = self._done, self._sent

        def sent_for(index: int) -> int:
            return done[index] if index < len(done) else sent if index == len(done) else 0

        out: list[StreamDelta] = []
        for index, message in enumerate(messages):
            rest = message.text[sent_for(index) :]
            if rest:
                out.append(
                    StreamDelta(rest, message.channel, message.recipient, index, message.role)
                )
        self._done = [len(message.text) for message in messages]
        self._sent = 0
        if current is not None:
            header, text = current
            rest = text[sent_for(len(messages)) :]
            if rest:
                out.append(
                    StreamDelta(rest, header.channel, header.recipient, len(messages), header.role)
                )
            self._sent = len(text)
        return tuple(out)
