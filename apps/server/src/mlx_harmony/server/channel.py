"""A one-way channel from the model worker's thread to one request's asyncio task.

The worker `put`s items as it produces them; the request task awaits `get_batch()` and gets
everything that arrived since its last call, so tokens go out as they are generated but a
client that falls behind gets several per write. Waking the event loop
(`loop.call_soon_threadsafe`) happens once per batch, not once per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Generic, TypeVar

__all__ = ["EventChannel"]

T = TypeVar("T")


class _End:
    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class EventChannel(Generic[T]):
    """Items from a worker thread to an asyncio consumer; see the module docstring."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[T | _End] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._waiter: asyncio.Future[None] | None = None
        self._interrupted = False
        self.closed = False

    # -- worker side -----------------------------------------------------------------------

    def put(self, item: T) -> None:
        self._items.append(item)
        self._wake()

    def close(self, error: BaseException | None = None) -> None:
        """No more items; `get_batch` raises `error` once the items before it are read."""
        self._items.append(_End(error))
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is shutting down
            self._loop.call_soon_threadsafe(self._on_wake)

    # -- loop side ---------------------------------------------------------------------------

    def _on_wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def interrupt(self) -> None:
        """Wake a waiting `get_batch` (from the loop thread), e.g. when the client left."""
        self._interrupted = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get_batch(self) -> list[T]:
        """The items that arrived, at least one (waits for it); ``[]`` once the channel is
        closed, or when `interrupt` woke it. Raises the error the worker closed it with (after
        the items that came before it)."""
        items = self._items
        while not items:
            if self.closed or self._interrupted:
                return []
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        batch: list[T] = []
        while items:
            item = items[0]
            if isinstance(item, _End):
                if batch:
                    break  # hand out what came before the end first
                items.popleft()
                self.closed = True
                if item.error is not None:
                    raise item.error
                return []
            batch.append(item)
            items.popleft()
        return batch
