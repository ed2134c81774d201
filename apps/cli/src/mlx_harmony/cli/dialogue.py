"""``mlx-harmony-convert-dialogue``: the ``role: text`` dialogue format to JSON.

The format, line by line:

- ``ROLE: text`` at the start of a line starts a message. ROLE is ``user``, ``assistant``,
  ``system`` or ``developer`` (any case); one space after the colon is dropped.
- Any other line continues the message above it, as written (continuation lines).
- Blank lines between turns are not part of any message: each message loses its leading and
  trailing blank lines. Blank lines inside a message (paragraphs) are kept.
- A line that is exactly ``---`` separates dialogues (with ``--as-example-dialogues``).
- A line starting with a backslash is text without that backslash, so ``\\user: hi`` and
  ``\\---`` are message text, not a new message or a separator.

Malformed lines are reported with their line number, all of them at once, and nothing is
written: text before the first message, a role that looks misspelt (``asistant:``; start the
line with a backslash if it is text), an empty message, a ``---`` without
``--as-example-dialogues``, and with it a system or developer message (example dialogues hold
user and assistant messages only).

Output: a JSON list of ``{"role", "content"}`` messages (the shape of an OpenAI chat request's
``messages``); with ``--as-example-dialogues``, ``{"example_dialogues": [[...], ...]}``, a
prompt config on its own and the value of its ``example_dialogues`` key.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ROLES",
    "DialogueError",
    "LineProblem",
    "main",
    "parse_dialogues",
    "to_json",
]

ROLES = ("user", "assistant", "system", "developer")
EXAMPLE_ROLES = ("user", "assistant")
SEPARATOR = "---"

_ROLE_LINE = re.compile(r"^([A-Za-z][A-Za-z_-]*):(?: |$)?(.*)$")


@dataclass(frozen=True)
class LineProblem:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


class DialogueError(ValueError):
    """The input has malformed lines; ``problems`` lists them in order."""

    def __init__(self, problems: Sequence[LineProblem], *, source: str = "<input>") -> None:
        self.problems = tuple(problems)
        self.source = source
        super().__init__("\n".join(f"{source}:{p.line}: {p.message}" for p in self.problems))


@dataclass
class _Message:
    role: str
    line: int
    lines: list[str]

    def content(self) -> str:
        lines = list(self.lines)
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        return "\n".join(lines)


def parse_dialogues(
    text: str, *, example_dialogues: bool = False, source: str = "<input>"
) -> list[list[dict[str, str]]]:
    """The dialogues in `text` (one unless ``---`` separates several), each a list of
    ``{"role", "content"}``; `DialogueError` lists every malformed line."""
    problems: list[LineProblem] = []
    dialogues: list[list[_Message]] = [[]]
    separators: list[int] = []
    current: _Message | None = None
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.rstrip("\r")
        if line.startswith("\\"):
            if current is None:
                problems.append(_before_first(number))
            else:
                current.lines.append(line[1:])
            continue
        if line.rstrip() == SEPARATOR:
            separators.append(number)
            dialogues.append([])
            current = None
            continue
        match = _ROLE_LINE.match(line)
        if match is not None and match.group(1).lower() in ROLES:
            role = match.group(1).lower()
            current = _Message(role, number, [match.group(2)])
            dialogues[-1].append(current)
            continue
        if match is not None:
            word = match.group(1).lower()
            close = difflib.get_close_matches(word, ROLES, n=1, cutoff=0.75)
            if close:
                problems.append(
                    LineProblem(
                        number,
                        f"unknown role {match.group(1)!r} (did you mean {close[0]!r}?); roles "
                        f"are {', '.join(ROLES)}. Start the line with a backslash if it is "
                        "text",
                    )
                )
                continue
        if current is None:
            if line.strip():
                problems.append(_before_first(number))
            continue
        current.lines.append(line)

    if separators and not example_dialogues:
        problems.extend(
            LineProblem(
                n,
                "'---' separates example dialogues: pass --as-example-dialogues, or write "
                "'\\---' for a line of text",
            )
            for n in separators
        )
    for dialogue in dialogues:
        for message in dialogue:
            if not message.content().strip():
                problems.append(LineProblem(message.line, f"the {message.role} message is empty"))
            if example_dialogues and message.role not in EXAMPLE_ROLES:
                problems.append(
                    LineProblem(
                        message.line,
                        f"example dialogues hold user and assistant messages only, got "
                        f"{message.role!r}; put system text in the prompt config's "
                        "developer_instructions",
                    )
                )
    for number, dialogue in zip([0, *separators], dialogues, strict=True):
        if not dialogue and not problems:
            where = "the input" if number == 0 else f"the dialogue after line {number}"
            problems.append(LineProblem(max(number, 1), f"{where} has no messages"))
    if problems:
        raise DialogueError(sorted(problems, key=lambda p: p.line), source=source)
    return [[{"role": m.role, "content": m.content()} for m in d] for d in dialogues]


def _before_first(number: int) -> LineProblem:
    return LineProblem(
        number,
        f"text before the first message; start a message with 'ROLE: text' ({', '.join(ROLES)})",
    )


def to_json(dialogues: list[list[dict[str, str]]], *, example_dialogues: bool) -> Any:
    """The JSON value to write (see the module docstring)."""
    if example_dialogues:
        from mlx_harmony.controller import PromptConfig

        value = {"example_dialogues": dialogues}
        PromptConfig.from_dict(value, source="the converted dialogues")  # the shape is right
        return value
    [messages] = dialogues
    return messages


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-harmony-convert-dialogue",
        description="Convert a 'role: text' dialogue file to JSON. Lines 'user: ...', "
        "'assistant: ...' (also system, developer) start messages; other lines continue "
        "them; blank lines between turns are dropped; '---' separates example dialogues; a "
        "leading backslash keeps a line as text.",
    )
    parser.add_argument("input", metavar="IN", help="The dialogue text file ('-': stdin).")
    parser.add_argument("output", metavar="OUT", help="The JSON file to write ('-': stdout).")
    parser.add_argument(
        "--as-example-dialogues",
        action="store_true",
        help="Write {'example_dialogues': [...]} for a prompt config (user and assistant "
        "messages only; '---' between dialogues).",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Convert IN to OUT; the exit status (0, 1 for malformed input, 2 for a usage error)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    prog = parser.prog
    try:
        if args.input == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            text, source = Path(args.input).read_text(encoding="utf-8"), args.input
    except (OSError, UnicodeDecodeError) as error:
        print(f"{prog}: error: cannot read {args.input}: {error}", file=sys.stderr)
        return 1
    try:
        dialogues = parse_dialogues(
            text, example_dialogues=args.as_example_dialogues, source=source
        )
        value = to_json(dialogues, example_dialogues=args.as_example_dialogues)
    except DialogueError as error:
        print(str(error), file=sys.stderr)
        count = len(error.problems)
        print(
            f"{prog}: {count} malformed line{'s' if count != 1 else ''}; nothing written",
            file=sys.stderr,
        )
        return 1
    output = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    if args.output == "-":
        sys.stdout.write(output)
    else:
        try:
            Path(args.output).write_text(output, encoding="utf-8")
        except OSError as error:
            print(f"{prog}: error: cannot write {args.output}: {error}", file=sys.stderr)
            return 1
        count = sum(len(d) for d in dialogues)
        print(
            f"{args.output}: {count} messages in {len(dialogues)} dialogue"
            f"{'s' if len(dialogues) != 1 else ''}",
            file=sys.stderr,
        )
    return 0
