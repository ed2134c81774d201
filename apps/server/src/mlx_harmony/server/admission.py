"""Who waits for the model, and in what order.

Requests beyond the ones decoding wait in a `FairQueue`: one line per client (its API key when
the server has keys, else its connection address; never a token the server did not issue),
served round-robin, so a client that sends fifty requests at once delays another client's one
request by at most one turn per busy client, not by fifty. The queue is bounded, and so is each
line (below the queue's bound), so one client's burst always leaves room for the others: a
request that finds its line or the queue full gets a 503 with ``Retry-After`` at once instead
of waiting unseen.
"""

from __future__ import annotations

import contextvars
import hashlib
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable
from typing import Generic, TypeVar

__all__ = [
    "FairQueue",
    "QueueFullError",
    "client_key",
    "current_client",
    "current_key",
    "default_per_client",
    "key_digest",
    "match_key",
]

T = TypeVar("T")

current_client: contextvars.ContextVar[str] = contextvars.ContextVar(
    "mlx_harmony_client", default=""
)
"""The client of the request being handled; set by the request-log middleware."""


current_key: contextvars.ContextVar[str] = contextvars.ContextVar("mlx_harmony_key", default="")
"""A digest of the API key the request was made with; "" when the server has no keys."""


def match_key(authorization: str | None, api_keys: Iterable[str]) -> str | None:
    """The server's key that ``Authorization: Bearer ...`` names, or None (compared in
    constant time)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    given = token.strip().encode()
    found = None
    for key in api_keys:
        if secrets.compare_digest(given, key.encode()):
            found = key
    return found


def key_digest(key: str) -> str:
    """A short digest that names an API key without holding it."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def client_key(api_key: str | None, host: str | None) -> str:
    """A client's queue line: its (checked) API key's digest, else its address. Pass only a key
    the server issued (`match_key`), so made-up tokens cannot buy extra lines."""
    if api_key:
        return "key:" + key_digest(api_key)
    return f"host:{host or '?'}"


def default_per_client(max_len: int) -> int:
    """Half the queue (at least 1): one client can never fill it alone."""
    return max(1, max_len // 2)


class QueueFullError(Exception):
    """The queue holds `max_len` items already, or the client's line `per_client`."""


class FairQueue(Generic[T]):
    """A bounded queue served round-robin across clients; FIFO within a client, each client's
    line at most `per_client` long (default: half of `max_len`)."""

    def __init__(self, max_len: int, *, per_client: int | None = None) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        per_client = default_per_client(max_len) if per_client is None else per_client
        if not 1 <= per_client <= max_len:
            raise ValueError(f"per_client must be in [1, max_len={max_len}], got {per_client}")
        self.max_len = max_len
        self.per_client = per_client
        self._lines: OrderedDict[str, deque[T]] = OrderedDict()
        self._len = 0
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return self._len

    def put(self, item: T, client: str = "", *, force: bool = False) -> None:
        """Queue `item` at the end of `client`'s line; `QueueFullError` when the queue or the
        line is full (``force`` skips the bounds, for work the server makes itself)."""
        with self._ready:
            line = self._lines.get(client)
            if not force and self._len >= self.max_len:
                raise QueueFullError(
                    f"{self._len} requests are waiting (the limit is {self.max_len})"
                )
            if not force and line is not None and len(line) >= self.per_client:
                raise QueueFullError(
                    f"this client has {len(line)} requests waiting (the limit per client is "
                    f"{self.per_client}, --max-queue-per-client)"
                )
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
