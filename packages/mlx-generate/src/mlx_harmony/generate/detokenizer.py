"""Text deltas from a token stream, safe for characters split across tokens.

For byte-level BPE tokenizers (gpt-oss' o200k_harmony, Llama 3, Qwen) each token is a byte string;
an incremental UTF-8 decoder holds back an incomplete character until its last byte arrives, so
the deltas concatenate to exactly ``tokenizer.decode(tokens)`` and no delta carries U+FFFD for a
split character. Other tokenizers go through mlx-lm's streaming detokenizer.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import weakref
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mlx_lm.tokenizer_utils import StreamingDetokenizer

__all__ = ["ByteLevelDetokenizer", "Detokenizer", "make_detokenizer", "token_bytes_table"]

_TABLES: weakref.WeakKeyDictionary[Any, list[bytes]] = weakref.WeakKeyDictionary()


class Detokenizer(Protocol):
    """Feeds tokens, hands out the text they complete."""

    def add_token(self, token: int) -> str:
        """The new text this token completes (may be empty)."""
        ...

    def finalize(self) -> str:
        """Whatever text was held back, at the end of the stream."""
        ...


class ByteLevelDetokenizer:
    """Token bytes through an incremental UTF-8 decoder: O(1) per token."""

    __slots__ = ("_decode", "_table")

    def __init__(self, table: list[bytes]) -> None:
        self._table = table
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode

    def add_token(self, token: int) -> str:
        table = self._table
        return self._decode(table[token] if token < len(table) else b"")

    def finalize(self) -> str:
        return self._decode(b"", True)


class _MlxLmDetokenizer:
    """mlx-lm's streaming detokenizer behind our interface (SentencePiece and the rest)."""

    __slots__ = ("_detokenizer",)

    def __init__(self, detokenizer: StreamingDetokenizer) -> None:
        self._detokenizer = detokenizer
        detokenizer.reset()

    def add_token(self, token: int) -> str:
        self._detokenizer.add_token(token)
        return self._detokenizer.last_segment

    def finalize(self) -> str:
        self._detokenizer.finalize()
        return self._detokenizer.last_segment


def _backend(tokenizer: Any) -> Any:
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    return getattr(hf, "backend_tokenizer", None)


def _is_byte_level(tokenizer: Any) -> bool:
    """A plain byte-level decoder (optionally fused): token bytes concatenate to the text."""
    backend = _backend(tokenizer)
    decoder = getattr(backend, "decoder", None)
    if decoder is None:
        return False
    try:
        spec = json.loads(decoder.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return False
    parts = spec.get("decoders", []) if spec.get("type") == "Sequence" else [spec]
    types = [p.get("type") for p in parts]
    return "ByteLevel" in types and set(types) <= {"ByteLevel", "Fuse"}


def token_bytes_table(tokenizer: Any) -> list[bytes] | None:
    """The bytes of every token id for a byte-level BPE tokenizer, built once per tokenizer;
    None for other tokenizers."""
    try:
        return _TABLES[tokenizer]
    except (KeyError, TypeError):
        pass
    if not _is_byte_level(tokenizer):
        return None
    from mlx_lm.tokenizer_utils import _byte_decoder

    byte_decoder = _byte_decoder()
    # Byte-level characters to the latin-1 character of their byte, then encode: C speed.
    to_latin1 = {ord(c): b for c, b in byte_decoder.items()}
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    added = {i: t.content for i, t in getattr(hf, "added_tokens_decoder", {}).items()}
    id_to_token = _backend(tokenizer).id_to_token
    pieces = [id_to_token(i) for i in range(len(tokenizer))]
    table: list[bytes] = []
    for i, piece in enumerate(pieces):
        if i in added:
            table.append(added[i].encode("utf-8"))
        elif piece is None:
            table.append(b"")
        else:
            try:
                table.append(piece.translate(to_latin1).encode("latin-1"))
            except UnicodeEncodeError:  # a character outside the byte alphabet
                table.append(
                    b"".join(
                        bytes((byte_decoder[c],)) if c in byte_decoder else c.encode("utf-8")
                        for c in piece
                    )
                )
    with contextlib.suppress(TypeError):  # a tokenizer without weak references: no cache
        _TABLES[tokenizer] = table
    return table


def make_detokenizer(tokenizer: Any) -> Detokenizer:
    """A fresh detokenizer for one generation."""
    table = token_bytes_table(tokenizer)
    if table is not None:
        return ByteLevelDetokenizer(table)
    return _MlxLmDetokenizer(tokenizer.detokenizer)
