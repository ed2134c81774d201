"""Prefill that stops at message boundaries and snapshots the sliding-window layers there.

A gpt-oss sliding-window layer (a 128-token `RotatingKVCache`) cannot be trimmed back once it
has wrapped, so a cached prompt serves a later prompt only up to the point where the ring last
held what the later prompt needs. Conversations of one application share their system and
developer messages and diverge right after them; a snapshot of the rotating layers at each
such boundary lets a new conversation restore that state, trim the full-attention layers (always
trimmable) to the same length, and prefill only what follows.

Snapshots cost references, not copies (see `cache.py`), until the live cache writes again;
then each holds its ring. The token at a boundary is fed alone, so the ring is cut to the
window (128 positions of every sliding layer for gpt-oss) instead of ``127 + chunk``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .cache import _ALWAYS_TRIMMABLE, _snapshot, maybe_quantize_kv_cache

__all__ = [
    "BoundaryCheckpoints",
    "Snapshots",
    "harmony_message_boundaries",
    "prefill",
    "snapshot_untrimmable",
]

Snapshots = dict[int, dict[int, Any]]
"""Checkpoint length -> {layer index: snapshot of that layer} for the untrimmable layers."""

HARMONY_END = 200007
"""<|end|> in o200k_harmony."""


def harmony_message_boundaries(
    tokens: Sequence[int], *, end_token: int = HARMONY_END, max_boundaries: int | None = None
) -> list[int]:
    """Offsets right after each <|end|> of a Harmony prompt: where one message ends and the
    next begins. The first ones close the system and developer messages, where the
    conversations of one application diverge; `max_boundaries` keeps only the first few."""
    out = [i + 1 for i, t in enumerate(tokens) if t == end_token]
    return out if max_boundaries is None else out[:max_boundaries]


def snapshot_untrimmable(caches: Sequence[Any]) -> dict[int, Any]:
    """Snapshots of the layers that cannot be trimmed (rotating ones), by layer index."""
    return {i: _snapshot(c) for i, c in enumerate(caches) if not isinstance(c, _ALWAYS_TRIMMABLE)}


class BoundaryCheckpoints:
    """Chunk a prefill so it stops at `boundaries`, and snapshot the untrimmable layers there.

    The hook a prefill loop needs (three calls): ``n = cp.clip(done, n)`` before feeding a
    chunk of `n` tokens starting at `done`; ``cp.after_chunk(done, caches)`` once the caches
    hold `done` tokens; then ``cp.snapshots`` for `SharedPromptCache.insert(checkpoints=...)`.
    Boundaries at or before the start (already cached) and past the end are ignored.
    """

    def __init__(self, boundaries: Sequence[int], *, start: int = 0, end: int | None = None):
        self.boundaries = sorted({b for b in boundaries if b > start and (end is None or b <= end)})
        self.snapshots: Snapshots = {}
        self._next = 0

    def clip(self, done: int, n: int) -> int:
        """Tokens to feed next: at most `n`, never past the next boundary, and the boundary's
        last token alone."""
        while self._next < len(self.boundaries) and self.boundaries[self._next] <= done:
            self._next += 1
        if self._next < len(self.boundaries):
            left = self.boundaries[self._next] - done
            # The token at the boundary goes alone: a single-token write trims the ring to its
            # window, so the snapshot holds `window` positions, not `window - 1 + chunk`.
            return min(n, left - 1) if left > 1 else 1
        return n

    def after_chunk(self, done: int, caches: Sequence[Any]) -> None:
        """Snapshot the untrimmable layers when the caches hold exactly a boundary's tokens."""
        if self._next < len(self.boundaries) and self.boundaries[self._next] == done:
            layers = snapshot_untrimmable(caches)
            if layers:
                self.snapshots[done] = layers
            self._next += 1


def prefill(
    model: nn.Module,
    caches: list[Any],
    tokens: Sequence[int],
    *,
    start: int = 0,
    prefill_step_size: int = 2048,
    checkpoints: Sequence[int] = (),
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    quantized_kv_start: int = 0,
) -> Snapshots:
    """Feed `tokens` (positions `start`...) into `caches` in chunks of `prefill_step_size` that
    also end at every offset in `checkpoints`; return the untrimmable layers' snapshots there.

    The chunks are the generation loop's (`generate_step`) between boundaries, so a cache
    prefilled here continues as the loop's would; `kv_bits` quantizes the full-attention layers
    as the loop does.
    """
    if prefill_step_size < 1:
        raise ValueError(f"prefill_step_size must be positive, got {prefill_step_size}")
    end = start + len(tokens)
    marks = BoundaryCheckpoints(checkpoints, start=start, end=end)
    done = start
    while done < end:
        n = marks.clip(done, min(prefill_step_size, end - done))
        chunk = mx.array(list(tokens[done - start : done - start + n]))
        model(chunk[None], cache=caches)
        maybe_quantize_kv_cache(
            caches,
            kv_bits=kv_bits,
            kv_group_size=kv_group_size,
            quantized_kv_start=quantized_kv_start,
        )
        mx.eval([c.state for c in caches])
        done += n
        marks.after_chunk(done, caches)
    return marks.snapshots
