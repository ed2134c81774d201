"""OpenAI tool names <-> Harmony function names.

Harmony declares function tools as TypeScript (``type get_weather = (_: {...}) => any;``) and
the model calls ``functions.<name>``, so a name must be an identifier. OpenAI allows more
(``get-weather``, ``weather.lookup``, names with spaces or accents). Such names are mapped to
safe identifiers for the prompt and mapped back in the response, so the client only ever sees
its own names.

Tools in a namespace (the Responses API's ``{"type": "namespace", ...}`` tools) are called as
``<namespace>.<name>``: the namespace gets a safe name of its own (never ``functions`` or a
built-in tool's), and its tools a `ToolNameMap` of their own.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["ToolNameMap", "is_harmony_name"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")
_RESERVED = frozenset({"functions", "browser", "python", "container"})


def is_harmony_name(name: str) -> bool:
    """Whether `name` can be used as is: an ASCII identifier of at most 64 characters."""
    return _IDENTIFIER.fullmatch(name) is not None


def _safe(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    safe = _UNSAFE.sub("_", ascii_name).strip("_") or "tool"
    if safe[0].isdigit():
        safe = f"fn_{safe}"
    return safe[:60]


class ToolNameMap:
    """A two-way map for one request; valid names map to themselves."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self._to_harmony: dict[str, str] = {}
        self._to_openai: dict[str, str] = {}
        self._spaces: dict[
            str, tuple[str, ToolNameMap]
        ] = {}  # client namespace -> (Harmony's, names)
        self._space_names: dict[str, str] = {}  # Harmony namespace -> client namespace
        # Valid names first, so that a made-up name never takes a name the client uses.
        for name in sorted(names, key=lambda n: not is_harmony_name(n)):
            self.add(name)

    def add(self, name: str) -> str:
        """The Harmony name for `name`, made up (and remembered) on first sight."""
        known = self._to_harmony.get(name)
        if known is not None:
            return known
        if is_harmony_name(name) and name not in self._to_openai:
            safe = name
        else:
            base = _safe(name)
            safe, n = base, 2
            while safe in self._to_openai:
                safe, n = f"{base}_{n}", n + 1
        self._to_harmony[name] = safe
        self._to_openai[safe] = name
        return safe

    def to_harmony(self, name: str) -> str:
        return self.add(name)

    def to_openai(self, name: str) -> str:
        """The client's name for a Harmony name (an unknown name comes back unchanged)."""
        return self._to_openai.get(name, name)

    @property
    def renamed(self) -> dict[str, str]:
        """The names that changed: OpenAI name -> Harmony name."""
        return {k: v for k, v in self._to_harmony.items() if k != v}

    def add_namespace(self, namespace: str) -> str:
        """The Harmony name of the tool namespace `namespace`, made up on first sight."""
        known = self._spaces.get(namespace)
        if known is not None:
            return known[0]
        base = namespace if is_harmony_name(namespace) else _safe(namespace)
        safe, n = base, 2
        while safe in self._space_names or safe in _RESERVED:
            safe, n = f"{base}_{n}", n + 1
        self._spaces[namespace] = (safe, ToolNameMap())
        self._space_names[safe] = namespace
        return safe

    def recipient(self, name: str, namespace: str | None = None) -> str:
        """The Harmony recipient of a call to the client's `name` (in `namespace`)."""
        if namespace is None:
            return f"functions.{self.to_harmony(name)}"
        space = self.add_namespace(namespace)
        return f"{space}.{self._spaces[namespace][1].to_harmony(name)}"

    def from_recipient(self, recipient: str) -> tuple[str | None, str]:
        """(the client's namespace or None, the client's name) of a Harmony recipient; a
        recipient in no known namespace comes back whole, with no namespace."""
        space, dot, name = recipient.partition(".")
        if dot and space == "functions":
            return None, self.to_openai(name)
        namespace = self._space_names.get(space) if dot else None
        if namespace is None:
            return None, recipient
        return namespace, self._spaces[namespace][1].to_openai(name)
