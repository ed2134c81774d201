"""Connection limits uvicorn lacks: header and body read timeouts, a cap on open connections.

uvicorn's h11 protocol waits forever for a request's headers and body, so half-sent requests
hold file descriptors until the process runs out and stops accepting (a slowloris). `limited_h11`
makes a subclass of uvicorn's `H11Protocol` that

- closes a connection whose request headers are not complete `header_timeout_s` after its
  first byte could have come (also between keep-alive requests),
- closes a connection whose request body sends nothing for `body_timeout_s`,
- keeps at most `max_connections` open: a newcomer beyond the cap closes the connection that
  has waited longest for its request headers (an idle or half-sent one), so a real client such
  as a health check always gets in; when every connection is busy with a request, the newcomer
  gets a quick 503 with ``Retry-After`` and is closed.

`raise_open_files_limit` lifts the process's soft ``RLIMIT_NOFILE`` to its hard limit at start.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import error_body

__all__ = [
    "DEFAULT_LIMITS",
    "ConnectionLimits",
    "limited_h11",
    "raise_open_files_limit",
]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many may be connected."""

    header_timeout_s: float = 10.0
    """Seconds from connecting (or from the previous response) to complete request headers."""
    body_timeout_s: float = 30.0
    """Seconds a request body may go without sending a byte."""
    max_connections: int = 1000
    """Open connections at most; beyond it the longest-waiting idle one is closed."""

    def __post_init__(self) -> None:
        if not self.header_timeout_s > 0:
            raise ValueError(f"header_timeout_s must be > 0, got {self.header_timeout_s}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")


DEFAULT_LIMITS = ConnectionLimits()

_BUSY_BODY = json.dumps(
    error_body(
        "the server has too many open connections; retry shortly",
        type="server_error",
        code="too_many_connections",
    )
).encode()
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"retry-after: 1\r\nconnection: close\r\ncontent-length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\n\r\n"
    + _BUSY_BODY
)


class _LimitedH11(H11Protocol):
    """`H11Protocol` with the timers and the cap of `limits` (set by `limited_h11`)."""

    limits: ClassVar[ConnectionLimits] = DEFAULT_LIMITS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting_since: float | None = None
        """When this connection began waiting for request headers; None while in a request."""
        self._timer: asyncio.TimerHandle | None = None
        self._timed_cycle: object = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not self._evict_idle():
            self._refused = True
            transport.write(_BUSY)
            transport.close()
            return
        super().connection_made(transport)
        self._wait_for_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.waiting_since = None
        if self._refused:
            return  # nothing was set up
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self.waiting_since is None and (self.cycle is None or self.cycle.response_complete):
            self._wait_for_headers()  # a new request begins on a kept-alive connection
        super().data_received(data)
        cycle = self.cycle
        if cycle is None or cycle.response_complete or self.transport.is_closing():
            return
        # the headers are in: the body must keep coming, or be complete
        self.waiting_since = None
        if cycle.more_body:
            self._arm(self.limits.body_timeout_s, cycle)
        elif self._timed_cycle is not None or self._timer is not None:
            self._cancel_timer()

    def on_response_complete(self) -> None:
        self._cancel_timer()
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self.waiting_since = time.monotonic()

    def _wait_for_headers(self) -> None:
        self.waiting_since = time.monotonic()
        self._arm(self.limits.header_timeout_s, None)

    def _arm(self, seconds: float, cycle: object) -> None:
        self._cancel_timer()
        self._timed_cycle = cycle
        self._timer = self.loop.call_later(seconds, self._expire)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timed_cycle = None

    def _expire(self) -> None:
        """The client took too long: drop the connection (a request in progress sees it as a
        disconnect)."""
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _evict_idle(self) -> bool:
        """Close the connection that has waited longest for its request headers."""
        oldest: _LimitedH11 | None = None
        for connection in self.connections:
            if not isinstance(connection, _LimitedH11):
                continue
            since = connection.waiting_since
            if since is not None and (oldest is None or since < (oldest.waiting_since or 0.0)):
                oldest = connection
        if oldest is None:
            return False
        oldest.waiting_since = None
        oldest._cancel_timer()
        oldest.transport.close()
        self.connections.discard(oldest)
        return True


def limited_h11(limits: ConnectionLimits = DEFAULT_LIMITS) -> type[H11Protocol]:
    """An h11 protocol class for ``uvicorn.Config(http=...)`` that enforces `limits`."""
    return type("LimitedH11Protocol", (_LimitedH11,), {"limits": limits})


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one (where the OS has one); the new soft
    limit, or -1 where it cannot be read."""
    try:
        import resource
    except ImportError:  # Windows
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or (target != resource.RLIM_INFINITY and soft >= target):
        return soft
    for candidate in (target, 1 << 16, 10240):  # macOS refuses values above OPEN_MAX
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (candidate, hard))
            return candidate
        except (ValueError, OSError):
            continue
    return soft
