"""``mlx-harmony-migrate-chat``: migrate, check or downgrade chat logs, one file or a folder.

Exit status: 0 all good, 1 consistency findings (files with only warnings are still migrated,
files with errors are left alone), 2 a usage error or a file that cannot be read, parsed,
migrated or written (that file is left untouched, and a folder run goes on with the next
file). Each problem is one line naming the file, the place and the problem; never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass, field
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any, TextIO

from mlx_harmony.chat_history.checks import check_chat
from mlx_harmony.chat_history.errors import ChatLogError
from mlx_harmony.chat_history.meaning import meaning, meaning_difference
from mlx_harmony.chat_history.migrations import (
    LATEST_VERSION,
    Shape,
    detect_shape,
    migrate,
    validate_version,
)
from mlx_harmony.chat_history.models import HYPERPARAMETER_ROLES, ChatLog
from mlx_harmony.chat_history.storage import (
    chat_lock,
    dumps_chat,
    parse_json,
    write_atomic,
)

__all__ = ["PROG", "main", "make_parser"]

PROG = "mlx-harmony-migrate-chat"

OK, FINDINGS, FAILED = 0, 1, 2


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Migrate mlx-harmony chat logs to the latest schema (or the one given by --to), "
            "in place, keeping the original beside each file as NAME.vN.bak. A folder means "
            "every *.json file directly inside it."
        ),
        epilog="exit status: 0 ok, 1 consistency findings, 2 usage or I/O error",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="a chat log or a folder of them")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="print what would change and write nothing"
    )
    mode.add_argument(
        "--check", action="store_true", help="only run the consistency checks; write nothing"
    )
    parser.add_argument(
        "--to",
        type=int,
        metavar="N",
        help=f"the schema version to write (1 to {LATEST_VERSION}; default {LATEST_VERSION})",
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="write the migrated files into DIR instead of in place (no backups needed)",
    )
    parser.add_argument("--version", action="version", version=_version_text())
    return parser


def _version_text() -> str:
    return f"{PROG} {_version('mlx-harmony-chat-history')} (schema v1 to v{LATEST_VERSION})"


@dataclass
class _Run:
    args: argparse.Namespace
    out: TextIO
    err: TextIO
    written: dict[Path, Path] = field(default_factory=dict)  # destination -> source
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def fail(self, line: object) -> int:
        print(line, file=self.err)
        self.count("failed")
        return FAILED


def _log_files(folder: Path) -> list[Path]:
    # Hidden names are left out: temp files of interrupted saves are ``.NAME.<random>.tmp``.
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix == ".json" and not p.name.startswith(".") and p.is_file()
    )


def _describe(log: ChatLog, source_version: int, target: int) -> str:
    messages = [m for chat in log.ordered_chats() for m in chat.messages]
    n = len(messages)
    chats = f"{len(log.chats)} chats, " if len(log.chats) > 1 else ""
    if target != LATEST_VERSION:
        return f"{chats}{n} messages"
    calls = sum(1 for m in messages if m.role == "tool" and m.tool_call_id)
    carriers = [m for m in messages if m.role in HYPERPARAMETER_ROLES]
    stored = sum(1 for m in carriers if m.hyperparameters or m.hyperparameters_unset)
    branches = sum(len(chat.leaves()) for chat in log.ordered_chats())
    parts = [f"{chats}{n} messages"]
    if branches > len(log.chats):
        parts.append(f"{branches} branches")
    if source_version < LATEST_VERSION:
        parts.append(f"{calls} tool results paired with their calls")
        parts.append(f"hyperparameters stored on {stored} of {len(carriers)} assistant/tool turns")
    return ", ".join(parts)


def _process(run: _Run, path: Path) -> int:
    """One file, under its lock when it is rewritten in place; any failure is one line."""
    try:
        return _process_unlocked(run, path)
    except ChatLogError as exc:
        exc.file = exc.file or str(path)
        return run.fail(exc)
    except RecursionError:
        return run.fail(f"{path}: top level: nested too deeply to be a chat log")
    except Exception as exc:  # a bug: still one line, and the next file goes on
        return run.fail(
            f"{path}: file: unexpected {type(exc).__name__}: {' '.join(str(exc).split())}; "
            "the file is untouched (please report this as a bug)"
        )


def _process_unlocked(run: _Run, path: Path) -> int:
    args = run.args
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return run.fail(f"{path}: file: cannot read the file: {exc.strerror or exc}")
    try:
        data = parse_json(raw, file=path)
        shape = detect_shape(data)
        version = shape.version
        log = validate_version(ChatLog, migrate(data))
    except ChatLogError as exc:
        exc.file = exc.file or str(path)
        return run.fail(exc)

    findings = check_chat(log)
    for finding in findings:
        print(f"{path}: {finding}", file=run.out)
    status = FINDINGS if findings else OK
    if findings:
        run.count("with findings")
    if args.check:
        if not findings:
            n = sum(len(chat.messages) for chat in log.chats.values())
            print(f"{path}: ok ({shape}, {n} messages)", file=run.out)
        return status
    errors = sum(1 for f in findings if f.is_error)
    if errors:
        print(
            f"{path}: not migrated: fix the {errors} error{'s' if errors > 1 else ''} above "
            "first (the file is untouched)",
            file=run.err,
        )
        return status

    target = LATEST_VERSION if args.to is None else args.to
    dest = Path(args.output) / path.name if args.output else path
    in_place = dest.resolve() == path.resolve()
    current = version == target and shape is not Shape.ORIGINAL_V2
    if current:
        if in_place:
            print(f"{path}: already v{version}, nothing to do", file=run.out)
            run.count("already current")
            return status
        text = raw  # a copy elsewhere keeps the bytes as they are
        result: Any = None
    else:
        result = log if target == LATEST_VERSION else migrate(data, to=target)
        if not isinstance(result, ChatLog):
            _refuse_non_json(result)
        difference = meaning_difference(meaning(data), meaning(result))
        if difference:
            return run.fail(
                f"{path}: {difference}: migrating would change this, so the file is left "
                "untouched; please report it as a bug"
            )
        if isinstance(result, ChatLog):
            text = dumps_chat(result).encode()
        else:
            text = (json.dumps(result, indent=2, ensure_ascii=False) + "\n").encode()

    if dest in run.written:
        return run.fail(
            f"{path}: file: {dest} was already written from {run.written[dest]}; "
            "migrate files with the same name into different --output folders"
        )
    backup = path.with_name(f"{path.name}.v{version}.bak") if in_place else None
    keep = f", keeping the original as {backup}" if backup else ""
    source = "original v2" if shape is Shape.ORIGINAL_V2 else f"v{version}"
    if current:
        done = f"already v{version}, copied to {dest}"
        planned = f"already v{version}, would copy it to {dest}"
    else:
        details = _describe(log, version, target)
        done = f"{source} -> v{target} ({details}), wrote {dest}{keep}"
        planned = (
            f"would migrate {source} -> v{target} ({details}; {len(raw)} -> {len(text)} "
            f"bytes), writing {dest}{keep}"
        )
    if args.dry_run:
        print(f"{path}: {planned}", file=run.out)
        run.written[dest] = path
        run.count("would migrate")
        return status

    try:
        # the read-modify-write of a log in place holds its lock, and starts from what it read
        with chat_lock(path) if in_place else contextlib.nullcontext():
            if in_place and path.read_bytes() != raw:
                return run.fail(
                    f"{path}: file: another program wrote the file while it was being "
                    "migrated; run again (the file is as the other program left it)"
                )
            if backup is not None:
                if backup.exists():
                    if backup.read_bytes() != raw:
                        return run.fail(
                            f"{path}: file: the backup {backup} already exists and differs; "
                            "move it away and run again (the file is untouched)"
                        )
                else:
                    write_atomic(backup, raw)
            write_atomic(dest, text)
    except OSError as exc:
        where = exc.filename or dest
        return run.fail(f"{where}: file: cannot write: {exc.strerror or exc} ({path} is untouched)")
    run.written[dest] = path
    print(f"{path}: {done}", file=run.out)
    run.count("migrated")
    return status


def _refuse_non_json(value: Any) -> None:
    """Raise ``ChatLogError`` for a value JSON cannot hold (Infinity, NaN) in a migrated dict."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError as exc:
        raise ChatLogError(
            f"{exc}; use a finite number or leave the value out", place="top level"
        ) from exc


def main(argv: list[str] | None = None) -> int:
    """Run the command on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    out, err = sys.stdout, sys.stderr
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else FAILED
    if args.to is not None and not 1 <= args.to <= LATEST_VERSION:
        print(f"{PROG}: --to must be a version from 1 to {LATEST_VERSION}, got {args.to}", file=err)
        return FAILED
    if args.check and (args.to is not None or args.output):
        print(f"{PROG}: --check writes nothing, so it takes neither --to nor --output", file=err)
        return FAILED

    run = _Run(args, out, err)
    if args.output:
        output = Path(args.output)
        if output.exists() and not output.is_dir():
            print(f"{output}: file: --output must be a folder, and this is a file", file=err)
            return FAILED
        if not args.dry_run:
            try:
                output.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                print(
                    f"{output}: file: cannot create the --output folder: {exc.strerror or exc}",
                    file=err,
                )
                return FAILED

    status = OK
    for name in args.paths:
        path = Path(name)
        if path.is_dir():
            try:
                files = _log_files(path)
            except OSError as exc:
                status = max(
                    status, run.fail(f"{path}: file: cannot list the folder: {exc.strerror or exc}")
                )
                continue
            if not files:
                print(f"{path}: no *.json chat logs in this folder", file=out)
        elif path.exists():
            files = [path]
        else:
            status = max(status, run.fail(f"{path}: file: no such file or folder"))
            continue
        for file in files:
            status = max(status, _process(run, file))

    if run.counts:
        order = ("migrated", "would migrate", "already current", "with findings", "failed")
        summary = ", ".join(f"{run.counts[w]} {w}" for w in order if w in run.counts)
        print(f"{PROG}: {summary}", file=out)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
