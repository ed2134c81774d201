"""The gpt-oss harmony encoding, loaded offline from the vocabulary shipped in this package.

openai-harmony downloads ``o200k_base.tiktoken`` on first use unless ``TIKTOKEN_ENCODINGS_BASE``
names a folder that holds it. We ship the file, check its sha256 once, point the variable at our
copy (unless the user already set it) and load the encoding once, lazily, under a lock.

Stop tokens: ``<|return|>`` (the final answer is done) and ``<|call|>`` (the model calls a tool)
end generation. ``<|end|>`` only ends one message: after ``<|end|>`` the model goes on with
``<|start|>assistant...`` (an analysis message is followed by the final one), so it must not stop
generation, although openai-harmony's ``stop_tokens()`` lists it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from enum import IntEnum
from pathlib import Path

from openai_harmony import HarmonyEncoding, HarmonyEncodingName, load_harmony_encoding

__all__ = [
    "ASSISTANT",
    "CALL",
    "CHANNEL",
    "CONSTRAIN",
    "END",
    "ENDOFTEXT",
    "ENV_VAR",
    "FIRST_SPECIAL",
    "MESSAGE",
    "RETURN",
    "START",
    "STARTOFTEXT",
    "STOP_TOKENS",
    "VOCAB_FILE",
    "VOCAB_SHA256",
    "VOCAB_SIZE",
    "HarmonyToken",
    "HarmonyVocabError",
    "get_encoding",
    "verify_vocab",
    "vocab_dir",
]


class HarmonyToken(IntEnum):
    """The o200k_harmony special tokens by name: the one place their ids are written."""

    STARTOFTEXT = 199998
    """``<|startoftext|>``: the first special id; every id from here on is special or reserved."""
    ENDOFTEXT = 199999
    """``<|endoftext|>``: the end-of-text token (a native model's EOS; the pad token)."""
    RETURN = 200002
    """``<|return|>``: the assistant finished its final answer. Stops generation."""
    CONSTRAIN = 200003
    """``<|constrain|>``: starts a constrained content type in a header (``<|constrain|>json``)."""
    CHANNEL = 200005
    """``<|channel|>``: the channel name follows (analysis, commentary, final)."""
    START = 200006
    """``<|start|>``: a message header follows (role, recipient, channel)."""
    END = 200007
    """``<|end|>``: ends one message. Does NOT stop generation."""
    MESSAGE = 200008
    """``<|message|>``: ends the header; the content follows."""
    CALL = 200012
    """``<|call|>``: the assistant addressed a tool. Stops generation."""

    @property
    def marker(self) -> str:
        """The token's text, such as ``<|start|>``."""
        return f"<|{self.name.lower()}|>"


# Plain ints for the per-token paths (comparing with an IntEnum member costs more).
STARTOFTEXT = int(HarmonyToken.STARTOFTEXT)
ENDOFTEXT = int(HarmonyToken.ENDOFTEXT)
RETURN = int(HarmonyToken.RETURN)
CONSTRAIN = int(HarmonyToken.CONSTRAIN)
CHANNEL = int(HarmonyToken.CHANNEL)
START = int(HarmonyToken.START)
END = int(HarmonyToken.END)
MESSAGE = int(HarmonyToken.MESSAGE)
CALL = int(HarmonyToken.CALL)
FIRST_SPECIAL = STARTOFTEXT
"""Ids ``>= FIRST_SPECIAL`` are Harmony's special and reserved tokens, never plain text."""

ASSISTANT = 173781
"""The ordinary token ``assistant``: a prompt for completion ends with ``START, ASSISTANT``."""

STOP_TOKENS: frozenset[int] = frozenset({RETURN, CALL})
"""The tokens that end generation: ``<|return|>`` and ``<|call|>``, never ``<|end|>``."""

VOCAB_SIZE = 201089
"""Token ids the tokenizer can decode: ``0 <= id < VOCAB_SIZE`` (the top ids are reserved)."""

VOCAB_FILE = "o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
ENV_VAR = "TIKTOKEN_ENCODINGS_BASE"

_EXPECTED_IDS = {token.marker: int(token) for token in HarmonyToken}

_lock = threading.Lock()
_encoding: HarmonyEncoding | None = None


class HarmonyVocabError(RuntimeError):
    """The o200k vocabulary file is missing or is not the expected file."""


def vocab_dir() -> Path:
    """The folder inside this package that holds ``o200k_base.tiktoken``."""
    return Path(__file__).resolve().parent / "data"


def verify_vocab(path: Path | None = None) -> Path:
    """Check that ``path`` (default: the shipped file) is the o200k vocabulary; return it."""
    path = vocab_dir() / VOCAB_FILE if path is None else Path(path)
    fix = (
        "reinstall mlx-harmony-format (`pip install --force-reinstall mlx-harmony-format`), "
        f"or set {ENV_VAR} to a folder that holds a good {VOCAB_FILE}"
    )
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise HarmonyVocabError(f"cannot read the harmony vocabulary {path}: {exc}; {fix}") from exc
    if digest != VOCAB_SHA256:
        raise HarmonyVocabError(
            f"the harmony vocabulary {path} has sha256 {digest}, expected {VOCAB_SHA256} "
            f"(the file is damaged or is another vocabulary); {fix}"
        )
    return path


def _load() -> HarmonyEncoding:
    user_dir = os.environ.get(ENV_VAR)
    if user_dir is None:
        os.environ[ENV_VAR] = str(verify_vocab().parent)
    try:
        encoding = load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    except Exception as exc:
        where = f"{ENV_VAR}={user_dir!r} (set by you)" if user_dir is not None else str(vocab_dir())
        raise HarmonyVocabError(
            f"openai-harmony could not load {VOCAB_FILE} from {where}: {exc}; put the file "
            f"(sha256 {VOCAB_SHA256}) there, or unset {ENV_VAR} to use the copy shipped in "
            "mlx-harmony-format"
        ) from exc
    for text, expected in _EXPECTED_IDS.items():
        got = encoding.encode(text, allowed_special={text})
        if got != [expected]:
            raise RuntimeError(
                f"openai-harmony encodes {text} as {got}, mlx-harmony-format expects [{expected}]; "
                "install a supported openai-harmony (see mlx-harmony-format's requirements)"
            )
    return encoding


def get_encoding() -> HarmonyEncoding:
    """The gpt-oss harmony encoding, loaded once (thread-safe) from the shipped vocabulary."""
    global _encoding
    encoding = _encoding
    if encoding is None:
        with _lock:
            encoding = _encoding
            if encoding is None:
                encoding = _encoding = _load()
    return encoding
