"""Reading and writing chat logs: any version in, the latest version out, crash-safe writes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlx_harmony.chat_history.checks import Finding, check_chat
from mlx_harmony.chat_history.errors import ChatLogError, ChatLogWarning
from mlx_harmony.chat_history.migrations import migrate, validate_version
from mlx_harmony.chat_history.models import ChatLog

__all__ = [
    "TEMP_SUFFIX",
    "dumps_chat",
    "is_temp_file",
    "load_chat",
    "loads_chat",
    "parse_json",
    "save_chat",
    "write_atomic",
]

#: Temp files are ``.NAME.<random>.tmp`` beside the target: hidden, and never ``*.json``.
TEMP_SUFFIX = ".tmp"

_CONSTANT = re.compile(r"[\[:,]\s*(-?Infinity|NaN)\b")


class _BadConstantError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadConstantError(name)


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line} column {col}"


def parse_json(text: str | bytes, *, file: str | Path | None = None) -> Any:
    """Strict JSON (UTF-8, no NaN or Infinity), with errors that name line and column."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ChatLogError(
                f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); a chat log is UTF-8 JSON",
                file=file,
                place=f"byte {exc.start}",
            ) from exc
    if not text.strip():
        raise ChatLogError(
            "the file is empty; a chat log is a JSON object", file=file, place="top level"
        )
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ChatLogError(
            f"not valid JSON: {exc.msg}", file=file, place=_line_col(text, exc.pos)
        ) from exc
    except _BadConstantError as exc:
        match = _CONSTANT.search(text)
        place = _line_col(text, match.start(1)) if match else "top level"
        raise ChatLogError(
            f"{exc} is not valid JSON; write the value as a number or null",
            file=file,
            place=place,
        ) from exc
    except RecursionError as exc:
        raise ChatLogError(
            "JSON nested too deeply to be a chat log", file=file, place="top level"
        ) from exc


def loads_chat(
    source: str | bytes | dict[str, Any],
    *,
    check: bool = True,
    file: str | Path | None = None,
    on_warning: Callable[[Finding], None] | None = None,
) -> ChatLog:
    """A log of any version (JSON text or an already parsed dict) as the latest model.

    With ``check`` the consistency checks run: an error finding raises ``ChatLogError``
    (its ``findings`` hold them all); warnings go to ``on_warning`` or, by default, to
    ``warnings.warn`` as ``ChatLogWarning``. ``file`` only names the source in messages.
    """
    try:
        data = source if isinstance(source, dict) else parse_json(source, file=file)
        log = validate_version(ChatLog, migrate(data))
    except ChatLogError as exc:
        if exc.file is None and file is not None:
            exc.file = str(file)
        raise
    if check:
        findings = check_chat(log)
        errors = [f for f in findings if f.is_error]
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more; run mlx-harmony-migrate-chat --check)"
            raise ChatLogError(
                first.text + (more if len(errors) > 1 else ""),
                file=file,
                place=first.place,
                findings=findings,
            )
        for finding in findings:
            if on_warning is not None:
                on_warning(finding)
            else:
                head = f"{file}: " if file is not None else ""
                warnings.warn(ChatLogWarning(f"{head}{finding}"), stacklevel=3)
    return log


def load_chat(
    path: str | Path,
    *,
    check: bool = True,
    on_warning: Callable[[Finding], None] | None = None,
) -> ChatLog:
    """Read the log at ``path``, of any version, as the latest model (see ``loads_chat``).

    Every failure, an unreadable file included, is a ``ChatLogError`` whose one-line message
    names the file, the place and the problem.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ChatLogError(
            f"cannot read the file: {exc.strerror or exc}", file=path, place="file"
        ) from exc
    return loads_chat(raw, check=check, file=path, on_warning=on_warning)


def dumps_chat(log: ChatLog) -> str:
    """The text ``save_chat`` writes: indented UTF-8 JSON, fields at their default left out."""
    return log.model_dump_json(indent=2, exclude_defaults=True) + "\n"


def save_chat(log: ChatLog, path: str | Path) -> None:
    """Write ``log`` to ``path`` atomically (see ``write_atomic``), always as the latest version."""
    write_atomic(path, dumps_chat(log).encode("utf-8"))


def is_temp_file(path: str | Path) -> bool:
    """Whether ``path`` is one of ``write_atomic``'s temp files (possibly left by a crash)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _fsync_dir(folder: Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(folder, flags)
    except OSError:  # e.g. Windows, where directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash at any moment leaves the old file or the
    new one, never a mix: write a temp file in the same folder, fsync it, rename it over the
    target, fsync the folder. The target keeps its permissions; a new file is private (0600).
    A symlink is written through, not replaced.
    """
    target = Path(os.path.realpath(path))
    folder = target.parent
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
