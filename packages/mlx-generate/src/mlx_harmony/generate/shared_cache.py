"""An LRU of prompt-prefix caches shared by every request a server runs.

A server sees many conversations at once, so one `PromptCache` per generator is not enough:
this keeps several single-sequence caches, each with the tokens it holds, bounded by a count and
a byte budget, and hands a request a private copy of the one that serves the longest prefix of
its prompt.

Copies are cheap: MLX arrays are immutable values, and a copy needs only new Python handles,
because a cache assigns into its arrays in place (see `cache.py`). An entry whose rotating
(sliding-window) layers have wrapped can only serve prompts that extend it, or drop one token
after a single-token write; `cache.py` explains why. So an entry may also keep checkpoints:
snapshots of its rotating layers at message boundaries (`prefill.BoundaryCheckpoints` takes
them while the prompt is prefilled). A prompt that shares an entry's system and developer
messages but not what follows gets the entry's full-attention layers trimmed back to the last
boundary it shares and the rotating layers restored from that boundary's snapshot, so only what
follows is prefilled.

`save(folder)` and `load(folder)` persist the entries as prompt-cache files
(`prompt_cache_file.py`), for a server that keeps them across restarts.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlx_lm.models.cache import QuantizedKVCache

from .cache import _can_drop, _snapshot, common_prefix_len

if TYPE_CHECKING:
    from .loading import LoadedModel
    from .prefill import Snapshots

__all__ = ["CacheDirLoad", "CacheHit", "SharedPromptCache"]

_FILE_PREFIX = "prompt-"


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A private copy of a cached prefix: `caches` hold `prompt[:reused]`."""

    caches: list[Any]
    reused: int
    trimmed: int
    """Tokens dropped from the entry to get back to the common prefix."""
    checkpoint: bool = False
    """The rotating layers came from a message-boundary checkpoint."""


@dataclass(frozen=True, slots=True)
class CacheDirLoad:
    """What `SharedPromptCache.load` found: entries loaded, and files skipped with the reason."""

    loaded: int
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Entry:
    key: tuple[int, ...]
    tokens: list[int]
    caches: list[Any]
    nbytes: int
    single_tail: bool
    checkpoints: Snapshots
    """Rotating-layer snapshots at message boundaries: length -> {layer index: cache}."""


def _nbytes(caches: Iterable[object]) -> int:
    return sum(getattr(c, "nbytes", 0) for c in caches)


def _checkpoint_bytes(checkpoints: Snapshots) -> int:
    return sum(_nbytes(layers.values()) for layers in checkpoints.values())


def _serve(entry: _Entry, prompt: list[int], limit: int) -> tuple[int, int, int | None] | None:
    """(reused, dropped, checkpoint length or None): how `entry` serves `prompt` best."""
    common = min(common_prefix_len(entry.tokens, prompt), limit)
    if common <= 0:
        return None
    drop = len(entry.tokens) - common
    if not drop or all(_can_drop(c, drop, entry.single_tail) for c in entry.caches):
        return common, drop, None
    usable = [length for length in entry.checkpoints if length <= common]
    if not usable:
        return None
    length = max(usable)
    return length, len(entry.tokens) - length, length


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
        """A copy of the entry serving the longest prefix of `prompt`, cut to that prefix (from
        a message-boundary checkpoint when the rotating layers cannot be cut back).

        At least the last prompt token is left out: its logits give the first new token.
        """
        limit = len(prompt) - 1
        if limit <= 0:
            return None
        prompt = list(prompt)
        with self._lock:
            best: tuple[tuple[int, int, int | None], _Entry] | None = None
            for entry in self._entries.values():
                served = _serve(entry, prompt, limit)
                if served is not None and (best is None or served[0] > best[0][0]):
                    best = (served, entry)
            if best is None:
                self.misses += 1
                return None
            (reused, drop, checkpoint), entry = best
            self._entries.move_to_end(entry.key)
            self.hits += 1
            caches = [_snapshot(c) for c in entry.caches]
            if checkpoint is not None:
                for i, layer in entry.checkpoints[checkpoint].items():
                    caches[i] = _snapshot(layer)
        for c in caches:
            if checkpoint is None or c.offset > reused:
                c.trim(drop if checkpoint is None else c.offset - reused)
        return CacheHit(caches, reused, drop, checkpoint is not None)

    def insert(
        self,
        tokens: Sequence[int],
        caches: list[Any],
        *,
        single_tail: bool,
        checkpoints: Snapshots | None = None,
    ) -> None:
        """Keep `caches` (holding exactly `tokens`); the caller must not write to them again.

        `single_tail`: the last write was a single token (then one more can be dropped even
        from wrapped rotating layers). `checkpoints`: snapshots of the rotating layers at
        message boundaries within `tokens` (`prefill.BoundaryCheckpoints.snapshots`); the
        entry also inherits the checkpoints of other entries that share its tokens up to them
        (shared snapshots, not copies), so a boundary reused once stays reusable.
        """
        if self.max_entries == 0 or not tokens:
            return
        key = tuple(tokens)
        own = {n: dict(layers) for n, layers in (checkpoints or {}).items() if 0 < n <= len(key)}
        with self._lock:
            for other in self._entries.values():
                if not other.checkpoints:
                    continue
                common = common_prefix_len(other.tokens, key)
                for n, layers in other.checkpoints.items():
                    if n <= common and n not in own:
                        own[n] = layers
        snaps = {n: {i: _snapshot(c) for i, c in layers.items()} for n, layers in own.items()}
        nbytes = _nbytes(caches) + _checkpoint_bytes(snaps)
        if self.max_bytes is not None and nbytes > self.max_bytes:
            return
        entry = _Entry(key, list(key), [_snapshot(c) for c in caches], nbytes, single_tail, snaps)
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

    @property
    def checkpoint_nbytes(self) -> int:
        """Bytes of the entries' checkpoint snapshots (counted once per entry holding them)."""
        with self._lock:
            return sum(_checkpoint_bytes(e.checkpoints) for e in self._entries.values())

    def save(self, folder: str | Path, *, loaded: LoadedModel) -> list[Path]:
        """Write every entry to `folder` as a prompt-cache file (atomically; files of entries
        no longer held are removed); the paths written, least recently used first."""
        from .prompt_cache_file import save_prompt_cache_file

        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            entries = list(self._entries.values())
        written: list[Path] = []
        for entry in entries:
            name = hashlib.sha256(repr(entry.key).encode()).hexdigest()[:32]
            quantized = [c for c in entry.caches if isinstance(c, QuantizedKVCache)]
            written.append(
                save_prompt_cache_file(
                    folder / f"{_FILE_PREFIX}{name}.safetensors",
                    loaded=loaded,
                    tokens=entry.tokens,
                    caches=entry.caches,
                    single_tail=entry.single_tail,
                    kv_bits=quantized[0].bits if quantized else None,
                    kv_group_size=quantized[0].group_size if quantized else 64,
                    checkpoints=entry.checkpoints,
                )
            )
        keep = set(written)
        for stale in folder.glob(f"{_FILE_PREFIX}*.safetensors"):
            if stale not in keep:
                stale.unlink(missing_ok=True)
        return written

    def load(self, folder: str | Path, *, loaded: LoadedModel) -> CacheDirLoad:
        """Insert the entries saved in `folder` (oldest first, so the LRU order survives).
        Files made for another model or tokenizer, or unreadable, are skipped and reported."""
        from .prompt_cache_file import PromptCacheFileError, load_prompt_cache_file

        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"prompt cache folder {str(folder)!r} does not exist")
        files = sorted(folder.glob(f"{_FILE_PREFIX}*.safetensors"), key=lambda p: p.stat().st_mtime)
        count = 0
        skipped: list[tuple[Path, str]] = []
        for path in files:
            try:
                saved = load_prompt_cache_file(path, loaded=loaded)
            except PromptCacheFileError as e:
                skipped.append((path, str(e)))
                continue
            self.insert(
                saved.tokens,
                saved.caches,
                single_tail=saved.single_tail,
                checkpoints=saved.checkpoints,
            )
            count += 1
        return CacheDirLoad(count, skipped)
