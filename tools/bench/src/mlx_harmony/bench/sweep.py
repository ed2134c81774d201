"""Throughput by concurrent clients, targets side by side: ``batching`` and ``server-overhead``.

Both commands are one sweep: at each client count C, each target answers C x
``requests_per_client`` single-turn requests (each prompt of the set made unique by its request
number, so no reply comes whole from a cache); server targets take them from C streaming
clients at once, in-process targets one after another. The targets alternate which goes first
at each level and round, so changes in the machine's load hit them alike. Figures per target
and level, medians over rounds:

- aggregate tok/s: all completion tokens / wall time from the first request to the last reply;
- TTFT: median request -> first token (in-process) or first streamed text (servers);
- stream tok/s: median per-request decode rate as the client sees it;
- ratios: each target / the first target at the same C, and each target at C / itself at the
  lowest C.

``batching`` compares our server with ``mlx_lm.server`` at 1 to 16 clients; ``server-overhead``
puts our server next to the same turns in-process (``server / local`` at one client is the
cost of HTTP and the server's own work) with Harmony's end tokens banned, so every request
generates exactly ``max_tokens``.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlx_harmony.harmony_format import CALL, END, RETURN

from .prompts import Prompt
from .records import scrub_paths, write_records
from .runner import RunResult, run_prompts
from .targets import BenchSettings, Target

__all__ = [
    "NEVER_END",
    "SweepPlan",
    "SweepRow",
    "median_rows",
    "render_sweep",
    "run_sweep",
    "sweep_prompt_config",
    "sweep_requests",
    "sweep_table",
    "write_sweep",
]

NEVER_END: dict[str, float] = {str(RETURN): -100.0, str(END): -100.0, str(CALL): -100.0}
"""``logit_bias`` banning ``<|return|>``, ``<|end|>`` and ``<|call|>``: replies run to
max_tokens."""


@dataclass(frozen=True, kw_only=True)
class SweepPlan:
    """What a sweep runs: client counts, requests, rounds."""

    name: str
    """The command (``batching``, ``server-overhead``): names the output files."""
    levels: tuple[int, ...]
    requests_per_client: int = 1
    rounds: int = 1
    ban_end_tokens: bool = False

    def __post_init__(self) -> None:
        if not self.levels or min(self.levels) < 1:
            raise ValueError(f"client counts must be >= 1, got {list(self.levels)}")
        if self.requests_per_client < 1:
            raise ValueError(f"requests per client must be >= 1, got {self.requests_per_client}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")


@dataclass(frozen=True)
class SweepRow:
    """One target at one client count in one round."""

    target: str
    clients: int
    round: int
    requests: int
    errors: int
    completion_tokens: int
    seconds: float
    aggregate_tokens_per_s: float | None
    median_ttft_s: float | None
    median_stream_tokens_per_s: float | None


def sweep_requests(pool: Sequence[Prompt], count: int, start: int) -> list[Prompt]:
    """`count` single-turn prompts from `pool`, each made unique by its request number."""
    if not pool:
        raise ValueError("the sweep needs at least one single-turn prompt; check --category")
    out = []
    for n in range(start, start + count):
        base = pool[n % len(pool)]
        out.append(
            Prompt(
                id=f"{base.id}#{n}",
                category=base.category,
                turns=(f"(Request {n}.) {base.turns[0]}",),
            )
        )
    return out


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _row(name: str, clients: int, round_: int, result: RunResult) -> SweepRow:
    good = [r for r in result.records if r.error is None]
    return SweepRow(
        target=name,
        clients=clients,
        round=round_,
        requests=len(result.records),
        errors=result.errors,
        completion_tokens=result.completion_tokens,
        seconds=round(result.measured_s, 4),
        aggregate_tokens_per_s=result.aggregate_tokens_per_s,
        median_ttft_s=_median([r.ttft_s for r in good]),
        median_stream_tokens_per_s=_median([r.decode_tokens_per_s for r in good]),
    )


def run_sweep(
    targets: Mapping[str, Target],
    pool: Sequence[Prompt],
    settings: BenchSettings,
    plan: SweepPlan,
    *,
    records_dir: Path | None = None,
    warmup: bool = True,
    on_row: Callable[[SweepRow], None] | None = None,
) -> list[SweepRow]:
    """Every round, every level, every target (first one rotating); one `SweepRow` each.

    A server target gets C concurrent clients; an in-process one answers the same C x
    ``requests_per_client`` requests one after another. ``records_dir`` keeps each
    measurement's records as ``records-<target>-c<C>-r<round>.jsonl``."""
    levels = sorted(set(plan.levels))
    counter = 0
    if warmup:  # first-call compilation, caches, a burst at the top level for servers
        for target in targets.values():
            run_prompts(target, sweep_requests(pool, 1, 10**6), settings)
            if target.concurrent:
                burst = sweep_requests(pool, levels[-1], 10**6 + 1)
                run_prompts(target, burst, settings, concurrency=levels[-1])
    rows: list[SweepRow] = []
    for round_ in range(plan.rounds):
        for i, clients in enumerate(levels):
            names = list(targets)
            shift = (round_ + i) % len(names)
            for name in names[shift:] + names[:shift]:
                target = targets[name]
                requests = sweep_requests(pool, clients * plan.requests_per_client, counter)
                counter += len(requests)
                concurrency = clients if target.concurrent else 1
                result = run_prompts(target, requests, settings, concurrency=concurrency)
                if records_dir is not None:
                    path = records_dir / f"records-{name}-c{clients}-r{round_}.jsonl"
                    write_records(path, result.records)
                row = _row(name, clients, round_, result)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return rows


def median_rows(rows: Sequence[SweepRow]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (target, clients): the medians over rounds, and the requests and errors summed."""
    grouped: dict[tuple[str, int], list[SweepRow]] = {}
    for row in rows:
        grouped.setdefault((row.target, row.clients), []).append(row)
    return {
        key: {
            "target": key[0],
            "clients": key[1],
            "rounds": len(group),
            "requests": sum(g.requests for g in group),
            "errors": sum(g.errors for g in group),
            "completion_tokens": _median([g.completion_tokens for g in group]),
            "aggregate_tokens_per_s": _median([g.aggregate_tokens_per_s for g in group]),
            "median_ttft_s": _median([g.median_ttft_s for g in group]),
            "median_stream_tokens_per_s": _median([g.median_stream_tokens_per_s for g in group]),
        }
        for key, group in grouped.items()
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def sweep_table(
    merged: Mapping[tuple[str, int], Mapping[str, Any]], levels: Sequence[int], names: Sequence[str]
) -> tuple[list[str], list[dict[str, float | None]]]:
    """The table's columns and one row per client count: each target's tok/s, tokens, TTFT and
    stream tok/s, then each other target / the first, then each target at C / at the lowest C."""
    levels = sorted(set(levels))
    first = names[0]
    cols = ["clients"]
    for n in names:
        cols += [f"{n} tok/s", f"{n} tokens", f"{n} TTFT s", f"{n} stream tok/s"]
    cols += [f"{n} / {first}" for n in names[1:]]
    cols += [f"{n} C/{levels[0]}" for n in names]
    table = []
    for c in levels:
        row: dict[str, float | None] = {"clients": c}
        for n in names:
            m = merged.get((n, c), {})
            row[f"{n} tok/s"] = m.get("aggregate_tokens_per_s")
            row[f"{n} tokens"] = m.get("completion_tokens")
            row[f"{n} TTFT s"] = m.get("median_ttft_s")
            row[f"{n} stream tok/s"] = m.get("median_stream_tokens_per_s")
            base = merged.get((n, levels[0]), {}).get("aggregate_tokens_per_s")
            row[f"{n} C/{levels[0]}"] = _ratio(row[f"{n} tok/s"], base)
        for n in names[1:]:
            row[f"{n} / {first}"] = _ratio(row[f"{n} tok/s"], row[f"{first} tok/s"])
        table.append(row)
    return cols, table


def _fmt(value: float | None, col: str) -> str:
    if value is None:
        return "—"
    if col == "clients" or col.endswith(" tokens"):
        return f"{value:.0f}"
    if col.endswith("TTFT s"):
        return f"{value:.3f}"
    if " / " in col or " C/" in col:
        return f"{value:.2f}"
    return f"{value:.1f}"


def render_sweep(
    title: str,
    intro: str,
    cols: Sequence[str],
    table: Sequence[Mapping[str, float | None]],
    notes: Sequence[str] = (),
) -> str:
    """The markdown: title, one line of settings, the table, notes."""
    lines = [f"# {title}\n", intro + "\n", "| " + " | ".join(cols) + " |"]
    lines.append("| " + " | ".join("---:" for _ in cols) + " |")
    for row in table:
        lines.append("| " + " | ".join(_fmt(row.get(c), c) for c in cols) + " |")
    lines += [f"\n{note}" for note in notes]
    return "\n".join(lines) + "\n"


def sweep_prompt_config(base: Mapping[str, Any], *, ban_end_tokens: bool) -> dict[str, Any]:
    """Our prompt config for a sweep: loop detection off unless the config sets it (mlx-lm has
    none, and a reply that must run to max_tokens would be cut), the end tokens banned when
    asked (added to the config's own logit_bias)."""
    config = dict(base)
    config.setdefault("loop_detection", "off")
    if ban_end_tokens:
        config["logit_bias"] = {**dict(config.get("logit_bias") or {}), **NEVER_END}
    return config


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_sweep(
    out: Path,
    plan: SweepPlan,
    *,
    model: str,
    max_tokens: int | None,
    rows: Sequence[SweepRow],
    names: Sequence[str],
    notes: Mapping[str, Mapping[str, Any]],
    title: str,
    extra_notes: Sequence[str] = (),
) -> str:
    """``<name>.md`` and ``<name>.json`` in `out` (paths of this machine made portable);
    returns the markdown."""
    merged = median_rows(rows)
    cols, table = sweep_table(merged, plan.levels, names)
    intro = (
        f"Model `{scrub_paths(model)}`, max_tokens {max_tokens}, {plan.requests_per_client} "
        f"request(s) per client, median of {plan.rounds} round(s)"
        + (", end tokens banned." if plan.ban_end_tokens else ", natural stops.")
    )
    text = render_sweep(title, intro, cols, table, extra_notes)
    _atomic_write(out / f"{plan.name}.md", text)
    data = {
        "model": model,
        "targets": list(names),
        "levels": sorted(set(plan.levels)),
        "max_tokens": max_tokens,
        "requests_per_client": plan.requests_per_client,
        "rounds": plan.rounds,
        "ban_end_tokens": plan.ban_end_tokens,
        "notes": notes,
        "rows": [asdict(r) for r in rows],
        "table": table,
    }
    _atomic_write(out / f"{plan.name}.json", json.dumps(scrub_paths(data), indent=2) + "\n")
    return text
