"""The V4A patch format of gpt-oss's `apply_patch` function: parse, check, apply inside one root.

A patch is applied all or nothing: every file is read, every hunk located and every path
checked before the first byte is written; each file is then replaced atomically (temporary file
plus ``os.replace``), and a failure half way restores the files already written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

__all__ = [
    "AddFile",
    "DeleteFile",
    "FileChange",
    "Hunk",
    "Patch",
    "PatchError",
    "PatchResult",
    "UpdateFile",
    "apply_patch",
    "parse_patch",
    "patch_from_arguments",
]

BEGIN = "*** Begin Patch"
END = "*** End Patch"
ADD = "*** Add File: "
DELETE = "*** Delete File: "
UPDATE = "*** Update File: "
MOVE = "*** Move to: "
END_OF_FILE = "*** End of File"


class PatchError(ValueError):
    """A patch that cannot be parsed or applied; the message says what to fix."""


@dataclass(frozen=True)
class Hunk:
    """One `@@` section: the lines to find (`old`) and what replaces them (`new`)."""

    anchors: tuple[str, ...] = ()
    old: tuple[str, ...] = ()
    new: tuple[str, ...] = ()
    end_of_file: bool = False


@dataclass(frozen=True)
class AddFile:
    path: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class DeleteFile:
    path: str


@dataclass(frozen=True)
class UpdateFile:
    path: str
    hunks: tuple[Hunk, ...]
    move_to: str | None = None


FileOp = AddFile | DeleteFile | UpdateFile


@dataclass(frozen=True)
class Patch:
    ops: tuple[FileOp, ...]


@dataclass(frozen=True)
class FileChange:
    kind: Literal["add", "update", "delete"]
    path: str
    moved_from: str | None = None


@dataclass(frozen=True)
class PatchResult:
    changes: tuple[FileChange, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """``git status --short`` style lines, the text the model gets back."""
        letters = {"add": "A", "update": "M", "delete": "D"}
        lines = []
        for change in self.changes:
            line = f"{letters[change.kind]} {change.path}"
            if change.moved_from is not None:
                line += f" (moved from {change.moved_from})"
            lines.append(line)
        return "Done!\n" + "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Parsing


def parse_patch(text: str) -> Patch:
    """Parse a V4A patch; text before `*** Begin Patch` and after `*** End Patch` is ignored."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == BEGIN)
    except StopIteration:
        raise PatchError(f"a patch must start with a '{BEGIN}' line") from None
    try:
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == END)
    except StopIteration:
        raise PatchError(f"the patch has no '{END}' line; end it with '{END}'") from None

    ops: list[FileOp] = []
    i = start + 1
    while i < end:
        line = lines[i]
        if line.startswith(ADD):
            path = _header_path(line, ADD, i)
            i, body = _take_body(lines, i + 1, end)
            ops.append(AddFile(path, _add_lines(body, path)))
        elif line.startswith(DELETE):
            ops.append(DeleteFile(_header_path(line, DELETE, i)))
            i += 1
        elif line.startswith(UPDATE):
            path = _header_path(line, UPDATE, i)
            i += 1
            move_to = None
            if i < end and lines[i].startswith(MOVE):
                move_to = _header_path(lines[i], MOVE, i)
                i += 1
            i, body = _take_body(lines, i, end)
            hunks = _parse_hunks(body, path)
            if not hunks and move_to is None:
                raise PatchError(f"Update File: {path}: no hunks; add an '@@' hunk with changes")
            ops.append(UpdateFile(path, hunks, move_to))
        elif not line.strip():
            i += 1
        else:
            raise PatchError(
                f"patch line {i + 1}: expected '{ADD}', '{DELETE}' or '{UPDATE}', got {line!r}"
            )
    if not ops:
        raise PatchError("the patch holds no file operations")
    seen: set[str] = set()
    for op in ops:
        for path in (op.path, getattr(op, "move_to", None)):
            if path is None:
                continue
            key = os.path.normpath(path)
            if key in seen:
                raise PatchError(f"{path} appears twice in the patch; send one section per file")
            seen.add(key)
    return Patch(tuple(ops))


def _header_path(line: str, prefix: str, index: int) -> str:
    path = line[len(prefix) :].strip()
    if not path:
        raise PatchError(f"patch line {index + 1}: '{prefix.strip()}' needs a path")
    return path


def _take_body(lines: list[str], i: int, end: int) -> tuple[int, list[str]]:
    """Lines up to the next file header (`*** End of File` belongs to the body)."""
    body = []
    while i < end and not (lines[i].startswith("*** ") and lines[i] != END_OF_FILE):
        body.append(lines[i])
        i += 1
    while body and body[-1] == "":  # blank lines between sections are not content
        body.pop()
    return i, body


def _add_lines(body: list[str], path: str) -> tuple[str, ...]:
    out = []
    for line in body:
        if line.startswith("+"):
            out.append(line[1:])
        elif line == "":
            out.append("")
        else:
            raise PatchError(f"Add File: {path}: every line must start with '+', got {line!r}")
    return tuple(out)


_UNIFIED_RANGE = re.compile(r"^-\d+(?:,\d+)?\s+\+\d+(?:,\d+)?\s*@@")


def _parse_hunks(body: list[str], path: str) -> tuple[Hunk, ...]:
    hunks: list[Hunk] = []
    anchors: list[str] = []
    old: list[str] = []
    new: list[str] = []
    changed = False
    eof = False
    started = False

    def flush() -> None:
        nonlocal anchors, old, new, changed, eof, started
        if started:
            if not changed:
                raise PatchError(
                    f"Update File: {path}: hunk {len(hunks) + 1} has no '-' or '+' lines"
                )
            hunks.append(Hunk(tuple(anchors), tuple(old), tuple(new), eof))
        anchors, old, new, changed, eof, started = [], [], [], False, False, False

    for line in body:
        if eof and not line.strip():
            continue
        if eof and not line.startswith("@@"):
            raise PatchError(
                f"Update File: {path}: '{END_OF_FILE}' must end its hunk, got {line!r} after it"
            )
        if line.startswith("@@"):
            if old or new:
                flush()
            started = True
            # A unified-diff range ("@@ -3,4 +3,5 @@ def f():") is not an anchor; drop it.
            anchor = _UNIFIED_RANGE.sub("", line[2:].strip()).strip()
            if anchor:
                anchors.append(anchor)
        elif line == END_OF_FILE:
            eof = True
        elif line == "" or line.startswith(" "):
            started = True
            old.append(line[1:])
            new.append(line[1:])
        elif line.startswith("-"):
            started = changed = True
            old.append(line[1:])
        elif line.startswith("+"):
            started = changed = True
            new.append(line[1:])
        else:
            raise PatchError(
                f"Update File: {path}: hunk lines start with ' ', '-', '+' or '@@', got {line!r}"
            )
    flush()
    return tuple(hunks)


# --------------------------------------------------------------------------------------------
# Applying


def apply_patch(patch: str | Patch, *, root: str | os.PathLike[str]) -> PatchResult:
    """Apply `patch` under `root`, all or nothing; raise PatchError naming the problem."""
    if isinstance(patch, str):
        patch = parse_patch(patch)
    root_path = Path(root).resolve()
    if not root_path.is_dir():
        raise PatchError(f"workspace root {root} is not a folder; create it or pick another")

    writes: dict[Path, bytes | None] = {}  # resolved path -> new bytes, None to delete
    changes: list[FileChange] = []
    for op in patch.ops:
        target = _resolve(root_path, op.path)
        if isinstance(op, AddFile):
            if target.exists() or target.is_symlink():
                raise PatchError(
                    f"Add File: {op.path} already exists; use '{UPDATE}{op.path}' to change it"
                )
            writes[target] = _encode(list(op.lines), newline="\n", final_newline=True)
            changes.append(FileChange("add", op.path))
        elif isinstance(op, DeleteFile):
            if not target.is_file():
                raise PatchError(f"Delete File: {op.path} does not exist or is not a file")
            writes[target] = None
            changes.append(FileChange("delete", op.path))
        else:
            if not target.is_file():
                raise PatchError(
                    f"Update File: {op.path} does not exist; use '{ADD}{op.path}' to create it"
                )
            new_bytes = _update(target.read_bytes(), op)
            if op.move_to is not None:
                destination = _resolve(root_path, op.move_to)
                if destination != target and (destination.exists() or destination.is_symlink()):
                    raise PatchError(
                        f"Move to: {op.move_to} already exists; delete it first or pick "
                        "another path"
                    )
                writes[target] = None
                writes[destination] = new_bytes
                changes.append(FileChange("update", op.move_to, moved_from=op.path))
            else:
                writes[target] = new_bytes
                changes.append(FileChange("update", op.path))
    _write_all(writes)
    return PatchResult(tuple(changes))


def _resolve(root: Path, path: str) -> Path:
    """The absolute path for `path` under `root`, refusing anything that leaves it."""
    if path.startswith(("/", "\\", "~")) or PureWindowsPath(path).drive:
        raise PatchError(
            f"absolute path {path!r} refused; give a path relative to the workspace root"
        )
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if ".." in parts:
        raise PatchError(f"path {path!r} refused: '..' would leave the workspace root")
    resolved = (root / Path(*parts)).resolve()
    if not resolved.is_relative_to(root):
        raise PatchError(
            f"path {path!r} refused: it leads outside the workspace root through a symlink"
        )
    if resolved == root:
        raise PatchError(f"path {path!r} names the workspace root itself; name a file")
    return resolved


def _update(data: bytes, op: UpdateFile) -> bytes:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PatchError(
            f"Update File: {op.path} is not UTF-8 text; patch text files only"
        ) from None
    newline = "\r\n" if "\r\n" in text else "\n"
    text = text.replace("\r\n", "\n")
    final_newline = text.endswith("\n")
    lines = text.split("\n")
    if final_newline:
        lines.pop()

    replacements: list[tuple[int, int, tuple[str, ...]]] = []
    pos = 0
    for number, hunk in enumerate(op.hunks, start=1):
        anchor_line = None
        for anchor in hunk.anchors:
            found = _find(lines, (anchor,), pos, eof=False)
            if found is None:
                raise PatchError(
                    f"Update File: {op.path}: hunk {number}: no line {anchor!r} after line "
                    f"{pos + 1}; the text after '@@' must be a line of the file"
                )
            pos = found + 1
            anchor_line = found
        if hunk.old:
            start = _find(lines, hunk.old, pos, eof=hunk.end_of_file)
            if start is None and anchor_line is not None:  # context repeats the anchor line
                start = _find(lines, hunk.old, anchor_line, eof=hunk.end_of_file)
            if start is None:
                shown = "\n".join(f"  |{line}" for line in hunk.old)
                raise PatchError(
                    f"Update File: {op.path}: hunk {number} does not match the file; these "
                    f"lines were not found{' at its end' if hunk.end_of_file else ''}:\n{shown}\n"
                    "Read the file again and resend the patch with its exact lines."
                )
        else:
            start = len(lines) if hunk.end_of_file else pos
        replacements.append((start, len(hunk.old), hunk.new))
        pos = start + len(hunk.old)

    for start, length, new in reversed(replacements):
        lines[start : start + length] = new
    return _encode(lines, newline=newline, final_newline=final_newline or not lines)


_NORMALIZERS: tuple[Callable[[str], str], ...] = (lambda s: s, str.rstrip, str.strip)


def _find(lines: Sequence[str], block: Sequence[str], start: int, *, eof: bool) -> int | None:
    """First index >= start where `block` matches: exactly, then ignoring whitespace."""
    size = len(block)
    if eof:
        candidates: Sequence[int] = [len(lines) - size] if len(lines) - size >= start else []
    else:
        candidates = range(start, len(lines) - size + 1)
    for normalize in _NORMALIZERS:
        wanted = [normalize(line) for line in block]
        for i in candidates:
            if all(normalize(lines[i + k]) == wanted[k] for k in range(size)):
                return i
    return None


def _encode(lines: list[str], *, newline: str, final_newline: bool) -> bytes:
    text = newline.join(lines)
    if final_newline and lines:
        text += newline
    return text.encode("utf-8")


def _write_all(writes: dict[Path, bytes | None]) -> None:
    """Write every file atomically; on failure put back what was already changed."""
    originals: list[tuple[Path, bytes | None, int | None]] = []
    try:
        for path, data in writes.items():
            if path.exists():
                originals.append((path, path.read_bytes(), path.stat().st_mode))
            else:
                originals.append((path, None, None))
            if data is None:
                path.unlink()
            else:
                _atomic_write(path, data, mode=originals[-1][2])
    except OSError as error:
        for path, data, mode in reversed(originals):
            with contextlib.suppress(OSError):
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    _atomic_write(path, data, mode=mode)
        raise PatchError(
            f"writing {error.filename or 'a file'} failed ({error}); nothing was changed"
        ) from error


def _atomic_write(path: Path, data: bytes, *, mode: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode is not None:
            os.chmod(tmp, mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def patch_from_arguments(arguments: str) -> str:
    """The patch text from a `functions.apply_patch` call: raw text, or JSON around it.

    Models sometimes wrap the patch as ``{"patch": "..."}`` (any single key) or as a JSON
    string; take the text out of those.
    """
    stripped = arguments.strip()
    if stripped.startswith(("{", '"')):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return arguments
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            for key in ("patch", "input", "content", "diff"):
                if isinstance(value.get(key), str):
                    return value[key]
            strings = [v for v in value.values() if isinstance(v, str)]
            if len(strings) == 1:
                return strings[0]
    return arguments
