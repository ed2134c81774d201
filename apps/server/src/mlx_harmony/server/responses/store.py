"""Stored responses for ``previous_response_id``: in memory, bounded, least recently used out.

Each entry holds the response object (for ``GET /v1/responses/{id}``) and its whole
conversation as input items (the earlier ones, its input, its output), so a follow-up goes on
from it even after the responses before it were evicted. Nothing survives a restart. A response
belongs to the API key that created it (`admission.current_key`): asked with another key, it is
not there.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..admission import current_key
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
        self._owners: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, response_id: object) -> bool:
        return response_id in self._entries and self._owned(str(response_id))

    def _owned(self, response_id: str) -> bool:
        return self._owners.get(response_id, "") == current_key.get()

    def put(self, response_id: str, stored: StoredResponse) -> None:
        """Store (or replace) `response_id`, evicting the least recently used past the bound."""
        entries = self._entries
        entries[response_id] = stored
        entries.move_to_end(response_id)
        self._owners[response_id] = current_key.get()
        while len(entries) > self.max_size:
            evicted, _ = entries.popitem(last=False)
            self._owners.pop(evicted, None)

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, now the most recently used; None when unknown or evicted."""
        stored = self._entries.get(response_id)
        if stored is None or not self._owned(response_id):
            return None
        self._entries.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> bool:
        """Forget `response_id`; whether it was there (for this key)."""
        if response_id not in self._entries or not self._owned(response_id):
            return False
        del self._entries[response_id]
        self._owners.pop(response_id, None)
        return True
