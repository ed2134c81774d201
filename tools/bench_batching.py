"""Aggregate completion tokens/s at 1, 2, 4, 8 and 16 concurrent streaming clients: our server
against mlx_lm.server on the same model, side by side in one run.

    uv run python tools/bench_batching.py                      # the demo model
    uv run python tools/bench_batching.py --model PATH --concurrency 1,2,4,8,16 --max-tokens 128

Both servers run for the whole benchmark (``--one-at-a-time`` starts them in turn, for a model
that fits only once) and are always stopped at the end. At each concurrency C, C streaming
clients share C x ``--requests-per-client`` requests, each a different single-turn prompt of
the harness's set with a unique prefix (no reply is served from a cache); the two servers
alternate which goes first at each level and round. Figures:

- aggregate tok/s: all completion tokens / wall time from the first request to the last reply;
- TTFT: median request -> first streamed text, seen by the client;
- ratios: ours / mlx_lm.server at each C, and each server at C / itself at 1 client.

Every request asks for ``--max-tokens`` (128) tokens; models stop when they like, so the table
reports the completion tokens actually generated (``--ban-end-tokens`` bans Harmony's end
tokens with logit_bias on both servers, so every reply runs to max_tokens). Our server gets
``--max-concurrency`` (default: the largest C) when its build has the flag; without it, it
serves one request at a time and the note says so. Builds on mlx-harmony-bench's
``open_target`` and ``run_prompts`` (the ``--concurrency`` path of ``mlx-harmony-bench run``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from mlx_harmony.bench import (
    BenchSettings,
    Prompt,
    RunResult,
    load_prompts,
    open_target,
    run_prompts,
    write_records,
)
from mlx_harmony.bench.targets import resolve_model

SYSTEMS = {"mlx-harmony-server": "server", "mlx_lm.server": "mlx-lm-server"}
NEVER_END = {"200002": -100.0, "200007": -100.0, "200012": -100.0}
"""<|return|>, <|end|>, <|call|> banned: every reply generates max_tokens."""


def _requests(pool: list[Prompt], count: int, start: int) -> list[Prompt]:
    """`count` single-turn prompts from the pool, each made unique by its request number."""
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


def _row(system: str, clients: int, result: RunResult) -> dict[str, Any]:
    good = [r for r in result.records if r.error is None]
    ttfts = [r.ttft_s for r in good if r.ttft_s is not None]
    return {
        "system": system,
        "clients": clients,
        "requests": len(result.records),
        "errors": result.errors,
        "completion_tokens": result.completion_tokens,
        "seconds": result.measured_s,
        "aggregate_tokens_per_s": result.aggregate_tokens_per_s,
        "median_ttft_s": statistics.median(ttfts) if ttfts else None,
    }


def _median_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["system"], row["clients"]), []).append(row)
    merged = {}
    for key, group in grouped.items():

        def med(name: str, group: list[dict[str, Any]] = group) -> float | None:
            values = [g[name] for g in group if g[name] is not None]
            return statistics.median(values) if values else None

        merged[key] = {
            "system": key[0],
            "clients": key[1],
            "rounds": len(group),
            "requests": sum(g["requests"] for g in group),
            "errors": sum(g["errors"] for g in group),
            "completion_tokens": med("completion_tokens"),
            "aggregate_tokens_per_s": med("aggregate_tokens_per_s"),
            "median_ttft_s": med("median_ttft_s"),
        }
    return merged


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _table(
    merged: dict[tuple[str, int], dict[str, Any]], levels: list[int], systems: list[str]
) -> tuple[list[str], list[dict[str, Any]]]:
    ours, peer = "mlx-harmony-server", "mlx_lm.server"
    cols = ["clients"]
    for s in systems:
        cols += [f"{s} tok/s", f"{s} tokens", f"{s} TTFT s"]
    if len(systems) == 2:
        cols.append("ours / mlx_lm")
    cols += [f"{s} C/1" for s in systems]
    rows = []
    for c in levels:
        row: dict[str, Any] = {"clients": c}
        for s in systems:
            m = merged.get((s, c), {})
            row[f"{s} tok/s"] = m.get("aggregate_tokens_per_s")
            row[f"{s} tokens"] = m.get("completion_tokens")
            row[f"{s} TTFT s"] = m.get("median_ttft_s")
            row[f"{s} C/1"] = _ratio(
                m.get("aggregate_tokens_per_s"),
                merged.get((s, levels[0]), {}).get("aggregate_tokens_per_s"),
            )
        if len(systems) == 2:
            row["ours / mlx_lm"] = _ratio(row[f"{ours} tok/s"], row[f"{peer} tok/s"])
        rows.append(row)
    return cols, rows


def _fmt(value: Any, col: str) -> str:
    if value is None:
        return "—"
    if col == "clients" or col.endswith("tokens"):
        return f"{value:.0f}"
    if col.endswith("TTFT s"):
        return f"{value:.3f}"
    if col == "ours / mlx_lm" or col.endswith("C/1"):
        return f"{value:.2f}"
    return f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder or repo (default: the demo model)")
    parser.add_argument("--prompt-config", help="our prompt config JSON (our server)")
    parser.add_argument("--concurrency", default="1,2,4,8,16", help="client counts (1,2,4,8,16)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="repeat; medians are reported")
    parser.add_argument("--max-concurrency", type=int, help="our server's (default: largest C)")
    parser.add_argument("--ban-end-tokens", action="store_true", help="replies run to max_tokens")
    parser.add_argument("--one-at-a-time", action="store_true", help="one server up at a time")
    parser.add_argument("--skip-mlx-lm", action="store_true", help="leave mlx_lm.server out")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--out", help="folder for batching.md/.json and logs")
    args = parser.parse_args(argv)
    levels = sorted({int(c) for c in args.concurrency.split(",")})
    if levels[0] < 1:
        parser.error("--concurrency values must be >= 1")
    out = Path(args.out or Path("bench-results") / f"batching-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    settings = BenchSettings(
        model=args.model,
        prompt_config=args.prompt_config,
        max_tokens=args.max_tokens,
        max_concurrency=args.max_concurrency or levels[-1],
        startup_timeout=args.startup_timeout,
        out=out,
        extra_body={"logit_bias": NEVER_END} if args.ban_end_tokens else {},
    )
    model = resolve_model(settings).model
    pool = [p for p in load_prompts() if len(p.turns) == 1 and p.category != "long-context"]
    systems = [s for s in SYSTEMS if not (args.skip_mlx_lm and s == "mlx_lm.server")]
    print(
        f"model {model}; clients {levels}; {args.requests_per_client} requests per client; "
        f"max_tokens {args.max_tokens}; rounds {args.rounds}; into {out}",
        file=sys.stderr,
    )
    rows: list[dict[str, Any]] = []
    notes: dict[str, Any] = {}
    counter = [0]

    def measure(system: str, target: Any, clients: int, round_: int) -> None:
        requests = _requests(pool, clients * args.requests_per_client, counter[0])
        counter[0] += len(requests)
        result = run_prompts(target, requests, settings, concurrency=clients)
        write_records(out / f"records-{SYSTEMS[system]}-c{clients}-r{round_}.jsonl", result.records)
        row = _row(system, clients, result)
        rows.append(row)
        rate = row["aggregate_tokens_per_s"]
        print(
            f"  round {round_ + 1} {system:<18} x{clients:<3} {row['completion_tokens']:>6} tok "
            f"in {row['seconds']:.2f} s = {rate or 0:.1f} tok/s, {row['errors']} errors",
            file=sys.stderr,
        )

    def warm(target: Any) -> None:
        run_prompts(target, _requests(pool, 1, 10**6), settings)
        burst = _requests(pool, levels[-1], 10**6 + 1)
        run_prompts(target, burst, settings, concurrency=levels[-1])

    groups = [systems] if not args.one_at_a_time else [[s] for s in systems]
    for group in groups:
        with ExitStack() as stack:
            targets = {
                s: stack.enter_context(open_target(SYSTEMS[s], settings, log_name=f"{s}.log"))
                for s in group
            }
            for s, target in targets.items():
                notes[s] = {k: v for k, v in target.notes.items() if k != "command"}
                notes[s]["command"] = " ".join(target.notes.get("command", []))
                warm(target)
            for round_ in range(args.rounds):
                for i, clients in enumerate(levels):
                    order = list(targets)
                    if (round_ + i) % 2:
                        order.reverse()
                    for s in order:
                        measure(s, targets[s], clients, round_)

    merged = _median_rows(rows)
    cols, table = _table(merged, levels, systems)
    header = " | ".join(cols)
    lines = [
        "# Batching: aggregate completion tokens/s by concurrent clients\n",
        f"Model `{model}`, max_tokens {args.max_tokens}, "
        f"{args.requests_per_client} requests per client, median of {args.rounds} round(s)"
        + (", end tokens banned" if args.ban_end_tokens else ", natural stops")
        + ".\n",
        f"| {header} |",
        "| " + " | ".join("---:" for _ in cols) + " |",
    ]
    for row in table:
        lines.append("| " + " | ".join(_fmt(row[c], c) for c in cols) + " |")
    for note in notes.values():
        if note.get("max_concurrency_note"):
            lines.append(f"\nNote: {note['max_concurrency_note']}.")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    (out / "batching.md").write_text(text, encoding="utf-8")
    (out / "batching.json").write_text(
        json.dumps(
            {
                "model": model,
                "levels": levels,
                "max_tokens": args.max_tokens,
                "requests_per_client": args.requests_per_client,
                "rounds": args.rounds,
                "ban_end_tokens": args.ban_end_tokens,
                "notes": notes,
                "rows": rows,
                "table": table,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    errors = sum(r["errors"] for r in rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
