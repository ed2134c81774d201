"""The chat front-end loop, over a local model or a server alike: lines in, events out.

`ChatFrontend.handle(line)` takes one line the user typed. A chat command (``\\set``,
``\\undo``, ...) is applied with the pure functions of `mlx_harmony.controller.commands` and
the actions they ask for are carried out here: ``\\save`` and ``\\load`` read and write the
chat log (chat-history v3; a save merges what another session wrote to the same file, and
says so), ``\\retry`` runs the last turn again (the old reply stays on its own branch),
``\\branches`` and ``\\branch N`` list and switch the branches, ``\\tokens`` asks the backend,
``\\models`` lists the model folders under ``models_dir`` and the profiles,
``\\clear`` starts a new log, ``\\quit`` ends `run`. Any other line is a message: the backend
answers it and its events come out as they happen. The front end keeps the session (config
and turns) and the chat log in step, and saves the log after every turn with ``autosave``.

Nothing here prints or reads a terminal: the CLI renders the events, tests feed lines.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from mlx_harmony.chat_history import (
    ChatLog,
    ChatLogError,
    Finding,
    SaveResult,
    load_chat,
    new_chat,
    save_chat,
)
from mlx_harmony.controller import (
    ChatBackend,
    ChatRequest,
    CommandAction,
    CommandOutput,
    ContextOverflowError,
    FrontendEvent,
    PromptConfig,
    Quit,
    SessionState,
    Turn,
    TurnDone,
    apply_command,
    drop_last_turn,
    hyperparameters_of,
    parse_command,
    record_turn,
    turns_from_log,
)
from mlx_harmony.harmony_format import FunctionTool, Message

__all__ = ["ChatFrontend", "describe_branches", "describe_models"]

Cancel = threading.Event | Callable[[], bool] | None


def describe_models(models_dir: Path | None, profile_names: Sequence[str]) -> str:
    """What ``\\models`` shows: the model folders (those with a config.json) under
    `models_dir`, then the profile names; each says how to use it."""
    lines: list[str] = []
    if models_dir is None:
        lines.append("No models_dir in the prompt config: set it to list the models in a folder.")
    elif not models_dir.is_dir():
        lines.append(f"models_dir {models_dir} is not a folder.")
    else:
        found = sorted(p.name for p in models_dir.iterdir() if (p / "config.json").is_file())
        if found:
            lines.append(f"Models in {models_dir} (use with --model NAME):")
            lines.extend(f"  {name}" for name in found)
        else:
            lines.append(f"No model folders (with a config.json) in {models_dir}.")
    if profile_names:
        lines.append("Profiles (use with --profile NAME):")
        lines.extend(f"  {name}" for name in profile_names)
    else:
        lines.append("No profiles file in use (--profiles-file PATH).")
    return "\n".join(lines)


def describe_branches(log: ChatLog) -> str:
    """What ``\\branches`` shows: each branch of the active chat, numbered for ``\\branch N``,
    with its length and the start of its last message; ``*`` marks the one in use."""
    branches = log.active.branches()
    if not branches:
        return "The conversation is empty: no branches yet."
    lines = []
    for number, branch in enumerate(branches, start=1):
        mark = "*" if branch.active else " "
        count = f"{branch.length} message{'s' if branch.length != 1 else ''}"
        text = " ".join(branch.leaf.content.split())
        text = text if len(text) <= 60 else text[:59] + "…"
        lines.append(f"{mark} {number}. {count}, ends with {branch.leaf.role}: {text}")
    if len(branches) > 1:
        lines.append("\\branch N continues on branch N.")
    return "\n".join(lines)


def _merged_note(result: SaveResult, path: Path) -> str | None:
    """A polite line when a save took in what another session had written to the file."""
    if not result.merged_messages and not result.merged_chats:
        return None
    parts = []
    if result.merged_messages:
        n = result.merged_messages
        parts.append(f"{n} message{'s' if n != 1 else ''}")
    if result.merged_chats:
        n = result.merged_chats
        parts.append(f"{n} chat{'s' if n != 1 else ''}")
    return (
        f"Note: another session had saved {' and '.join(parts)} to {path}; they are kept in "
        "the file alongside this conversation (\\branches lists its branches)."
    )


class ChatFrontend:
    """A chat session driven by input lines; see the module docstring.

    ``log`` continues a saved chat (its turns become the session's); ``chat_path`` is where
    ``\\save`` without a path and ``autosave`` write. ``model_path``, ``prompt_config_path``
    and ``tools`` describe the session in a new log's header.
    """

    def __init__(
        self,
        backend: ChatBackend,
        *,
        config: PromptConfig | None = None,
        log: ChatLog | None = None,
        chat_path: str | os.PathLike[str] | None = None,
        autosave: bool = False,
        function_tools: Sequence[FunctionTool] = (),
        model_path: str | None = None,
        prompt_config_path: str | None = None,
        tools: Mapping[str, bool] | None = None,
        profile_names: Sequence[str] = (),
    ) -> None:
        config = config if config is not None else PromptConfig()
        self.profile_names = tuple(profile_names)
        self.backend = backend
        self.function_tools = tuple(function_tools)
        self.chat_path = Path(chat_path) if chat_path is not None else None
        self.autosave = autosave
        self._header = {
            "model_path": model_path,
            "prompt_config_path": prompt_config_path,
            "tools": dict(tools or {}),
        }
        self.log = log if log is not None else self._new_log(config)
        self.state = SessionState(config, turns_from_log(self.log) if log is not None else ())
        self.quit = False

    # -- session ------------------------------------------------------------------------------

    @property
    def config(self) -> PromptConfig:
        return self.state.config

    @property
    def turns(self) -> tuple[Turn, ...]:
        return self.state.turns

    @property
    def greeting(self) -> str | None:
        """The prompt config's greeting, to show when the chat starts."""
        return self.config.assistant_greeting

    def _new_log(self, config: PromptConfig) -> ChatLog:
        return new_chat(hyperparameters=hyperparameters_of(config), **self._header)  # type: ignore[arg-type]

    def _save(self, path: Path) -> str | None:
        """Save the log to `path`; a note when the save merged another session's work."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return _merged_note(save_chat(self.log, path), path)

    def _chat_file(self, name: str | None) -> Path | None:
        """Where ``\\save`` / ``\\load`` go: a bare name in the config's ``chats_dir``; no
        name: the chat file, else a new dated file in ``chats_dir``."""
        chats_dir = self.config.chats_dir
        if name:
            given = Path(name).expanduser()
            if chats_dir is not None and not given.is_absolute() and given.parent == Path("."):
                return chats_dir / given
            return given
        if self.chat_path is not None:
            return self.chat_path
        if chats_dir is not None:
            return chats_dir / datetime.now().strftime("chat-%Y%m%d-%H%M%S.json")
        return None

    # -- the loop -----------------------------------------------------------------------------

    def run(self, lines: Iterable[str], *, cancel: Cancel = None) -> Iterator[FrontendEvent]:
        """Handle `lines` one by one until they run out or ``\\quit``."""
        for line in lines:
            yield from self.handle(line, cancel=cancel)
            if self.quit:
                return

    def handle(self, line: str, *, cancel: Cancel = None) -> Iterator[FrontendEvent]:
        """The events of one input line (nothing for a blank line)."""
        if not line.strip():
            return
        command = parse_command(line)
        if command is None:
            yield from self.send(line, cancel=cancel)
            return
        result = apply_command(self.state, command)
        name = command.name
        if result.error:
            yield CommandOutput(result.message, error=True, command=name)
            return
        action = result.action
        if action is CommandAction.QUIT:
            self.quit = True
            yield Quit()
        elif action is CommandAction.SAVE:
            yield self._do_save(result.path)
        elif action is CommandAction.LOAD:
            assert result.path is not None
            yield self._do_load(result.path)
        elif action is CommandAction.TOKENS:
            count = self.backend.count_tokens(
                self.state.turns, config=self.config, function_tools=self.function_tools
            )
            yield CommandOutput(count.describe(), command=name)
        elif action is CommandAction.MODELS:
            yield CommandOutput(
                describe_models(self.config.models_dir, self.profile_names), command=name
            )
        elif action is CommandAction.BRANCHES:
            yield CommandOutput(describe_branches(self.log), command=name)
        elif action is CommandAction.BRANCH:
            assert result.branch is not None
            yield from self._do_branch(result.branch)
        elif action is CommandAction.RETRY:
            yield from self._do_retry(result.state, result.message, cancel)
        else:
            if name == "clear":
                self.log = self._new_log(result.state.config)
                self.backend.reset()
            note = None
            if name == "undo":
                drop_last_turn(self.log)
                note = self._autosave()
            self.state = result.state
            yield CommandOutput(result.message, command=name)
            if note:
                yield CommandOutput(note, command=name)

    def send(self, text: str, *, cancel: Cancel = None) -> Iterator[FrontendEvent]:
        """Send `text` to the model as the next user message."""
        yield from self._run_turn(Turn(Message.user(text)), self.state.turns, cancel)

    # -- actions ------------------------------------------------------------------------------

    def _run_turn(
        self, turn: Turn, history: tuple[Turn, ...], cancel: Cancel
    ) -> Iterator[FrontendEvent]:
        request = ChatRequest(turn, history, self.config, self.function_tools, cancel)
        try:
            for event in self.backend.stream_turn(request):
                if isinstance(event, TurnDone):
                    result = event.result
                    self.state = SessionState(self.config, (*history, result.turn))
                    record_turn(self.log, result)
                    note = self._autosave()
                    yield event
                    if note:
                        yield CommandOutput(note)
                    continue
                yield event
        except ContextOverflowError as error:
            yield CommandOutput(str(error), error=True)

    def _autosave(self) -> str | None:
        if self.autosave and self.chat_path is not None:
            return self._save(self.chat_path)
        return None

    def _do_branch(self, number: int) -> Iterator[FrontendEvent]:
        branches = self.log.active.branches()
        if number > len(branches):
            count = len(branches)
            yield CommandOutput(
                f"There {'is' if count == 1 else 'are'} {count} branch"
                f"{'' if count == 1 else 'es'}; \\branches lists them.",
                error=True,
                command="branch",
            )
            return
        branch = branches[number - 1]
        self.log.active.switch_branch(branch.leaf.id)
        self.state = SessionState(self.config, turns_from_log(self.log))
        note = self._autosave()
        turns = len(self.state.turns)
        yield CommandOutput(
            f"On branch {number}: {turns} turn{'s' if turns != 1 else ''}.", command="branch"
        )
        if note:
            yield CommandOutput(note, command="branch")

    def _do_retry(
        self, state: SessionState, message: str, cancel: Cancel
    ) -> Iterator[FrontendEvent]:
        chat = self.log.active
        before = (self.state, list(chat.messages), chat.active_leaf_id)
        drop_last_turn(self.log)
        self.state = state
        yield CommandOutput(message, command="retry")
        finished = False
        for event in self._run_turn(state.turns[-1], state.turns[:-1], cancel):
            finished = finished or isinstance(event, TurnDone)
            yield event
        if not finished:  # the turn failed: put the old reply back
            self.state, chat.messages[:], chat.active_leaf_id = before

    def _do_save(self, path: str | None) -> CommandOutput:
        target = self._chat_file(path)
        if target is None:
            return CommandOutput(
                "No chat file yet: give one with \\save PATH (or set chats_dir in the prompt "
                "config).",
                error=True,
                command="save",
            )
        if target.exists() and not target.is_file():
            return CommandOutput(
                f"Cannot save to {target}: it is not a regular file (a folder, a device or a "
                "pipe); give a file path.",
                error=True,
                command="save",
            )
        try:
            note = self._save(target)
        except (OSError, ChatLogError) as error:
            return CommandOutput(f"Cannot save to {target}: {error}", error=True, command="save")
        before, self.chat_path = self.chat_path, target
        count = len(self.log.messages)
        text = f"Saved {count} message{'s' if count != 1 else ''} to {target}."
        if self.autosave and before != target:
            text += f"\nAutosave now writes to {target}" + (
                f" (no longer to {before})." if before is not None else "."
            )
        return CommandOutput(text + (f"\n{note}" if note else ""), command="save")

    def _do_load(self, path: str) -> CommandOutput:
        target = self._chat_file(path) or Path(path)
        findings: list[Finding] = []
        try:
            log = load_chat(target, on_warning=findings.append)
        except ChatLogError as error:
            return CommandOutput(f"Cannot load: {error}", error=True, command="load")
        self.log = log
        self.state = SessionState(self.config, turns_from_log(log))
        self.chat_path = target
        self.backend.reset()
        count = len(self.state.turns)
        lines = [f"Loaded {count} turn{'s' if count != 1 else ''} from {target}."]
        lines.extend(f"warning: {finding}" for finding in findings)
        return CommandOutput("\n".join(lines), command="load")
