"""Debug output of chat turns: raw prompts and responses, token ids, per-attempt files.

- ``raw`` (the CLI's ``--debug``) prints each prompt and each response as the model sees them,
  format markers kept (``<|start|>user<|message|>...``);
- ``tokens`` (``--debug-tokens in|out|both``) prints the prompt's and/or the response's ids;
- ``folder`` (``--debug-file DIR``) writes one folder per generation,
  ``DIR/NNN-attempt-M/`` (turn NNN, generation M of that turn: retries and tool rounds count),
  holding ``prompt.txt``, ``prompt_tokens.json``, ``completion.txt``,
  ``completion_tokens.json``, ``parse.json`` (what the adapter read) and ``decision.json``
  (what the turn did next: accept, retry and why, run tools); with the prompt config's
  ``log_timing_stats``, also ``NNN-timing.json`` for each turn.

With ``log_timing_stats`` the turn's timing line is printed too (whenever debug output is on).

Printing goes to ``stream`` (the CLI passes stderr). Text is decoded only when something is
written.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from .adapters import TurnOutput

__all__ = ["DebugOptions", "DebugTokens", "DebugWriter"]

DebugTokens = Literal["in", "out", "both"]
_FOLDER_RE = re.compile(r"^(\d{3,})-attempt-\d+$")


@dataclass(frozen=True, slots=True)
class DebugOptions:
    """What to show: ``raw`` text, ``tokens`` ids (in, out or both), files in ``folder``."""

    raw: bool = False
    tokens: DebugTokens | None = None
    folder: str | os.PathLike[str] | None = None
    stream: TextIO | None = None

    def __post_init__(self) -> None:
        if self.tokens not in (None, "in", "out", "both"):
            raise ValueError(f"debug tokens must be 'in', 'out' or 'both', got {self.tokens!r}")

    @property
    def enabled(self) -> bool:
        return self.raw or self.tokens is not None or self.folder is not None


class DebugWriter:
    """Writes the debug output of a session's turns; numbers turns across the session and
    continues after the folders a previous session left in ``folder``."""

    def __init__(self, options: DebugOptions) -> None:
        self.options = options
        self.folder = Path(options.folder) if options.folder is not None else None
        self._turn = 0
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            numbers = [
                int(m.group(1))
                for p in self.folder.iterdir()
                if p.is_dir() and (m := _FOLDER_RE.match(p.name))
            ]
            self._turn = max(numbers, default=0)

    @property
    def turn(self) -> int:
        return self._turn

    def begin_turn(self) -> int:
        self._turn += 1
        return self._turn

    def _print(self, text: str) -> None:
        stream = self.options.stream or sys.stderr
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()

    def _dir(self, attempt: int) -> Path:
        assert self.folder is not None
        path = self.folder / f"{self._turn:03d}-attempt-{attempt}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def prompt(
        self, *, attempt: int, tokens: Sequence[int], decode: Callable[[Sequence[int]], str]
    ) -> None:
        """Before a generation: the prompt it gets."""
        options = self.options
        text = decode(tokens) if options.raw or self.folder is not None else ""
        if options.raw:
            self._print(
                f"[debug] turn {self._turn} attempt {attempt}: prompt ({len(tokens)} tokens)"
            )
            self._print(text)
        if options.tokens in ("in", "both"):
            self._print(f"[debug] prompt token ids: {list(tokens)}")
        if self.folder is not None:
            folder = self._dir(attempt)
            (folder / "prompt.txt").write_text(text, encoding="utf-8")
            (folder / "prompt_tokens.json").write_text(json.dumps(list(tokens)), encoding="utf-8")

    def completion(
        self,
        *,
        attempt: int,
        tokens: Sequence[int],
        decode: Callable[[Sequence[int]], str],
        output: TurnOutput,
        stop_reason: str,
        decision: Mapping[str, object],
    ) -> None:
        """After a generation: what came out, how it was read, and what the turn does next."""
        options = self.options
        text = decode(tokens) if options.raw or self.folder is not None else ""
        if options.raw:
            self._print(
                f"[debug] turn {self._turn} attempt {attempt}: response ({len(tokens)} tokens, "
                f"stop: {stop_reason}, next: {decision.get('action')})"
            )
            self._print(text)
        if options.tokens in ("out", "both"):
            self._print(f"[debug] response token ids: {list(tokens)}")
        if self.folder is not None:
            folder = self._dir(attempt)
            (folder / "completion.txt").write_text(text, encoding="utf-8")
            (folder / "completion_tokens.json").write_text(
                json.dumps(list(tokens)), encoding="utf-8"
            )
            parse = {**output.to_dict(), "stop_reason": stop_reason}
            (folder / "parse.json").write_text(
                json.dumps(parse, indent=2, ensure_ascii=False), encoding="utf-8"
            )
            (folder / "decision.json").write_text(
                json.dumps(dict(decision), indent=2, ensure_ascii=False, default=str),
                encoding="utf-8",
            )

    def timing(self, timing: Mapping[str, Any], line: str) -> None:
        """After a turn (``log_timing_stats``): its timing, as a line and as JSON."""
        self._print(f"[debug] turn {self._turn} {line}")
        if self.folder is not None:
            path = self.folder / f"{self._turn:03d}-timing.json"
            path.write_text(json.dumps(dict(timing), indent=2), encoding="utf-8")
