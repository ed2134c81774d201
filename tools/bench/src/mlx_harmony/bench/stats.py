"""The report's arithmetic: percentiles, per-target summaries, ratios. Pure functions.

Percentiles interpolate linearly between the two nearest ranks (NumPy's default, "linear"):
for sorted values ``x[0..n-1]`` the q-th percentile is at rank ``(n - 1) * q / 100``.
Missing values (None) are left out; a metric with no values has no summary.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .records import TurnRecord

__all__ = [
    "HIGHER_IS_BETTER",
    "METRICS",
    "MetricSummary",
    "TargetSummary",
    "cache_reuse_by_turn",
    "percentile",
    "ratio",
    "summarize",
    "summarize_metric",
]

METRICS: dict[str, str] = {
    "ttft_s": "TTFT (s)",
    "prefill_tokens_per_s": "prefill tok/s",
    "decode_tokens_per_s": "decode tok/s",
    "e2e_tokens_per_s": "end-to-end tok/s (completion tokens / turn wall time)",
    "wall_s": "turn wall time (s)",
    "prompt_tokens": "prompt tokens",
    "reused_prompt_tokens": "reused prompt tokens",
    "completion_tokens": "completion tokens",
    "reasoning_tokens": "reasoning tokens",
    "retries": "retries",
    "peak_memory_gb": "MLX peak memory (GB)",
    "process_peak_rss_gb": "server peak RSS (GB)",
}
"""Record fields (and properties) the report summarizes, with labels, in the report's order."""

HIGHER_IS_BETTER = {
    "ttft_s": False,
    "prefill_tokens_per_s": True,
    "decode_tokens_per_s": True,
    "e2e_tokens_per_s": True,
    "wall_s": False,
}
"""Which way is faster, for the metrics that measure speed (the report marks them)."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, interpolating linearly between ranks."""
    if not values:
        raise ValueError("percentile of no values; filter out empty metrics first")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None when either is missing or base is 0."""
    if value is None or base is None or base == 0:
        return None
    return value / base


@dataclass(frozen=True)
class MetricSummary:
    """One metric on one target: how many values, their median and 90th percentile."""

    n: int
    median: float
    p90: float
    mean: float


@dataclass(frozen=True)
class TargetSummary:
    """Every metric of one target's successful turns, and how many turns failed."""

    target: str
    turns: int
    errors: int
    metrics: dict[str, MetricSummary | None]


def summarize_metric(values: Iterable[float | int | None]) -> MetricSummary | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return MetricSummary(
        n=len(present),
        median=percentile(present, 50),
        p90=percentile(present, 90),
        mean=sum(present) / len(present),
    )


def summarize(records: Sequence[TurnRecord], target: str | None = None) -> TargetSummary:
    """Summaries of `records` (all of one target); failed turns are counted, not measured."""
    names = {r.target for r in records}
    if target is None:
        if len(names) > 1:
            raise ValueError(f"records of several targets {sorted(names)}; pass target=")
        target = next(iter(names), "?")
    chosen = [r for r in records if r.target == target]
    good = [r for r in chosen if r.error is None]
    metrics = {name: summarize_metric(getattr(r, name) for r in good) for name in METRICS}
    return TargetSummary(target, len(chosen), len(chosen) - len(good), metrics)


def cache_reuse_by_turn(records: Sequence[TurnRecord]) -> dict[int, float | None]:
    """Per turn index: reused prompt tokens / prompt tokens over the successful turns that
    report both (a share, 0..1); None for a turn where no record says."""
    totals: dict[int, list[int]] = {}
    for r in records:
        if r.error is not None:
            continue
        pair = totals.setdefault(r.turn, [0, 0, 0])
        if r.reused_prompt_tokens is None or not r.prompt_tokens:
            continue
        pair[0] += r.reused_prompt_tokens
        pair[1] += r.prompt_tokens
        pair[2] += 1
    return {
        turn: (reused / prompt if count and prompt else None)
        for turn, (reused, prompt, count) in sorted(totals.items())
    }
