"""Who waits for the model, and in what order.

Requests beyond the ones decoding wait in a `FairQueue`: one line per client (its API key, else
its address), served round-robin, so a client that sends fifty requests at once delays another
client's one request by at most one turn per busy client, not by fifty. The queue is bounded: a
request that finds it full gets a 503 with ``Retry-After`` at once instead of waiting unseen.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from collections import OrderedDict, deque
from typing import Generic, TypeVar

__all__ = ["FairQueue", "QueueFullError", "client_key", "current_client"]

T = TypeVar("T")

current_client: contextvars.ContextVar[str] = contextvars.ContextVar(
    "mlx_harmony_client", default=""
)
"""The client of the request being handled; set by the request-log middleware."""


def client_key(authorization: str | None, host: str | None) -> str:
    """A client's queue line: a digest of its bearer token, else its address."""
    if authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
    return f"host:{host or '?'}"


class QueueFullError(Exception):
    """The queue holds `max_len` items already."""


class FairQueue(Generic[T]):
    """A bounded queue served round-robin across clients; FIFO within a client."""

    def __init__(self, max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self._lines: OrderedDict[str, deque[T]] = OrderedDict()
        self._len = 0
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return self._len

    def put(self, item: T, client: str = "", *, force: bool = False) -> None:
        """Queue `item` at the end of `client`'s line; `QueueFullError` when full (``force``
        skips the bound, for work the server makes itself)."""
        with self._ready:
            if self._len >= self.max_len and not force:
                raise QueueFullError(
                    f"{self._len} requests are waiting (the limit is {self.max_len})"
                )
            line = self._lines.get(client)
            if line is None:
                line = self._lines[client] = deque()
            line.append(item)
            self._len += 1
            self._ready.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The next item: the head of the next client's line. None on timeout or when closed
        and empty."""
        with self._ready:
            if not self._ready.wait_for(lambda: self._len > 0 or self._closed, timeout):
                return None
            if self._len == 0:
                return None
            client, line = next(iter(self._lines.items()))
            item = line.popleft()
            self._len -= 1
            del self._lines[client]
            if line:  # the client goes to the back of the rotation
                self._lines[client] = line
            return item

    def drain(self) -> list[T]:
        """Take everything that waits (at shutdown)."""
        with self._ready:
            items = [item for line in self._lines.values() for item in line]
            self._lines.clear()
            self._len = 0
            return items

    def close(self) -> None:
        """Wake every `get`; they return None once the queue is empty."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
