"""``mlx-harmony-bench``: run the prompt set on targets, report on runs, profile a target.

mlx-harmony-bench run --target local,server,mlx-lm,mlx-lm-server --limit 20 --out DIR
mlx-harmony-bench report DIR [DIR ...] [--out DIR]
mlx-harmony-bench profile --target local --limit 5 --out DIR
mlx-harmony-bench batching --concurrency 1,2,4,8,16 --out DIR
mlx-harmony-bench server-overhead --concurrency 1,4 --rounds 3 --out DIR
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from .prompts import PromptSetError, load_prompts, select_prompts
from .records import TARGETS
from .servers import ServerStartError
from .targets import DEFAULT_MAX_TOKENS, BenchSettings, Target

__all__ = ["build_parser", "main"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _targets(values: Sequence[str]) -> list[str]:
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if not name:
                continue
            if name not in TARGETS:
                raise SystemExit(
                    f"mlx-harmony-bench: unknown target {name!r}; choose from {', '.join(TARGETS)}"
                )
            if name not in names:
                names.append(name)
    return names or list(TARGETS)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", help="model folder or Hugging Face repo (default: demo model)")
    group.add_argument("--profile", help="a profile name from --profiles (model + prompt config)")
    group.add_argument("--profiles", help="profiles JSON file for --profile")
    group.add_argument("--prompt-config", help="our prompt config JSON (local and server targets)")
    group.add_argument(
        "--max-tokens",
        type=_positive,
        help=f"every turn's budget (default: the prompt's own, else {DEFAULT_MAX_TOKENS})",
    )
    group.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)"
    )
    group.add_argument(
        "--retries",
        choices=("cli", "none"),
        default="cli",
        help="local target's retry policy: the chat CLI's (default) or none",
    )
    group.add_argument(
        "--startup-timeout",
        type=float,
        default=600.0,
        help="seconds a server may take to load and answer (default 600)",
    )
    group.add_argument(
        "--max-concurrency",
        type=_positive,
        help="pass --max-concurrency N to mlx-harmony-server (if this build has the flag)",
    )


def _add_prompt_options(parser: argparse.ArgumentParser, *, limit: int | None) -> None:
    group = parser.add_argument_group("prompts")
    group.add_argument("--prompts", help="prompt set JSONL (default: the shipped set)")
    group.add_argument(
        "--limit",
        type=_positive,
        default=limit,
        help="run the first N prompts, taken round-robin over categories"
        + (f" (default {limit})" if limit else " (default: all)"),
    )
    group.add_argument(
        "--category", action="append", help="only prompts of this category (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-harmony-bench",
        description="Run one prompt set through our CLI stack, our server, mlx-lm and "
        "mlx_lm.server; write per-turn records, reports and plots.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the prompts on one or more targets")
    run.add_argument(
        "--target",
        action="append",
        default=[],
        help=f"{', '.join(TARGETS)}; comma-separated or repeated (default: all four)",
    )
    _add_model_options(run)
    _add_prompt_options(run, limit=None)
    run.add_argument(
        "--concurrency",
        type=_positive,
        default=1,
        help="concurrent streaming clients (server targets; default 1)",
    )
    run.add_argument(
        "--interleave",
        action="store_true",
        help="open every target at once and run each prompt on each in turn, so load changes "
        "hit them alike (needs memory for all the models; concurrency 1)",
    )
    run.add_argument("--warmup", type=int, default=1, help="unmeasured warm-up requests (1)")
    run.add_argument(
        "--out", help="results folder (default bench-results/<date-time>); one subfolder a target"
    )
    run.add_argument("--no-report", action="store_true", help="write no report at the end")
    run.add_argument("--title", default="Benchmark report", help="the report's title")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    report = sub.add_parser("report", help="markdown summary and PNG plots from run folders")
    report.add_argument("runs", nargs="+", help="run folders, or folders of run folders")
    report.add_argument("--out", help="where to write (default: the first folder)")
    report.add_argument("--title", default="Benchmark report")

    profile = sub.add_parser("profile", help="run one target under cProfile or pyinstrument")
    profile.add_argument("--target", default="local", choices=TARGETS)
    _add_model_options(profile)
    _add_prompt_options(profile, limit=5)
    profile.add_argument("--tool", choices=("cprofile", "pyinstrument"), default="cprofile")
    profile.add_argument("--top", type=_positive, default=40, help="functions in the summary")
    profile.add_argument("--out", default="bench-profile", help="folder (default bench-profile)")

    for name, (targets, levels, per_client, rounds, description) in SWEEPS.items():
        sweep = sub.add_parser(name, help=description, description=description)
        sweep.add_argument(
            "--target",
            action="append",
            default=[],
            help=f"targets side by side, the first is the reference (default {targets})",
        )
        _add_model_options(sweep)
        # no retries: a reply cut at max_tokens is what a sweep asks for (our server's policy)
        sweep.set_defaults(max_tokens=128, retries="none")
        group = sweep.add_argument_group("sweep")
        group.add_argument(
            "--concurrency", default=levels, help=f"client counts, comma-separated ({levels})"
        )
        group.add_argument(
            "--requests-per-client",
            type=_positive,
            default=per_client,
            help=f"requests per client at each level ({per_client})",
        )
        group.add_argument(
            "--rounds", type=_positive, default=rounds, help=f"repeats; medians ({rounds})"
        )
        if name == "server-overhead":
            group.add_argument(
                "--natural-stops",
                action="store_true",
                help="let the model stop (default: end tokens banned, replies run to max_tokens)",
            )
        else:
            group.add_argument(
                "--ban-end-tokens", action="store_true", help="replies run to max_tokens"
            )
        group.add_argument(
            "--one-at-a-time",
            action="store_true",
            help="open one target at a time (a model that fits in memory only once)",
        )
        group.add_argument("--prompts", help="prompt set JSONL (default: the shipped set)")
        group.add_argument(
            "--out", help=f"results folder (default bench-results/{name}-<date-time>)"
        )
    return parser


SWEEPS: dict[str, tuple[str, str, int, int, str]] = {
    "batching": (
        "server,mlx-lm-server",
        "1,2,4,8,16",
        2,
        1,
        "aggregate tokens/s by concurrent clients: our server against mlx_lm.server",
    ),
    "server-overhead": (
        "local,server,mlx-lm-server",
        "1,4",
        1,
        3,
        "the same turns in-process and through our server (and mlx_lm.server): the server's "
        "cost as a ratio of tokens/s",
    ),
}
"""Each sweep command's defaults: targets, client counts, requests per client, rounds, help."""


def _settings(args: argparse.Namespace) -> BenchSettings:
    return BenchSettings(
        model=args.model,
        prompt_config=args.prompt_config,
        profile=args.profile,
        profiles=args.profiles,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        retries=args.retries,
        startup_timeout=args.startup_timeout,
        max_concurrency=args.max_concurrency,
    )


def _command_line(argv: Sequence[str] | None) -> str:
    words = list(argv) if argv is not None else sys.argv[1:]
    return shlex.join(["mlx-harmony-bench", *words])


def _update_manifest(out: Path, names: Sequence[str]) -> list[str]:
    manifest = out / "runs.json"
    known: list[str] = []
    if manifest.is_file():
        known = list(json.loads(manifest.read_text(encoding="utf-8")).get("runs", []))
    order = known + [n for n in names if n not in known]
    manifest.write_text(json.dumps({"runs": order}, indent=2) + "\n", encoding="utf-8")
    return order


def _run(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from .report import write_report
    from .runner import run_interleaved, run_target

    targets = _targets(args.target)
    prompts = select_prompts(load_prompts(args.prompts), limit=args.limit, categories=args.category)
    out = Path(args.out or Path("bench-results") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(args)
    command = _command_line(argv)
    turns = sum(len(p.turns) for p in prompts)
    print(
        f"mlx-harmony-bench: {len(prompts)} prompts ({turns} turns) on {', '.join(targets)}, "
        f"concurrency {args.concurrency}, into {out}",
        file=sys.stderr,
    )
    status = 0
    finished: list[str] = []
    results = {}
    if args.interleave:
        if args.concurrency != 1:
            raise SystemExit("mlx-harmony-bench: --interleave runs one client; drop --concurrency")
        try:
            results = run_interleaved(
                targets,
                prompts,
                settings,
                out=out,
                warmup=args.warmup,
                command_line=shlex.split(command),
                progress=not args.no_progress,
            )
        except (ServerStartError, ValueError, RuntimeError) as error:
            print(f"mlx-harmony-bench: the interleaved run failed: {error}", file=sys.stderr)
            return 1
    else:
        for name in targets:
            try:
                results[name] = run_target(
                    name,
                    prompts,
                    settings,
                    out=out / name,
                    concurrency=args.concurrency,
                    warmup=args.warmup,
                    command_line=shlex.split(command),
                    progress=not args.no_progress,
                )
            except (ServerStartError, ValueError, RuntimeError) as error:
                print(f"mlx-harmony-bench: {name} failed: {error}", file=sys.stderr)
                status = 1
    for name, result in results.items():
        finished.append(name)
        rate = result.aggregate_tokens_per_s
        print(
            f"mlx-harmony-bench: {name}: {len(result.records)} turns, {result.errors} errors, "
            f"{result.completion_tokens} completion tokens in {result.measured_s:.1f} s"
            + (f" ({rate:.1f} tok/s aggregate)" if rate else ""),
            file=sys.stderr,
        )
        if result.errors:
            status = 1
    if not finished:
        return 1
    _update_manifest(out, finished)
    if not args.no_report:
        path = write_report([out], title=args.title, command=command)
        print(f"mlx-harmony-bench: report in {path}", file=sys.stderr)
    return status


def _report(args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    from .report import write_report

    try:
        path = write_report(args.runs, out=args.out, title=args.title, command=_command_line(argv))
    except (FileNotFoundError, ValueError) as error:
        print(f"mlx-harmony-bench: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _profile(args: argparse.Namespace) -> int:
    from .profiling import profile_target

    prompts = select_prompts(load_prompts(args.prompts), limit=args.limit, categories=args.category)
    try:
        files = profile_target(
            args.target, prompts, _settings(args), out=args.out, tool=args.tool, top=args.top
        )
    except (ServerStartError, ValueError, RuntimeError) as error:
        print(f"mlx-harmony-bench: {error}", file=sys.stderr)
        return 1
    for path in files:
        print(path)
    return 0


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(sorted({int(c) for c in text.split(",") if c.strip()}))
    except ValueError:
        raise SystemExit(
            f"mlx-harmony-bench: --concurrency takes whole numbers like 1,2,4, got {text!r}"
        ) from None
    if not levels or levels[0] < 1:
        raise SystemExit(f"mlx-harmony-bench: --concurrency values must be >= 1, got {text!r}")
    return levels


def _sweep_config(settings: BenchSettings, out: Path, *, ban_end_tokens: bool) -> Path:
    """The prompt config the sweep's in-process and server targets share, written into `out`."""
    from .sweep import sweep_prompt_config
    from .targets import resolve_model

    choice = resolve_model(settings)
    base: dict[str, object] = {}
    if choice.prompt_config_path is not None:
        base = json.loads(Path(choice.prompt_config_path).read_text(encoding="utf-8"))
    elif choice.prompt_config is not None:
        base = choice.prompt_config.model_dump(mode="json", exclude_unset=True)
    path = out / "prompt-config.json"
    config = sweep_prompt_config(base, ban_end_tokens=ban_end_tokens)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _ratio_or_none(top: dict[str, object] | None, bottom: dict[str, object] | None) -> float | None:
    """Aggregate tokens/s of `top` over `bottom` (median rows), None when either is missing."""
    a = top and top.get("aggregate_tokens_per_s")
    b = bottom and bottom.get("aggregate_tokens_per_s")
    return a / b if isinstance(a, float) and isinstance(b, float) and b else None


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import NEVER_END, SweepPlan, SweepRow, median_rows, run_sweep, write_sweep
    from .targets import open_target, resolve_model

    name = args.command
    names = _targets(args.target or [SWEEPS[name][0]])
    levels = _levels(args.concurrency)
    ban = not args.natural_stops if name == "server-overhead" else args.ban_end_tokens
    plan = SweepPlan(
        name=name,
        levels=levels,
        requests_per_client=args.requests_per_client,
        rounds=args.rounds,
        ban_end_tokens=ban,
    )
    out = Path(args.out or Path("bench-results") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}")
    out.mkdir(parents=True, exist_ok=True)
    settings = replace(
        _settings(args),
        out=out,
        max_concurrency=args.max_concurrency or levels[-1],
        extra_body={"logit_bias": NEVER_END} if ban else {},
    )
    settings = replace(
        settings, prompt_config=str(_sweep_config(settings, out, ban_end_tokens=ban))
    )
    model = resolve_model(settings).model
    pool = [p for p in load_prompts(args.prompts) if len(p.turns) == 1]
    pool = [p for p in pool if p.category != "long-context"] or pool
    print(
        f"mlx-harmony-bench {name}: {', '.join(names)}; model {model}; clients {list(levels)}; "
        f"{plan.requests_per_client} request(s) per client; max_tokens {settings.max_tokens}; "
        f"rounds {plan.rounds}; into {out}",
        file=sys.stderr,
    )

    def show(row: SweepRow) -> None:
        print(
            f"  round {row.round + 1} {row.target:<14} x{row.clients:<3} "
            f"{row.completion_tokens:>6} tok in {row.seconds:.2f} s = "
            f"{row.aggregate_tokens_per_s or 0:.1f} tok/s, {row.errors} errors",
            file=sys.stderr,
        )

    rows: list[SweepRow] = []
    notes: dict[str, dict[str, object]] = {}
    groups = [[n] for n in names] if args.one_at_a_time else [names]
    try:
        for group in groups:
            with ExitStack() as stack:
                targets: dict[str, Target] = {}
                for n in group:
                    targets[n] = stack.enter_context(open_target(n, settings))
                    notes[n] = {k: v for k, v in targets[n].notes.items() if k != "log"}
                rows += run_sweep(targets, pool, settings, plan, records_dir=out, on_row=show)
    except (ServerStartError, ValueError, RuntimeError) as error:
        print(f"mlx-harmony-bench {name}: {error}", file=sys.stderr)
        return 1
    extra = [
        f"Note: {note['max_concurrency_note']}."
        for note in notes.values()
        if note.get("max_concurrency_note")
    ]
    merged = median_rows(rows)
    ratio = _ratio_or_none(merged.get(("server", 1)), merged.get(("local", 1)))
    if ratio is not None:
        extra.append(f"server / local at 1 client: {ratio:.3f} (1.0: the server costs nothing).")
    text = write_sweep(
        out,
        plan,
        model=model,
        max_tokens=settings.max_tokens,
        rows=rows,
        names=names,
        notes=notes,
        title=SWEEPS[name][4][0].upper() + SWEEPS[name][4][1:],
        extra_notes=extra,
    )
    print("\n" + text)
    return 1 if any(r.errors for r in rows) else 0


def _terminate_as_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """The exit status: 0, 1 when a target or a turn failed, 2 for a usage error, 130 on
    Ctrl-C. Servers started here are stopped on every way out."""
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate_as_exit)  # run the `finally`s, stop servers
    try:
        if args.command == "run":
            return _run(args, argv)
        if args.command == "report":
            return _report(args, argv)
        if args.command in SWEEPS:
            return _sweep(args)
        return _profile(args)
    except PromptSetError as error:
        print(f"mlx-harmony-bench: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mlx-harmony-bench: interrupted; servers stopped", file=sys.stderr)
        return 130
