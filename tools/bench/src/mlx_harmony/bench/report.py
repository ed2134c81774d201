"""From run folders to ``report.md``, ``summary.json`` and four PNG plots.

A run folder holds ``records.jsonl`` and ``run.json``; a folder of run folders (what
``mlx-harmony-bench run --target a,b`` writes) stands for its runs, in the order of its
``runs.json``. Ratios compare each run's median with the first run's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .records import RECORDS_FILE, RUN_FILE, TARGETS, RunInfo, TurnRecord, read_records
from .stats import (
    HIGHER_IS_BETTER,
    METRICS,
    TargetSummary,
    cache_reuse_by_turn,
    percentile,
    ratio,
    summarize,
)

__all__ = [
    "MANIFEST_FILE",
    "PLOTS",
    "Run",
    "find_runs",
    "load_runs",
    "render_markdown",
    "summary_table",
    "write_plots",
    "write_report",
]

MANIFEST_FILE = "runs.json"
PLOTS = {
    "decode_tps.png": "Decode tokens/s per target",
    "ttft.png": "Time to first token, distribution",
    "cache_reuse.png": "Prompt-cache reuse per turn",
    "tps_vs_context.png": "Decode tokens/s against context length",
}
_SIZE = (6.0, 4.0)
_DPI = 100


@dataclass
class Run:
    """One run folder: its label in the report, its run.json (if any) and records."""

    label: str
    folder: Path
    info: RunInfo | None
    records: list[TurnRecord]


def find_runs(path: str | os.PathLike[str]) -> list[Path]:
    """The run folders `path` stands for: itself, or its subfolders (manifest order)."""
    path = Path(path)
    if (path / RECORDS_FILE).is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder; pass a run folder (with records.jsonl)")
    manifest = path / MANIFEST_FILE
    if manifest.is_file():
        names = json.loads(manifest.read_text(encoding="utf-8")).get("runs", [])
        found = [path / n for n in names if (path / n / RECORDS_FILE).is_file()]
        if found:
            return found
    subs = [p for p in path.iterdir() if (p / RECORDS_FILE).is_file()]
    order = {name: i for i, name in enumerate(TARGETS)}
    subs.sort(key=lambda p: (order.get(p.name, len(order)), p.name))
    if not subs:
        raise FileNotFoundError(
            f"no run in {path}: it holds no records.jsonl, nor subfolders with one"
        )
    return subs


def load_runs(paths: Sequence[str | os.PathLike[str]]) -> list[Run]:
    """Every run the paths stand for, labelled by target (by folder when targets repeat)."""
    folders = [folder for p in paths for folder in find_runs(p)]
    runs = []
    for folder in folders:
        info = None
        if (folder / RUN_FILE).is_file():
            info = RunInfo.model_validate_json((folder / RUN_FILE).read_text(encoding="utf-8"))
        records = read_records(folder)
        target = info.target if info is not None else _target_of(records, folder)
        runs.append(Run(target, folder, info, records))
    labels = [r.label for r in runs]
    for run in runs:
        if labels.count(run.label) > 1:
            where = run.folder.parent.name if run.folder.name == run.label else run.folder.name
            run.label = f"{run.label} ({where})"
    return runs


def _target_of(records: Sequence[TurnRecord], folder: Path) -> str:
    names = sorted({r.target for r in records})
    return names[0] if len(names) == 1 else folder.name


def _summaries(runs: Sequence[Run]) -> list[TargetSummary]:
    out = []
    for run in runs:
        records = [r.model_copy(update={"target": run.label}) for r in run.records]
        out.append(summarize(records, run.label))
    return out


def summary_table(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per metric and run: n, median, p90, mean and the ratio of the median to the
    first run's median (None where either is missing)."""
    summaries = _summaries(runs)
    rows = []
    for metric in METRICS:
        base = summaries[0].metrics[metric] if summaries else None
        for summary in summaries:
            m = summary.metrics[metric]
            rows.append(
                {
                    "metric": metric,
                    "target": summary.target,
                    "n": m.n if m else 0,
                    "median": m.median if m else None,
                    "p90": m.p90 if m else None,
                    "mean": m.mean if m else None,
                    "ratio_to_first": ratio(m.median if m else None, base.median if base else None),
                }
            )
    return rows


def _fmt(value: float | None, metric: str = "") -> str:
    if value is None:
        return "—"
    if metric.endswith("_gb"):
        return f"{value:.3f}"
    if metric.endswith("_s") and not metric.endswith("per_s"):
        return f"{value:.3f}"
    if metric.endswith("tokens") or metric == "retries":
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _run_row(run: Run) -> str:
    info = run.info
    if info is None:
        return f"| {run.label} | — | — | — | {len(run.records)} | — | — | — | — |"
    device = info.machine.get("mlx_device", "—")
    agg = info.aggregate_completion_tokens_per_s
    commit = info.git_commit or "—"
    if len(commit) > 12:
        commit = commit[:10] + ("+dirty" if commit.endswith("+dirty") else "")
    return (
        f"| {run.label} | {Path(info.model).name} | {device} | {info.prompts} | {info.turns} | "
        f"{info.errors} | {info.concurrency} | {_fmt(agg)} | {commit} |"
    )


def render_markdown(
    runs: Sequence[Run], *, title: str = "Benchmark report", command: str | None = None
) -> str:
    """The report: runs, per-metric medians/p90/ratios, plots, definitions."""
    if not runs:
        raise ValueError("no runs to report on")
    first = runs[0].label
    lines = [f"# {title}", ""]
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines.append(f"Made {made}" + (f" with `{command}`." if command else "."))
    machine = runs[0].info.machine if runs[0].info is not None else {}
    if machine:
        lines.append(
            f"Machine: {machine.get('platform')}, {machine.get('cpu_count')} CPUs, "
            f"{machine.get('memory_gb')} GB, MLX device {machine.get('mlx_device')}."
        )
    lines += [
        "",
        "## Runs",
        "",
        "| target | model | device | prompts | turns | errors | clients | aggregate tok/s "
        "| commit |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    lines += [_run_row(run) for run in runs]
    lines += [
        "",
        f"## Per-turn metrics (successful turns; ratio = median / {first}'s median)",
        "",
    ]
    rows = summary_table(runs)
    for metric, label in METRICS.items():
        chosen = [r for r in rows if r["metric"] == metric]
        if not any(r["n"] for r in chosen):
            continue
        better = HIGHER_IS_BETTER.get(metric)
        hint = "" if better is None else (" (higher is better)" if better else " (lower is better)")
        lines += [
            f"### {label}{hint}",
            "",
            f"| target | n | median | p90 | × {first} |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in chosen:
            ratio_text = "—" if r["ratio_to_first"] is None else f"{r['ratio_to_first']:.2f}"
            lines.append(
                f"| {r['target']} | {r['n']} | {_fmt(r['median'], metric)} | "
                f"{_fmt(r['p90'], metric)} | {ratio_text} |"
            )
        lines.append("")
    reuse = {run.label: cache_reuse_by_turn(run.records) for run in runs}
    turns = sorted({t for per in reuse.values() for t in per})
    if len(turns) > 1:
        lines += [
            "### Prompt-cache reuse per turn (reused / prompt tokens)",
            "",
            "| target | " + " | ".join(f"turn {t + 1}" for t in turns) + " |",
            "| --- | " + " | ".join("---:" for _ in turns) + " |",
        ]
        for label, per in reuse.items():
            cells = [
                "—" if per.get(t) is None else f"{100 * per[t]:.0f}%"  # type: ignore[operator]
                for t in turns
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    errors = [(run.label, r) for run in runs for r in run.records if r.error is not None]
    if errors:
        lines += ["### Errors", ""]
        for label, r in errors[:20]:
            lines.append(f"- {label} `{r.prompt_id}` turn {r.turn + 1}: {r.error}")
        if len(errors) > 20:
            lines.append(f"- … and {len(errors) - 20} more (see the records)")
        lines.append("")
    lines += ["## Plots", ""]
    for name, caption in PLOTS.items():
        lines += [f"![{caption}]({name})", ""]
    lines += [
        "## How it is measured",
        "",
        "- Every prompt is one conversation; a multi-turn prompt sends each follow-up after the "
        "reply to the one before, with the earlier replies' final text in the messages.",
        "- TTFT: request sent -> first generated token (in-process targets) or first streamed "
        "chunk with text (server targets: includes HTTP and the Harmony header tokens).",
        "- Prefill tok/s: (prompt tokens - reused prompt tokens) / TTFT.",
        "- Decode tok/s: (completion tokens - 1) / (last token - first token), as the client "
        "sees them (per generation, summed, for retried turns).",
        "- Reused prompt tokens: our prompt cache's reuse, or the server's "
        "`usage.prompt_tokens_details.cached_tokens`; mlx-lm in-process starts each turn with "
        "an empty cache (0).",
        "- End-to-end tok/s: completion tokens / turn wall time (prefill included), measured "
        "alike for every target, also for a server that sends its reply in one piece.",
        "- Servers stream text, not tokens. Our server sends nothing for Harmony's header "
        "tokens (`<|channel|>analysis<|message|>` before the first text; all of a reply it "
        "cannot parse, such as a random-weight model's, comes at the end), while mlx_lm.server "
        "streams every token, markup included, as text. So our server's client-side TTFT is a "
        "few tokens later, and its decode rate reads high by up to about 4/n for an n-token "
        "reply: compare long replies, or end-to-end tok/s.",
        "- Reasoning tokens: tokens of the analysis channel (in-process: its content tokens; "
        "servers: `usage.completion_tokens_details.reasoning_tokens`, which for ours includes "
        "the channel's header tokens; — when a server does not say).",
        "- Peak memory: MLX's peak for in-process targets; the server process's peak RSS "
        "(Linux VmHWM) for server targets. Unknown values are —, never 0.",
        "",
    ]
    return "\n".join(lines)


def write_plots(runs: Sequence[Run], out: str | os.PathLike[str]) -> list[Path]:
    """The four PNGs (Agg backend, 6x4 in at 100 dpi); returns their paths."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    good = {run.label: [r for r in run.records if r.error is None] for run in runs}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {label: colors[i % len(colors)] for i, label in enumerate(good)}
    paths = []

    def finish(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=_DPI)
        plt.close(fig)
        paths.append(path)

    # 1. decode tok/s per target
    fig, ax = plt.subplots(figsize=_SIZE)
    labels = [label for label, rs in good.items() if any(r.decode_tokens_per_s for r in rs)]
    data = [
        [r.decode_tokens_per_s for r in good[label] if r.decode_tokens_per_s] for label in labels
    ]
    if data:
        box = ax.boxplot(data, showfliers=True, patch_artist=True)
        ax.set_xticks(range(1, len(labels) + 1), labels)
        for patch, label in zip(box["boxes"], labels, strict=True):
            patch.set_facecolor(color[label])
            patch.set_alpha(0.5)
        for i, values in enumerate(data, start=1):
            median = percentile(values, 50)
            ax.annotate(f"{median:.0f}", (i, median), xytext=(28, -4), textcoords="offset points")
    else:
        ax.text(0.5, 0.5, "no decode rates", ha="center", transform=ax.transAxes)
    ax.set_ylabel("decode tokens/s (per turn)")
    ax.set_title(PLOTS["decode_tps.png"])
    ax.grid(axis="y", alpha=0.3)
    finish(fig, "decode_tps.png")

    # 2. TTFT distribution (empirical CDF)
    fig, ax = plt.subplots(figsize=_SIZE)
    spread = []
    for label, rs in good.items():
        values = sorted(r.ttft_s for r in rs if r.ttft_s is not None)
        if not values:
            continue
        spread += values
        ys = [(i + 1) / len(values) for i in range(len(values))]
        ax.step(values, ys, where="post", label=label, color=color[label])
    if spread and min(spread) > 0 and max(spread) / min(spread) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("TTFT (s)")
    ax.set_ylabel("share of turns")
    ax.set_ylim(0, 1.02)
    ax.set_title(PLOTS["ttft.png"])
    ax.grid(alpha=0.3)
    if spread:
        ax.legend()
    finish(fig, "ttft.png")

    # 3. prompt-cache reuse per turn
    fig, ax = plt.subplots(figsize=_SIZE)
    reuse = {label: cache_reuse_by_turn(rs) for label, rs in good.items()}
    turns = sorted({t for per in reuse.values() for t in per})
    width = 0.8 / max(len(reuse), 1)
    for i, (label, per) in enumerate(reuse.items()):
        xs = [t + (i - (len(reuse) - 1) / 2) * width for t in turns if per.get(t) is not None]
        ys = [100 * per[t] for t in turns if per.get(t) is not None]  # type: ignore[operator]
        shown = label if xs else f"{label} (not reported)"
        bars = ax.bar(xs, ys, width=width, label=shown, color=color[label])
        ax.bar_label(bars, fmt="%.0f", fontsize="x-small", padding=1)
    ax.set_xticks(turns, [f"turn {t + 1}" for t in turns])
    ax.set_ylabel("prompt tokens reused from cache (%)")
    ax.set_ylim(0, 105)
    ax.set_title(PLOTS["cache_reuse.png"])
    ax.grid(axis="y", alpha=0.3)
    if reuse:
        ax.legend(fontsize="small")
    finish(fig, "cache_reuse.png")

    # 4. decode tok/s against context length
    fig, ax = plt.subplots(figsize=_SIZE)
    any_points = False
    for label, rs in good.items():
        points = [
            (r.context_tokens, r.decode_tokens_per_s)
            for r in rs
            if r.context_tokens is not None and r.decode_tokens_per_s
        ]
        if points:
            any_points = True
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, s=12, alpha=0.6, label=label, color=color[label])
    ax.set_xlabel("context tokens at the start of the turn")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(PLOTS["tps_vs_context.png"])
    ax.grid(alpha=0.3)
    if any_points:
        ax.legend()
    finish(fig, "tps_vs_context.png")
    return paths


def write_report(
    paths: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] | None = None,
    title: str = "Benchmark report",
    command: str | None = None,
) -> Path:
    """Write report.md, summary.json and the plots into `out` (default: the first path);
    returns the markdown file."""
    runs = load_runs(paths)
    folder = Path(out) if out is not None else Path(paths[0])
    folder.mkdir(parents=True, exist_ok=True)
    write_plots(runs, folder)
    summary = {
        "runs": [
            {
                "label": run.label,
                "folder": os.path.relpath(run.folder, folder),
                "turns": len(run.records),
                "errors": sum(1 for r in run.records if r.error is not None),
                "aggregate_completion_tokens_per_s": (
                    run.info.aggregate_completion_tokens_per_s if run.info else None
                ),
                "cache_reuse_by_turn": {
                    str(t + 1): v for t, v in cache_reuse_by_turn(run.records).items()
                },
            }
            for run in runs
        ],
        "metrics": summary_table(runs),
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    path = folder / "report.md"
    path.write_text(render_markdown(runs, title=title, command=command), encoding="utf-8")
    return path
