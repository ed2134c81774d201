"""Running prompts through a target: one client, or C concurrent clients, with a progress bar.

`run_prompts` is the measuring loop (the one the ``batching`` and ``server-overhead`` sweeps
build on);
`run_target` opens a target, warms it up, runs the set and writes a run folder
(``records.jsonl``, ``run.json``, the server's log); `run_interleaved` does the same for
several targets at once, prompt by prompt, so they share the machine's ups and downs.
"""

from __future__ import annotations

import contextlib
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .prompts import Prompt
from .records import (
    RECORDS_FILE,
    RUN_FILE,
    RunInfo,
    TurnRecord,
    git_commit,
    machine_info,
    package_versions,
    portable_path,
    scrub_paths,
    utc_now,
)
from .targets import WARMUP_PROMPT, BenchSettings, Target, open_target, resolve_model

__all__ = ["RunResult", "TargetDiedError", "run_interleaved", "run_prompts", "run_target"]


class TargetDiedError(RuntimeError):
    """The server process ended in the middle of the run."""


@dataclass
class RunResult:
    """The records of one run of prompts on one target, and its run-level numbers."""

    target: str
    records: list[TurnRecord]
    concurrency: int
    measured_s: float
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens or 0 for r in self.records if r.error is None)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.records if r.error is not None)

    @property
    def aggregate_tokens_per_s(self) -> float | None:
        """All completion tokens over the wall time of the measured requests."""
        return self.completion_tokens / self.measured_s if self.measured_s > 0 else None


def run_prompts(
    target: Target,
    prompts: Sequence[Prompt],
    settings: BenchSettings,
    *,
    concurrency: int = 1,
    on_turn: Callable[[TurnRecord], None] | None = None,
) -> RunResult:
    """Run every prompt (each a conversation) on `target`.

    With ``concurrency`` C > 1, C client threads take conversations from one queue (a server
    target only: in-process targets run one turn at a time). A server that dies stops the run
    with `TargetDiedError`; a failed turn is recorded with its error and the run goes on.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if concurrency > 1 and not target.concurrent:
        raise ValueError(
            f"target {target.name} runs in this process, one turn at a time; use "
            "--concurrency 1, or a server target (server, mlx-lm-server) for concurrent clients"
        )
    records: list[TurnRecord] = []
    lock = threading.Lock()

    def keep(record: TurnRecord) -> None:
        with lock:
            records.append(record)
        if on_turn is not None:
            on_turn(record)

    def check_alive() -> None:
        server = getattr(target, "server", None)
        if server is None:
            return
        if records and records[-1].error is not None and server.process is not None:
            # A server that drops the connection as it exits may still be exiting: give it a
            # moment, so its death is told apart from a failed turn.
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.process.wait(timeout=2)
        if not server.alive():
            status = server.process.returncode if server.process is not None else None
            raise TargetDiedError(
                f"{server.name} exited (status {status}) during the run; "
                f"see its log {server.log_path}"
            )

    started = time.perf_counter()
    if concurrency == 1:
        for prompt in prompts:
            target.run_conversation(
                prompt, max_tokens=settings.budget(prompt), client=0, on_turn=keep
            )
            check_alive()
    else:
        work: queue.SimpleQueue[Prompt] = queue.SimpleQueue()
        for prompt in prompts:
            work.put(prompt)
        failures: list[BaseException] = []
        stop = threading.Event()

        def client(index: int) -> None:
            try:
                while not stop.is_set():
                    try:
                        prompt = work.get_nowait()
                    except queue.Empty:
                        return
                    target.run_conversation(
                        prompt, max_tokens=settings.budget(prompt), client=index, on_turn=keep
                    )
                    check_alive()
            except BaseException as error:
                failures.append(error)
                stop.set()

        threads = [
            threading.Thread(target=client, args=(i,), name=f"bench-client-{i}", daemon=True)
            for i in range(concurrency)
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:
            stop.set()
            raise
        if failures:
            raise failures[0]
    measured = time.perf_counter() - started
    return RunResult(target.name, records, concurrency, measured, dict(target.notes))


def _progress(total: int, label: str) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=False,
    )
    task = progress.add_task(label, total=total, status="")
    return progress, task


class _RecordSink:
    """A run folder's records.jsonl, written as turns finish (a crash keeps what ran), and
    the progress bar's counts."""

    def __init__(self, out: Path, bar: Any, task: Any) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.file = open(out / RECORDS_FILE, "w", encoding="utf-8")  # noqa: SIM115
        self.lock = threading.Lock()
        self.bar, self.task = bar, task
        self.turns = self.errors = self.tokens = 0

    def __call__(self, record: TurnRecord) -> None:
        with self.lock:
            self.file.write(record.model_dump_json() + "\n")
            self.file.flush()
            self.turns += 1
            self.errors += record.error is not None
            self.tokens += record.completion_tokens or 0
            if self.bar is not None:
                self.bar.update(
                    self.task, advance=1, status=f"{self.tokens} tok, {self.errors} errors"
                )

    def close(self) -> None:
        self.file.close()


def _warm_up(name: str, target: Target, count: int) -> None:
    for i in range(count):
        warm = Prompt(
            id=f"warmup-{i}", category="warmup", turns=(f"{WARMUP_PROMPT.turns[0]} ({i})",)
        )
        for record in target.run_conversation(warm, max_tokens=32):
            if record.error is not None:
                raise RuntimeError(f"the warm-up request failed on {name}: {record.error}")


def _write_run_info(
    name: str,
    out: Path,
    settings: BenchSettings,
    prompts: Sequence[Prompt],
    result: RunResult,
    *,
    warmup: int,
    started_at: str,
    command_line: Sequence[str] | None,
    interleaved: Sequence[str] = (),
) -> None:
    choice = resolve_model(settings)
    info = RunInfo(
        target=name,
        model=portable_path(choice.model),
        settings={
            "prompt_config": scrub_paths(choice.prompt_config_path),
            "profile": settings.profile,
            "max_tokens": settings.max_tokens,
            "temperature": settings.temperature,
            "retries": settings.retries,
            "warmup": warmup,
            "interleaved_with": [n for n in interleaved if n != name],
            "prompt_ids": [p.id for p in prompts],
            "target_notes": scrub_paths(_jsonable(result.notes)),
        },
        command_line=scrub_paths(list(command_line if command_line is not None else sys.argv)),
        git_commit=git_commit(),
        versions=package_versions(),
        machine=machine_info(),
        started_at=started_at,
        ended_at=utc_now(),
        concurrency=result.concurrency,
        prompts=len(prompts),
        turns=len(result.records),
        errors=result.errors,
        measured_s=round(result.measured_s, 4),
        completion_tokens=result.completion_tokens,
        aggregate_completion_tokens_per_s=result.aggregate_tokens_per_s,
        server_log=Path(result.notes["log"]).name if result.notes.get("log") else None,
    )
    (out / RUN_FILE).write_text(info.model_dump_json(indent=2) + "\n", encoding="utf-8")


def run_target(
    name: str,
    prompts: Sequence[Prompt],
    settings: BenchSettings,
    *,
    out: str | Path,
    concurrency: int = 1,
    warmup: int = 1,
    command_line: Sequence[str] | None = None,
    progress: bool = True,
) -> RunResult:
    """Open target `name`, warm it up, run `prompts`, write ``out``/records.jsonl and
    run.json; the server (if any) is stopped whatever happens."""
    out = Path(out)
    settings = replace(settings, out=out)
    started_at = utc_now()
    resolve_model(settings)  # a bad --model or --profile fails before anything starts
    bar, task = _progress(sum(len(p.turns) for p in prompts), name) if progress else (None, None)
    sink = _RecordSink(out, bar, task)
    try:
        if bar is not None:
            bar.start()
            bar.update(task, status="starting")
        with open_target(name, settings) as target:
            _warm_up(name, target, warmup)
            if bar is not None:
                bar.update(task, status="")
            result = run_prompts(target, prompts, settings, concurrency=concurrency, on_turn=sink)
    finally:
        sink.close()
        if bar is not None:
            bar.stop()
    _write_run_info(
        name,
        out,
        settings,
        prompts,
        result,
        warmup=warmup,
        started_at=started_at,
        command_line=command_line,
    )
    return result


def run_interleaved(
    names: Sequence[str],
    prompts: Sequence[Prompt],
    settings: BenchSettings,
    *,
    out: str | Path,
    warmup: int = 1,
    command_line: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, RunResult]:
    """Every target open at once; each prompt runs on each target before the next prompt,
    the first target rotating, so changes in the machine's load hit all targets alike.
    Writes ``out``/<target>/ like `run_target`; a target's measured time is the sum of its
    own conversations. Needs memory for all the models at once."""
    out = Path(out)
    settings = replace(settings, out=out)
    started_at = utc_now()
    resolve_model(settings)
    total = sum(len(p.turns) for p in prompts) * len(names)
    bar, task = _progress(total, "+".join(names)) if progress else (None, None)
    sinks = {name: _RecordSink(out / name, bar, task) for name in names}
    records: dict[str, list[TurnRecord]] = {name: [] for name in names}
    seconds = dict.fromkeys(names, 0.0)
    notes: dict[str, dict[str, Any]] = {}
    try:
        if bar is not None:
            bar.start()
            bar.update(task, status="starting")
        with ExitStack() as stack:
            targets: dict[str, Target] = {}
            for name in names:
                target = stack.enter_context(open_target(name, replace(settings, out=out / name)))
                _warm_up(name, target, warmup)
                targets[name] = target
                notes[name] = dict(target.notes)
            if bar is not None:
                bar.update(task, status="")
            for i, prompt in enumerate(prompts):
                order = list(names[i % len(names) :]) + list(names[: i % len(names)])
                for name in order:
                    t0 = time.perf_counter()
                    done = targets[name].run_conversation(
                        prompt, max_tokens=settings.budget(prompt), on_turn=sinks[name]
                    )
                    seconds[name] += time.perf_counter() - t0
                    records[name].extend(done)
                    server = getattr(targets[name], "server", None)
                    if server is not None and not server.alive():
                        raise TargetDiedError(
                            f"{server.name} exited during the run; see its log {server.log_path}"
                        )
    finally:
        for sink in sinks.values():
            sink.close()
        if bar is not None:
            bar.stop()
    results = {}
    for name in names:
        result = RunResult(name, records[name], 1, seconds[name], notes[name])
        _write_run_info(
            name,
            out / name,
            replace(settings, out=out / name),
            prompts,
            result,
            warmup=warmup,
            started_at=started_at,
            command_line=command_line,
            interleaved=names,
        )
        results[name] = result
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
