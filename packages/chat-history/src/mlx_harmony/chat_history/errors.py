"""The one error type a chat log can raise, and the warning category for non-fatal findings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlx_harmony.chat_history.findings import Finding

__all__ = ["ChatLogError", "ChatLogWarning", "format_place"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class ChatLogError(ValueError):
    """A chat log that cannot be read, migrated or trusted.

    ``str(error)`` is one line, ``FILE: PLACE: PROBLEM``, so a command can print it as is.
    ``findings`` holds the consistency findings when the checks stopped the load.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        place: str = "file",
        findings: Sequence[Finding] = (),
    ) -> None:
        self.problem = _one_line(problem)
        self.file = None if file is None else str(file)
        self.place = _one_line(place)
        self.findings = list(findings)
        super().__init__(self.problem)

    def __str__(self) -> str:
        head = f"{self.file}: " if self.file else ""
        return f"{head}{self.place}: {self.problem}"


class ChatLogWarning(UserWarning):
    """A consistency finding that does not stop a load (see ``check_chat``)."""


def format_place(loc: Sequence[str | int]) -> str:
    """Render a JSON path such as ``("messages", 3, "timestamp")`` as ``messages[3].timestamp``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "top level"
