"""Reading and writing chat logs: any shape in, the latest version out, crash-safe writes.

Saving is a read-modify-write under an advisory lock (``filelock``) on ``.NAME.lock`` beside
the file: a file that changed since this log was read (another session saved it) is merged
(``merge_chat_logs``: the union of chats and of messages by id), never overwritten, so two
writers lose nothing. A file of an older shape is backed up before v3 replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from filelock import FileLock, Timeout

from mlx_harmony.chat_history.checks import Finding, check_chat
from mlx_harmony.chat_history.errors import ChatLogError, ChatLogWarning, format_place
from mlx_harmony.chat_history.migrations import Shape, detect_shape, migrate, validate_version
from mlx_harmony.chat_history.models import ROOT, ChatLog, ChatMessage

__all__ = [
    "LOCK_TIMEOUT_S",
    "TEMP_SUFFIX",
    "SaveResult",
    "backup_path",
    "chat_lock",
    "dumps_chat",
    "is_lock_file",
    "is_temp_file",
    "load_chat",
    "loads_chat",
    "lock_path",
    "merge_chat_logs",
    "parse_json",
    "save_chat",
    "write_atomic",
]

#: Temp files are ``.NAME.<random>.tmp`` beside the target: hidden, and never ``*.json``.
TEMP_SUFFIX = ".tmp"
#: Lock files are ``.NAME.lock`` beside the target.
LOCK_SUFFIX = ".lock"
#: How long a save waits for another writer's lock before giving up.
LOCK_TIMEOUT_S = 10.0

_CONSTANT = re.compile(r"[\[:,]\s*(-?Infinity|NaN)\b")


class _BadConstantError(ValueError):
    pass


def _reject_constant(name: str) -> NoReturn:
    raise _BadConstantError(name)


class _BadNumberError(ValueError):
    def __init__(self, literal: str, problem: str) -> None:
        self.literal = literal
        super().__init__(problem)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumberError(
            text, f"the number {text[:40]} is too large for a float (JSON readers get Infinity)"
        )
    return value


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:  # Python's limit on digits in an int conversion
        raise _BadNumberError(
            text, f"a whole number of {len(text.lstrip('-'))} digits is too long to read"
        ) from exc


def _find_surrogate(data: Any) -> tuple[list[str | int], str] | None:
    """The place and the character of the first lone surrogate in a parsed value (a ``\\ud800``
    escape: JSON text can hold one, UTF-8 cannot)."""
    todo: list[tuple[list[str | int], Any]] = [([], data)]
    while todo:
        loc, value = todo.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return loc, value[exc.start]
        elif isinstance(value, dict):
            for key, item in value.items():
                found = _find_surrogate(key) if not key.isascii() else None
                if found is not None:
                    return [*loc, key], found[1]
                todo.append(([*loc, key], item))
        elif isinstance(value, list):
            todo.extend(([*loc, i], item) for i, item in enumerate(value))
    return None


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
        data = json.loads(
            text, parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int
        )
    except _BadNumberError as exc:
        at = text.find(exc.literal)
        place = _line_col(text, at) if at >= 0 else "top level"
        raise ChatLogError(f"{exc}; write a smaller number", file=file, place=place) from exc
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
    try:
        found = _find_surrogate(data)
    except RecursionError as exc:  # pragma: no cover - json.loads refuses deeper input first
        raise ChatLogError("JSON nested too deeply", file=file, place="top level") from exc
    if found is not None:
        loc, char = found
        raise ChatLogError(
            f"a lone surrogate \\u{ord(char):04x} is not valid Unicode (a broken emoji or a "
            "cut escape); fix or remove it",
            file=file,
            place=format_place(loc),
        )
    return data


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
    return _loads(source, check=check, file=file, on_warning=on_warning)[0]


def _loads(
    source: str | bytes | dict[str, Any],
    *,
    check: bool,
    file: str | Path | None,
    on_warning: Callable[[Finding], None] | None,
) -> tuple[ChatLog, Shape]:
    try:
        data = source if isinstance(source, dict) else parse_json(source, file=file)
        shape = detect_shape(data)
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
                warnings.warn(ChatLogWarning(f"{head}{finding}"), stacklevel=4)
    return log, shape


def load_chat(
    path: str | Path,
    *,
    check: bool = True,
    on_warning: Callable[[Finding], None] | None = None,
) -> ChatLog:
    """Read the log at ``path``, of any shape, as the latest model (see ``loads_chat``);
    older shapes are migrated in memory only, the file is left as it is until a save.

    Every failure, an unreadable file included, is a ``ChatLogError`` whose one-line message
    names the file, the place and the problem.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ChatLogError(
            f"cannot read the file: {exc.strerror or exc}", file=path, place="file"
        ) from exc
    log, shape = _loads(raw, check=check, file=path, on_warning=on_warning)
    log._origin = (os.path.realpath(path), hashlib.sha256(raw).hexdigest(), shape.value)
    return log


_CONSTANT_IN_TEXT = re.compile(r"(?<![\w\"])-?(?:Infinity|NaN)\b")


def dumps_chat(log: ChatLog) -> str:
    """The text ``save_chat`` writes: indented UTF-8 JSON, fields at their default left out.

    Raises ``ChatLogError`` for a value JSON cannot hold (Infinity, NaN), never writing it as
    ``null``.
    """
    for chat in log.chats.values():
        # a leaf removed from ``messages`` by hand (code written for one branch deletes the
        # last turn) means "the last message", as ``Chat.leaf`` reads it
        leaf = chat.active_leaf_id
        if leaf not in (None, ROOT) and leaf not in chat.index():
            chat.active_leaf_id = None
    text = log.model_dump_json(indent=2, exclude_defaults=True) + "\n"
    if ("Infinity" in text or "NaN" in text) and _CONSTANT_IN_TEXT.search(text):
        try:
            json.loads(text, parse_constant=_reject_constant)
        except _BadConstantError as exc:
            match = _CONSTANT.search(text)
            raise ChatLogError(
                f"a value is {exc}, which JSON cannot hold; use a finite number or leave it out",
                place=_line_col(text, match.start(1)) if match else "top level",
            ) from exc
    return text


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What ``save_chat`` did besides writing the file."""

    merged_messages: int
    """Messages (of every chat) another writer had saved since this log was read, now in it."""
    merged_chats: int
    """Chats another writer had added, now in it."""
    backup: Path | None
    """Where the file of an older shape was kept before v3 replaced it."""


def lock_path(path: str | Path) -> Path:
    """The advisory lock file of a log: ``.NAME.lock`` beside it."""
    target = Path(os.path.realpath(path))
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def is_lock_file(path: str | Path) -> bool:
    """Whether ``path`` is a log's lock file (see ``lock_path``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(LOCK_SUFFIX)


@contextlib.contextmanager
def chat_lock(path: str | Path, *, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the advisory lock of the log at ``path`` (wait up to ``timeout`` seconds).

    Every read-modify-write of a log in this package takes it; programs that write logs by
    other means should too. Raises ``ChatLogError`` when another writer keeps it too long.
    """
    lock = FileLock(lock_path(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout as exc:
        raise ChatLogError(
            f"another program has held the lock {lock.lock_file} for {timeout:g} s; "
            "close the other session, or delete the lock file if no other program is running",
            file=path,
            place="file",
        ) from exc
    try:
        yield
    finally:
        lock.release()


def backup_path(path: str | Path, version: int, raw: bytes | None = None) -> Path:
    """Where to keep the version-``version`` original of ``path``: ``NAME.vN.bak``, or
    ``NAME.vN.K.bak`` when that name holds other bytes than ``raw``."""
    target = Path(path)
    candidate = target.with_name(f"{target.name}.v{version}.bak")
    n = 1
    while candidate.exists() and (raw is None or candidate.read_bytes() != raw):
        candidate = target.with_name(f"{target.name}.v{version}.{n}.bak")
        n += 1
    return candidate


def _same_message(a: ChatMessage, b: ChatMessage) -> bool:
    return (a.parent_id, a.role, a.content, a.channel, a.recipient) == (
        b.parent_id,
        b.role,
        b.content,
        b.channel,
        b.recipient,
    )


def merge_chat_logs(ours: ChatLog, theirs: ChatLog) -> tuple[int, int]:
    """Add to ``ours`` what only ``theirs`` has: chats, and messages by id (each after the
    ones it follows). ``ours`` keeps its headers (``updated_at`` becomes the later one), its
    active chat and branches, and its unknown fields. Returns (messages added, chats added).

    Raises ``ChatLogError`` when a message id holds different messages in the two logs (a
    message is never changed once written, so this means the file was edited by hand).
    """
    added_messages = added_chats = 0
    for chat_id in theirs.chat_order:
        their_chat = theirs.chats[chat_id]
        our_chat = ours.chats.get(chat_id)
        if our_chat is None:
            ours.add_chat(their_chat.model_copy(deep=True), activate=False)
            added_chats += 1
            added_messages += len(their_chat.messages)
            continue
        index = our_chat.index()
        new = []
        for i, message in enumerate(their_chat.messages):
            j = index.get(message.id)
            if j is None:
                new.append(message.model_copy(deep=True))
            elif not _same_message(our_chat.messages[j], message):
                raise ChatLogError(
                    f"message {message.id!r} differs between this session and the file "
                    "(was the file edited by hand?); save to another file to keep both",
                    place=f"chats[{chat_id}].messages[{i}]",
                )
        if new:
            our_chat.messages.extend(new)
            added_messages += len(new)
        h, t = our_chat.header, their_chat.header
        if t.updated_at is not None and (h.updated_at is None or t.updated_at > h.updated_at):
            h.updated_at = t.updated_at
    extra = ours.model_extra
    if extra is not None:
        for key, value in (theirs.model_extra or {}).items():
            extra.setdefault(key, value)
    return added_messages, added_chats


def save_chat(
    log: ChatLog,
    path: str | Path,
    *,
    backup: bool = True,
    lock_timeout: float = LOCK_TIMEOUT_S,
) -> SaveResult:
    """Write ``log`` to ``path`` as v3, atomically (see ``write_atomic``), under the file's lock.

    When the file on disk is not the one ``log`` was read from or last saved to (another
    session saved it, or ``log`` never came from it), what it holds is merged into ``log``
    first (``merge_chat_logs``), so nothing is lost. A file of an older shape is copied to
    ``NAME.vN.bak`` first (``backup=False`` skips that).
    """
    target = Path(os.path.realpath(path))
    merged = (0, 0)
    kept: Path | None = None
    with chat_lock(target, timeout=lock_timeout):
        try:
            raw: bytes | None = target.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise ChatLogError(
                f"cannot read the file before writing it: {exc.strerror or exc}",
                file=path,
                place="file",
            ) from exc
        if raw is not None:
            digest = hashlib.sha256(raw).hexdigest()
            origin = log._origin
            if origin is not None and origin[0] == str(target) and origin[1] == digest:
                shape = Shape(origin[2])
            else:
                try:
                    data = parse_json(raw, file=path)
                    shape = detect_shape(data)
                    theirs = validate_version(ChatLog, migrate(data))
                except ChatLogError as exc:
                    exc.file = exc.file or str(path)
                    exc.problem = (
                        f"the file on disk is not a chat log this session can merge with "
                        f"({exc.problem}); save to another file"
                    )
                    raise
                merged = merge_chat_logs(log, theirs)
            if backup and shape is not Shape.V3:
                kept = backup_path(target, shape.version, raw)
                if not kept.exists():
                    write_atomic(kept, raw)
        text = dumps_chat(log)
        try:
            data_out = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ChatLogError(
                f"the text holds a lone surrogate \\u{ord(text[exc.start]):04x}, which is not "
                "valid Unicode; remove it before saving",
                file=path,
                place=_line_col(text, exc.start),
            ) from exc
        write_atomic(target, data_out)
        log._origin = (str(target), hashlib.sha256(data_out).hexdigest(), Shape.V3.value)
    return SaveResult(merged_messages=merged[0], merged_chats=merged[1], backup=kept)


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
