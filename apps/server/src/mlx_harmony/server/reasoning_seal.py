"""Sealed reasoning for stateless clients: ``encrypted_content`` of a Responses reasoning item.

A client that keeps no state on the server (``store: false``, as Codex CLI does) asks for
``include: ["reasoning.encrypted_content"]`` and sends the reasoning items back with the next
request; gpt-oss needs the analysis of the turn in progress (a tool round) in its prompt. The
analysis is sealed with Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``): opaque to
the client and tamper-evident, so a forged, altered or foreign blob fails to open and is
dropped (with a warning), never trusted.

The key is made at server start unless the operator gives one (``--reasoning-key-file``, or
the ``MLX_HARMONY_REASONING_KEY`` environment variable): workers that share a key open each
other's blobs, and blobs survive a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["KEY_ENV_VAR", "ReasoningSeal", "load_reasoning_seal"]

KEY_ENV_VAR = "MLX_HARMONY_REASONING_KEY"
_PREFIX = "mlxh1:"
"""Marks our blobs, so that a blob from another server (OpenAI's) is named as foreign."""


class ReasoningSeal:
    """Seals reasoning text into an opaque string and opens it again."""

    def __init__(self, key: bytes | str | None = None) -> None:
        raw = key if key is not None else Fernet.generate_key()
        try:
            self._fernet = Fernet(raw.strip() if isinstance(raw, bytes | str) else raw)
        except (ValueError, TypeError) as error:
            raise ValueError(
                "the reasoning key must be 32 url-safe base64-encoded bytes (make one with "
                "`python -c 'from cryptography.fernet import Fernet; "
                f"print(Fernet.generate_key().decode())'`): {error}"
            ) from None

    def seal(self, text: str) -> str:
        return _PREFIX + self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, blob: str) -> str | None:
        """The text sealed in `blob`; None when it is not ours or was altered."""
        if not blob.startswith(_PREFIX):
            return None
        try:
            return self._fernet.decrypt(blob.removeprefix(_PREFIX).encode("ascii")).decode()
        except (InvalidToken, UnicodeError, ValueError):
            return None


def load_reasoning_seal(key_file: str | None = None) -> ReasoningSeal:
    """The seal from `key_file`, else from ``MLX_HARMONY_REASONING_KEY``, else a fresh key."""
    if key_file is not None:
        path = Path(key_file).expanduser()
        try:
            key = path.read_bytes()
        except OSError as error:
            raise ValueError(f"--reasoning-key-file {key_file}: cannot read it: {error}") from None
        return ReasoningSeal(key)
    env = os.environ.get(KEY_ENV_VAR)
    return ReasoningSeal(env) if env else ReasoningSeal()
