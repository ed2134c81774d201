"""Stored responses for ``previous_response_id``: in memory, bounded, least recently used out.

Each entry holds the response object (for ``GET /v1/responses/{id}``) and its whole
conversation as input items (the earlier ones, its input, its output), so a follow-up goes on
from it even after the responses before it were evicted. Nothing survives a restart.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .protocol import InputItemModel, ResponseObject

__all__ = ["DEFAULT_RESPONSE_STORE_SIZE", "ResponseStore", "StoredResponse"]

DEFAULT_RESPONSE_STORE_SIZE = 256


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response and the conversation it ends."""

    response: ResponseObject
    items: tuple[InputItemModel, ...]
    """Every item of the conversation, input and output, as input items (in order)."""


class ResponseStore:
    """An LRU map of response id to `StoredResponse`, at most `max_size` entries.

    Used from the event loop only (the routes), so it takes no lock.
    """

    def __init__(self, max_size: int = DEFAULT_RESPONSE_STORE_SIZE) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._entries

    def put(self, response_id: str, stored: StoredResponse) -> None:
        """Store (or replace) `response_id`, evicting the least recently used past the bound."""
        entries = self._entries
        entries[response_id] = stored
        entries.move_to_end(response_id)
        while len(entries) > self.max_size:
            entries.popitem(last=False)

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, now the most recently used; None when unknown or evicted."""
        stored = self._entries.get(response_id)
        if stored is not None:
            self._entries.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        """Forget `response_id`; whether it was there."""
        return self._entries.pop(response_id, None) is not None
