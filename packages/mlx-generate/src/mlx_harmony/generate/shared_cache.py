"""An LRU of prompt-prefix caches shared by every request a server runs.

A server sees many conversations at once, so one `PromptCache` per generator is not enough:
this keeps several single-sequence caches, each with the tokens it holds, bounded by a count and
a byte budget, and hands a request a private copy of the one that serves the longest prefix of
its prompt.

Copies are cheap: MLX arrays are immutable values, and a copy needs only new Python handles,
because a cache assigns into its arrays in place (see `cache.py`). An entry whose rotating
(sliding-window) layers have wrapped can only serve prompts that extend it, or drop one token
after a single-token write; `cache.py` explains why.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .cache import _can_drop, _snapshot, common_prefix_len

__all__ = ["CacheHit", "SharedPromptCache"]


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A private copy of a cached prefix: `caches` hold `prompt[:reused]`."""

    caches: list[Any]
    reused: int
    trimmed: int
    """Tokens dropped from the entry to get back to the common prefix."""


@dataclass(slots=True)
class _Entry:
    key: tuple[int, ...]
    tokens: list[int]
    caches: list[Any]
    nbytes: int
    single_tail: bool


class SharedPromptCache:
    """Prompt-prefix caches keyed by the tokens they hold, least recently used evicted first.

    Thread-safe. ``max_entries=0`` or ``max_bytes=0`` keeps nothing.
    """

    def __init__(self, *, max_entries: int = 16, max_bytes: int | None = None) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None (no byte limit), got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def fetch(self, prompt: Sequence[int]) -> CacheHit | None:
        """A copy of the entry serving the longest prefix of `prompt`, cut to that prefix.

        At least the last prompt token is left out: its logits give the first new token.
        """
        limit = len(prompt) - 1
        if limit <= 0:
            return None
        prompt = list(prompt)
        with self._lock:
            best: tuple[int, int, _Entry] | None = None
            for entry in self._entries.values():
                common = min(common_prefix_len(entry.tokens, prompt), limit)
                if common <= 0 or (best is not None and common <= best[0]):
                    continue
                drop = len(entry.tokens) - common
                if drop and not all(_can_drop(c, drop, entry.single_tail) for c in entry.caches):
                    continue
                best = (common, drop, entry)
            if best is None:
                self.misses += 1
                return None
            common, drop, entry = best
            self._entries.move_to_end(entry.key)
            self.hits += 1
            caches = [_snapshot(c) for c in entry.caches]
        if drop:
            for c in caches:
                c.trim(drop)
        return CacheHit(caches, common, drop)

    def insert(self, tokens: Sequence[int], caches: list[Any], *, single_tail: bool) -> None:
        """Keep `caches` (holding exactly `tokens`); the caller must not write to them again.

        `single_tail`: the last write was a single token (then one more can be dropped even
        from wrapped rotating layers).
        """
        if self.max_entries == 0 or not tokens:
            return
        key = tuple(tokens)
        nbytes = sum(getattr(c, "nbytes", 0) for c in caches)
        if self.max_bytes is not None and nbytes > self.max_bytes:
            return
        entry = _Entry(key, list(key), [_snapshot(c) for c in caches], nbytes, single_tail)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            self._entries[key] = entry
            self._nbytes += nbytes
            while len(self._entries) > self.max_entries or (
                self.max_bytes is not None and self._nbytes > self.max_bytes
            ):
                _, evicted = self._entries.popitem(last=False)
                self._nbytes -= evicted.nbytes
                self.evictions += 1
