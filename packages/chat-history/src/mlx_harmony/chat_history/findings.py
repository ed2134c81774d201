"""A consistency finding in a chat log: what the checks report and a failed load carries."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Finding", "Severity"]


class Severity(StrEnum):
    """How bad a finding is: only errors stop a load."""

    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem in a log; ``index`` and ``message_id`` are ``None`` for the header."""

    severity: Severity
    index: int | None
    message_id: str | None
    text: str
    chat_id: str | None = None
    """Set when the file holds several chats: the chat the finding is about."""

    @property
    def place(self) -> str:
        """Where the problem is, as ``messages[3] (id a1b2)`` or ``header``, prefixed with
        ``chats[ID].`` when the file holds several chats."""
        head = f"chats[{self.chat_id}]." if self.chat_id is not None else ""
        if self.index is None:
            return f"{head}header"
        return f"{head}messages[{self.index}] (id {self.message_id})"

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def __str__(self) -> str:
        return f"{self.place}: {self.severity}: {self.text}"
