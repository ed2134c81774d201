"""Parse what the model generated into answer, reasoning and tool calls; never raise on garbage.

``parse_completion`` tries openai-harmony's strict parser, then its non-strict one, then our
tolerant scanner, and says which one produced the result (``parse_path``). Before that it
normalizes what a generation loop hands over:

* a completion normally starts after the prompt's ``<|start|>assistant``, i.e. with
  ``<|channel|>``; it is parsed as the inside of an assistant header (a completion that starts
  with ``<|start|>`` is parsed as whole messages instead);
* only tokens before the first stop token (``<|return|>``, ``<|call|>``) count; a stop token
  right after ``<|end|>`` is recorded and left out;
* without a stop token the completion is ``truncated``: a header cut before its
  ``<|message|>`` is dropped, a character cut in the middle of its UTF-8 bytes is dropped, and
  a ``<|return|>`` is appended for the parsers;
* a parser's result is only accepted when every ``<|end|>``/``<|return|>``/``<|call|>`` closed
  exactly one message (openai-harmony's non-strict mode silently drops some);
* openai-harmony prints a special token it finds inside content (``a<|message|>b``) as text, so
  a completion with a special token out of place goes straight to the scanner, which ends the
  message or skips the token as the structure says and never prints it.

Assistant messages then fill the fields: text to a recipient is a tool call (whatever the
channel), ``analysis`` and ``commentary`` text go to their fields, and everything else
(``final``, no channel, an unknown channel) is the final answer.
"""

from __future__ import annotations

import codecs
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from openai_harmony import HarmonyEncoding

from ._scan import Scanner, first_out_of_place
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
    get_encoding,
)
from .messages import Message, Role

__all__ = [
    "ParsePath",
    "ParsedCompletion",
    "ToolCall",
    "parse_completion",
]

_CONSTRAIN_MARK = "<|constrain|>"
_RECIPIENT_FIRST = re.compile(r"\s*to(=|$)")


class ParsePath(StrEnum):
    """Which parser produced a ``ParsedCompletion``."""

    STRICT = "strict"
    NON_STRICT = "non_strict"
    RAW = "raw"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A message the assistant addressed to a tool; ``arguments`` is its raw text."""

    recipient: str
    arguments: str
    channel: str | None = "commentary"
    content_type: str | None = None

    @property
    def namespace(self) -> str:
        """``functions`` for ``functions.get_weather``, ``browser``, ``python``."""
        return self.recipient.partition(".")[0]

    @property
    def name(self) -> str:
        """``get_weather`` for ``functions.get_weather``; the recipient itself without a dot."""
        namespace, dot, name = self.recipient.partition(".")
        return name if dot else namespace

    @property
    def constrain(self) -> str | None:
        """``json`` for a ``<|constrain|>json`` content type, else None."""
        content_type = self.content_type
        if content_type is not None and content_type.startswith(_CONSTRAIN_MARK):
            return content_type[len(_CONSTRAIN_MARK) :] or None
        return None

    def to_message(self) -> Message:
        """The assistant message that made this call, to append to the history."""
        return Message(
            Role.ASSISTANT,
            self.arguments,
            channel=self.channel,
            recipient=self.recipient,
            content_type=self.content_type,
        )


@dataclass(frozen=True, slots=True)
class ParsedCompletion:
    """What one generation said. ``messages`` is everything parsed, ready for the history."""

    analysis: str
    commentary: str
    final: str
    tool_calls: tuple[ToolCall, ...]
    stop_token: int | None
    truncated: bool
    parse_path: ParsePath
    raw_text: str
    messages: tuple[Message, ...]
    errors: tuple[str, ...] = ()
    """Why the parsers before ``parse_path`` gave up (empty when the strict parser succeeded)."""


def _field_of(role: Role, channel: str | None, recipient: str | None) -> str | None:
    """The ``ParsedCompletion`` field a message's text goes to; None for non-assistant text."""
    if role is not Role.ASSISTANT:
        return None
    if recipient is not None and recipient != "all":
        return "tool_call"
    if channel == "analysis" or channel == "commentary":
        return channel
    return "final"


def _summarize(
    messages: Sequence[Message],
    *,
    stop_token: int | None,
    truncated: bool,
    parse_path: ParsePath,
    raw_text: str,
    errors: Sequence[str] = (),
) -> ParsedCompletion:
    texts: dict[str, list[str]] = {"analysis": [], "commentary": [], "final": []}
    calls: list[ToolCall] = []
    for message in messages:
        field = _field_of(message.role, message.channel, message.recipient)
        if field == "tool_call":
            calls.append(
                ToolCall(message.recipient, message.text, message.channel, message.content_type)  # type: ignore[arg-type]
            )
        elif field is not None:
            texts[field].append(message.text)
    return ParsedCompletion(
        analysis="".join(texts["analysis"]),
        commentary="".join(texts["commentary"]),
        final="".join(texts["final"]),
        tool_calls=tuple(calls),
        stop_token=stop_token,
        truncated=truncated,
        parse_path=parse_path,
        raw_text=raw_text,
        messages=tuple(messages),
        errors=tuple(errors),
    )


def _is_valid(ids: Sequence[int]) -> bool:
    return not ids or (min(ids) >= 0 and max(ids) < VOCAB_SIZE)


def _decode_lossy(encoding: HarmonyEncoding, ids: Sequence[int]) -> str:
    """Text of any ids: special tokens as their text, bad bytes and unknown ids as U+FFFD."""
    if _is_valid(ids):
        return encoding.decode(ids)
    parts: list[str] = []
    run: list[int] = []
    for token in ids:
        if 0 <= token < VOCAB_SIZE:
            run.append(token)
        else:
            parts.append(encoding.decode(run))
            parts.append("\ufffd")
            run = []
    parts.append(encoding.decode(run))
    return "".join(parts)


def _first_stop(ids: list[int]) -> int | None:
    found = [ids.index(token) for token in (RETURN, CALL) if token in ids]
    return min(found) if found else None


def _rindex(ids: list[int], token: int) -> int:
    try:
        return len(ids) - 1 - ids[::-1].index(token)
    except ValueError:
        return -1


def _drop_cut_header(encoding: HarmonyEncoding, body: list[int]) -> list[int]:
    """Leave out a last header that never reached ``<|message|>`` (generation was cut).

    Only tokens that every parser reads as header go: a stream never showed them as text.
    """
    start = _rindex(body, END) + 1
    tail = body[start:]
    if not tail or MESSAGE in tail:
        return body
    if tail[0] in (START, CHANNEL, CONSTRAIN):
        return body[:start]
    if start == 0 and (
        CHANNEL in tail
        or CONSTRAIN in tail
        or _RECIPIENT_FIRST.match(_decode_lossy(encoding, tail[:3]))
    ):
        return body[:start]  # the completion's own header, e.g. " to=functions.f" or "<|chan"
    return body  # plain text: an answer written without any header, or text after <|end|>


def _ends_mid_character(encoding: HarmonyEncoding, body: list[int]) -> bool:
    tail: list[int] = []
    for token in reversed(body[-4:]):
        if not 0 <= token < FIRST_SPECIAL:
            break
        tail.append(token)
    if not tail:
        return False
    data = encoding.decode(tail[::-1], errors="surrogateescape").encode("utf-8", "surrogateescape")
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    decoder.decode(data)
    return bool(decoder.getstate()[0])


def _is_panic(exc: BaseException) -> bool:
    return type(exc).__name__ == "PanicException"


def _misplaced(encoding: HarmonyEncoding, token: int, index: int) -> str:
    if not 0 <= token < VOCAB_SIZE:
        return f"token id {token} at {index} is outside 0..{VOCAB_SIZE - 1}"
    return f"{encoding.decode([token])} ({token}) at {index} is out of place"


def _parse(
    encoding: HarmonyEncoding, body: list[int], role: Role | None, strict_first: bool
) -> tuple[list[Message], ParsePath, list[str]]:
    errors: list[str] = []
    if not body:
        return [], ParsePath.STRICT, errors
    misplaced = first_out_of_place(body, headerless=role is not None)
    if misplaced is None:
        expected = body.count(END) + body.count(RETURN) + body.count(CALL)
        modes = (
            (ParsePath.STRICT, ParsePath.NON_STRICT) if strict_first else (ParsePath.NON_STRICT,)
        )
        for path in modes:
            try:
                parsed = encoding.parse_messages_from_completion_tokens(
                    body, role, strict=path is ParsePath.STRICT
                )
                messages = [Message.from_harmony(m) for m in parsed]
            except Exception as exc:
                errors.append(f"{path.value}: {exc}")
                continue
            except BaseException as exc:
                if not _is_panic(exc):
                    raise
                errors.append(f"{path.value}: openai-harmony panicked: {exc}")
                continue
            if len(messages) != expected:
                errors.append(
                    f"{path.value}: {len(messages)} messages for {expected} message end tokens"
                )
                continue
            return messages, path, errors
    else:
        errors.append(_misplaced(encoding, body[misplaced], misplaced))
    scanner = Scanner(encoding, headerless=role is not None)
    for token in body:
        scanner.feed(token)
    scanner.close()
    return scanner.messages, ParsePath.RAW, errors


def parse_completion(tokens: Iterable[int], *, strict_first: bool = True) -> ParsedCompletion:
    """Parse generated token ids (what followed the prompt) into a ``ParsedCompletion``.

    ``strict_first=False`` skips openai-harmony's strict parser (its non-strict parser accepts
    everything the strict one does and gives the same messages).
    """
    encoding = get_encoding()
    ids = list(map(operator.index, tokens))
    raw_text = _decode_lossy(encoding, ids)

    stop_at = _first_stop(ids)
    stop_token = None if stop_at is None else ids[stop_at]
    body = ids[:stop_at] if stop_at is not None else ids
    truncated = stop_token is None
    role = None if body and body[0] == START else Role.ASSISTANT
    partial = False
    if truncated:
        body = _drop_cut_header(encoding, body)
        partial = _ends_mid_character(encoding, body)
    if body and body[-1] != END:
        body = [*body, RETURN if stop_token is None else stop_token]

    messages, path, errors = _parse(encoding, body, role, strict_first)
    if partial and messages and messages[-1].text.endswith("\ufffd"):
        messages[-1] = replace(messages[-1], content=messages[-1].text[:-1])
    return _summarize(
        messages,
        stop_token=stop_token,
        truncated=truncated,
        parse_path=path,
        raw_text=raw_text,
        errors=errors,
    )
