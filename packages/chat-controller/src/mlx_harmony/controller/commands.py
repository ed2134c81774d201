"""Chat commands (``\\help``, ``\\set temperature 0.7``, ...) as pure functions on a session state.

`parse_command(line)` says whether a line is a command; `apply_command(state, command)` returns
a `CommandResult`: the new state, a message to print, and for commands that need I/O or the
model (save, load, retry, quit, tokens) an `action` the front end carries out. Nothing here
prints, reads files or touches a model, so the CLI and tests share one implementation.

A line is a command when it starts with a backslash and a command-like word followed by a
space or the end (``\\set x 1``, ``\\quit``); ``\\frac{1}{2}`` and lines starting with two
backslashes are ordinary messages. As in mlx-harmony 0.4, ``/`` works as the prefix too, for
known commands only (``/etc is a folder`` stays a message), and ``q``, ``quit`` or ``exit``
typed alone leave the chat.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, get_args

from pydantic import ValidationError

from mlx_harmony.harmony_format import Message
from mlx_harmony.sampling import SamplingParams

from ._suggest import by_closeness, closest
from .config import SETTING_NAMES, PromptConfig, ReasoningEffort, format_validation_error
from .turns import Turn

__all__ = [
    "COMMANDS",
    "SETTINGS",
    "Command",
    "CommandAction",
    "CommandResult",
    "CommandSpec",
    "SessionState",
    "Turn",
    "apply_command",
    "complete_command",
    "parse_command",
]


class CommandAction(StrEnum):
    """What the front end must do after a command; NONE when the new state is all there is."""

    NONE = "none"
    SAVE = "save"  # write the chat log to result.path (None: the front end's default path)
    LOAD = "load"  # read the chat log at result.path and replace the session
    RETRY = "retry"  # generate the reply to the last user message again
    QUIT = "quit"
    TOKENS = "tokens"  # report how much of the context window the conversation uses
    MODELS = "models"  # list the models under models_dir and the profiles
    BRANCHES = "branches"  # list the branches of the chat log's conversation
    BRANCH = "branch"  # switch to branch result.branch (1-based, as \\branches numbers them)


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    help: str


COMMANDS: Mapping[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        CommandSpec("help", "\\help [COMMAND]", "List the commands, or explain one."),
        CommandSpec(
            "set",
            "\\set NAME VALUE",
            "Change a setting for the next turns (also NAME=VALUE; see \\show).",
        ),
        CommandSpec("show", "\\show [NAME]", "Show the settings in use, or one of them."),
        CommandSpec(
            "reasoning", "\\reasoning low|medium|high", "Set the model's reasoning effort."
        ),
        CommandSpec(
            "save", "\\save [PATH]", "Save the conversation (to PATH, or the default chat log)."
        ),
        CommandSpec("load", "\\load PATH", "Load a saved conversation and continue it."),
        CommandSpec("clear", "\\clear", "Start a new conversation (settings stay)."),
        CommandSpec(
            "undo",
            "\\undo",
            "Go back to before your last message (it stays in the chat log, on its branch).",
        ),
        CommandSpec(
            "retry",
            "\\retry",
            "Generate the last reply again (the old reply stays, on its own branch).",
        ),
        CommandSpec(
            "branches", "\\branches", "List the branches that \\retry and \\undo left behind."
        ),
        CommandSpec("branch", "\\branch N", "Continue on branch N of \\branches."),
        CommandSpec("tokens", "\\tokens", "Show how much of the context window is used."),
        CommandSpec(
            "models", "\\models", "List the models under models_dir and the profiles (\\list)."
        ),
        CommandSpec("quit", "\\quit", "Leave the chat (also \\exit)."),
    )
}
ALIASES: Mapping[str, str] = {"exit": "quit", "list": "models"}
QUIT_WORDS = frozenset({"q", "quit", "exit"})
"""Words that leave the chat when typed alone on a line, as in mlx-harmony 0.4."""
SETTINGS: tuple[str, ...] = SETTING_NAMES
REASONING_EFFORTS: tuple[str, ...] = get_args(ReasoningEffort)

_ASSIGNMENT_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)", re.DOTALL)
_COMMAND_RE = re.compile(r"([\\/])([A-Za-z][A-Za-z_-]*)(?:\s+(.*))?", re.DOTALL)


@dataclass(frozen=True)
class Command:
    """A parsed command line: `name` without the backslash (lower case), `argument` the rest."""

    name: str
    argument: str = ""


@dataclass(frozen=True)
class SessionState:
    """What chat commands read and change: the prompt config and the conversation so far."""

    config: PromptConfig = field(default_factory=PromptConfig)
    turns: tuple[Turn, ...] = ()

    def with_user_message(self, message: Message) -> SessionState:
        return replace(self, turns=(*self.turns, Turn(message)))

    def with_replies(self, *replies: Message) -> SessionState:
        """Append replies to the last turn (the front end calls this after generating)."""
        if not self.turns:
            raise ValueError("there is no turn to add replies to; add a user message first")
        last = self.turns[-1]
        return replace(
            self, turns=(*self.turns[:-1], replace(last, replies=last.replies + replies))
        )


@dataclass(frozen=True)
class CommandResult:
    """The outcome of one command.

    `state` is the new state (the same object when nothing changed), `message` the text to
    show, `error` whether that text reports a mistake, `action` what the front end must do
    next (with `path` for SAVE and LOAD), and `changed` the config keys whose values changed
    (a change to the prompt's text or reasoning effort means re-rendering the prompt).
    """

    state: SessionState
    message: str = ""
    action: CommandAction = CommandAction.NONE
    path: str | None = None
    error: bool = False
    changed: tuple[str, ...] = ()
    branch: int | None = None
    """For BRANCH: the branch number (1-based)."""


def parse_command(line: str) -> Command | None:
    """The command on `line`, or None when the line is a message for the model."""
    text = line.strip()
    if text.lower() in QUIT_WORDS:
        return Command("quit")
    if text.startswith(("\\\\", "//")):
        return None
    match = _COMMAND_RE.fullmatch(text)
    if match is None:
        return None
    name = match.group(2).lower()
    if match.group(1) == "/" and name not in COMMANDS and name not in ALIASES:
        return None
    return Command(name, (match.group(3) or "").strip())


def apply_command(state: SessionState, command: Command) -> CommandResult:
    """Carry out `command` on `state`; mistakes come back as ``error=True`` results, not raised."""
    name = ALIASES.get(command.name, command.name)
    handler = _HANDLERS.get(name)
    if handler is None:
        return _fail(state, _unknown_command(command.name))
    if name in _NO_ARGUMENT and command.argument:
        return _fail(state, f"\\{name} takes no argument; usage: {COMMANDS[name].usage}")
    return handler(state, command.argument)


def complete_command(text: str) -> list[str]:
    """Candidates for the last word of `text` (the input before the cursor), for the CLI."""
    if not text.startswith(("\\", "/")):
        return []
    prefix = text[0]
    head, space, rest = text.partition(" ")
    if not space:
        names = [*COMMANDS, *ALIASES]
        return [f"{prefix}{n}" for n in names if n.startswith(head[1:].lower())]
    name = ALIASES.get(head[1:].lower(), head[1:].lower())
    words = rest.split(" ")
    if len(words) != 1:
        return []
    word = words[0]
    if name in ("set", "show"):
        return [s for s in SETTINGS if s.startswith(word)]
    if name == "reasoning":
        return [e for e in REASONING_EFFORTS if e.startswith(word.lower())]
    if name == "help":
        return [c for c in COMMANDS if c.startswith(word.lower().lstrip("\\"))]
    return []


# --------------------------------------------------------------------------------------------
# Handlers


def _fail(state: SessionState, message: str) -> CommandResult:
    return CommandResult(state, message, error=True)


def _unknown_command(name: str) -> str:
    ordered = by_closeness(name, COMMANDS)
    match = closest(name, [*COMMANDS, *ALIASES])
    hint = f" Did you mean \\{ALIASES.get(match, match)}?" if match else ""
    listing = ", ".join(f"\\{n}" for n in (ordered if match else COMMANDS))
    return f"Unknown command \\{name}.{hint} Commands: {listing}."


def _help(state: SessionState, argument: str) -> CommandResult:
    if argument:
        name = argument.lstrip("\\").lower()
        spec = COMMANDS.get(ALIASES.get(name, name))
        if spec is None:
            return _fail(state, _unknown_command(name))
        return CommandResult(state, f"{spec.usage}\n  {spec.help}")
    width = max(len(spec.usage) for spec in COMMANDS.values())
    lines = [f"{spec.usage.ljust(width)}  {spec.help}" for spec in COMMANDS.values()]
    lines.append("A line starting with two backslashes is sent to the model as typed.")
    lines.append("/ works as the prefix too (/help); q, quit or exit alone leaves the chat.")
    return CommandResult(state, "\n".join(lines))


def _value_candidates(raw: str) -> list[Any]:
    """JSON first (numbers, true/false, lists, objects), then the text itself."""
    if raw.lower() in ("null", "none"):
        return [None]
    candidates: list[Any] = []
    with contextlib.suppress(json.JSONDecodeError):
        candidates.append(json.loads(raw))
    if raw.lower() in ("on", "off", "yes", "no"):
        candidates.append(raw.lower() in ("on", "yes"))
    if raw not in candidates:
        candidates.append(raw)
    return candidates


def _update(state: SessionState, name: str, raw: str) -> CommandResult:
    first_error: ValidationError | None = None
    for value in _value_candidates(raw):
        try:
            config = state.config.updated(**{name: value})
        except ValidationError as error:
            first_error = first_error or error
            continue
        if config.setting(name) == state.config.setting(name):
            return CommandResult(state, f"{name} is already {_show_value(config, name)}.")
        message = f"{name} = {_show_value(config, name)}"
        override = next(
            (p for p, t in PromptConfig.PERFORMANCE_OVERRIDES.items() if t == name), None
        )
        if config.performance_mode and override and config.setting(override) is not None:
            message += f" (performance mode uses {override} = {_show_value(config, override)})"
        return CommandResult(SessionState(config, state.turns), message, changed=(name,))
    assert first_error is not None
    return _fail(state, format_validation_error(first_error, source="\\set"))


def _set(state: SessionState, argument: str) -> CommandResult:
    assignment = _ASSIGNMENT_RE.fullmatch(argument)  # \set temperature=0.7, as in 0.4
    if assignment is not None:
        name, raw = assignment.group(1), assignment.group(2)
    else:
        name, _, raw = argument.partition(" ")
    raw = raw.strip()
    if not name:
        return _fail(state, f"usage: {COMMANDS['set'].usage}; \\show lists the settings")
    if name not in SETTINGS:
        match = closest(name, SETTINGS)
        hint = f" Did you mean {match}?" if match else ""
        return _fail(state, f"Unknown setting {name!r}.{hint} \\show lists the settings.")
    if not raw:
        return _fail(
            state,
            f"usage: {COMMANDS['set'].usage}; {name} is now {_show_value(state.config, name)}",
        )
    return _update(state, name, raw)


def _reasoning(state: SessionState, argument: str) -> CommandResult:
    if not argument:
        current = state.config.effective().reasoning_effort
        return CommandResult(
            state, f"reasoning_effort is {current}; {COMMANDS['reasoning'].usage} changes it."
        )
    if argument.lower() not in REASONING_EFFORTS:
        return _fail(
            state,
            f"reasoning effort must be one of {', '.join(REASONING_EFFORTS)}, got {argument!r}",
        )
    return _update(state, "reasoning_effort", argument.lower())


def _show_value(config: PromptConfig, name: str) -> str:
    value = config.setting(name)
    default = ""
    if value is None and name in PromptConfig.SAMPLING_FIELDS:
        value = SamplingParams.model_fields[name].default
        default = " (default)"
    if name == "example_dialogues":
        count = len(config.example_dialogues)
        return f"{count} dialogue{'s' if count != 1 else ''}"
    if isinstance(value, tuple):
        value = list(value)
    text = json.dumps(value, default=str, ensure_ascii=False)
    if len(text) > 72:
        text = text[:71] + "…"
    return text + default


def _show(state: SessionState, argument: str) -> CommandResult:
    config = state.config.effective()
    if argument:
        if argument not in SETTINGS:
            match = closest(argument, SETTINGS)
            hint = f" Did you mean {match}?" if match else ""
            return _fail(state, f"Unknown setting {argument!r}.{hint}")
        return CommandResult(state, f"{argument} = {_show_value(config, argument)}")
    width = max(len(name) for name in SETTINGS)
    lines = [f"{name.ljust(width)} = {_show_value(config, name)}" for name in SETTINGS]
    if config.performance_mode:
        lines.insert(0, "(performance mode: perf_* values are applied below)")
    return CommandResult(state, "\n".join(lines))


def _save(state: SessionState, argument: str) -> CommandResult:
    return CommandResult(state, action=CommandAction.SAVE, path=argument or None)


def _load(state: SessionState, argument: str) -> CommandResult:
    if not argument:
        return _fail(state, f"usage: {COMMANDS['load'].usage}")
    return CommandResult(state, action=CommandAction.LOAD, path=argument)


def _clear(state: SessionState, argument: str) -> CommandResult:
    return CommandResult(SessionState(state.config), "Conversation cleared.")


def _undo(state: SessionState, argument: str) -> CommandResult:
    if not state.turns:
        return _fail(state, "Nothing to undo: the conversation is empty.")
    return CommandResult(
        SessionState(state.config, state.turns[:-1]), "Removed your last message and its replies."
    )


def _retry(state: SessionState, argument: str) -> CommandResult:
    if not state.turns:
        return _fail(state, "Nothing to retry: send a message first.")
    last = state.turns[-1]
    new_state = SessionState(state.config, (*state.turns[:-1], Turn(last.user)))
    return CommandResult(new_state, "Generating the last reply again.", action=CommandAction.RETRY)


def _tokens(state: SessionState, argument: str) -> CommandResult:
    return CommandResult(state, action=CommandAction.TOKENS)


def _branches(state: SessionState, argument: str) -> CommandResult:
    return CommandResult(state, action=CommandAction.BRANCHES)


def _branch(state: SessionState, argument: str) -> CommandResult:
    if not argument.isdigit() or int(argument) < 1:
        got = f", got {argument!r}" if argument else ""
        return _fail(
            state,
            f"usage: {COMMANDS['branch'].usage}, N a branch number that \\branches lists{got}",
        )
    return CommandResult(state, action=CommandAction.BRANCH, branch=int(argument))


def _models(state: SessionState, argument: str) -> CommandResult:
    return CommandResult(state, action=CommandAction.MODELS)


def _quit(state: SessionState, argument: str) -> CommandResult:
    return CommandResult(state, action=CommandAction.QUIT)


_HANDLERS = {
    "help": _help,
    "set": _set,
    "show": _show,
    "reasoning": _reasoning,
    "save": _save,
    "load": _load,
    "clear": _clear,
    "undo": _undo,
    "retry": _retry,
    "tokens": _tokens,
    "models": _models,
    "branches": _branches,
    "branch": _branch,
    "quit": _quit,
}
_NO_ARGUMENT = frozenset({"clear", "undo", "retry", "tokens", "models", "branches", "quit"})
