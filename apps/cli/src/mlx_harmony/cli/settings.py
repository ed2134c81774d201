"""Which settings a session runs with: one pure function merges every source.

Precedence, highest first: the command line, then the loaded chat's last-used values (its
header), then the prompt config (a file, or a profile's), then the defaults of `PromptConfig`.
The same order picks the model (``--model``, then the profile's, then the chat's, then the
demo model) and the built-in tools (``--python`` / ``--no-python``, then the chat's, then off).

Nothing here reads a file or a terminal: `mlx_harmony.cli.launch` loads the sources and calls
`merge_settings`, tests call it with tiny hand-written values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from mlx_harmony.chat_history import Header
from mlx_harmony.controller import SETTING_NAMES, PromptConfig, format_validation_error

__all__ = [
    "COMMAND_LINE",
    "DEFAULTS",
    "FROM_CHAT",
    "FROM_PROMPT_CONFIG",
    "TOOL_NAMES",
    "CommandLine",
    "Settings",
    "SettingsError",
    "merge_settings",
]

TOOL_NAMES: tuple[str, ...] = ("browser", "python", "apply_patch")

COMMAND_LINE = "command line"
FROM_CHAT = "chat"
FROM_PROMPT_CONFIG = "prompt config"
DEFAULTS = "defaults"


class SettingsError(ValueError):
    """Settings that cannot be used together; the message says what to pass instead."""


@dataclass(frozen=True)
class CommandLine:
    """What the command line asked for. ``None`` (or a missing key) means "not given", so the
    lower layers decide.

    ``values`` are prompt-config keys (``temperature``, ``max_tokens``, ...); ``tools`` maps
    the names in `TOOL_NAMES` to True (``--python``), False (``--no-python``) or None.
    ``server``: the server's URL (``--server``); its model runs there, so a resumed chat need
    not name one.
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    model: str | None = None
    tools: Mapping[str, bool | None] = field(default_factory=dict)
    server: str | None = None


@dataclass(frozen=True)
class Settings:
    """The merged result.

    ``model`` is None for the demo model; ``model_source`` says where the model came from
    (``--model``, ``profile 'quick'``, ``chat``, ``demo``, ``server``: then ``model`` is the
    server's model name, None for its default). ``sources`` names the layer each
    prompt-config key that is not a default came from; ``skipped`` explains the chat values
    that could not be used (an unknown key, a value out of range).
    """

    config: PromptConfig
    model: str | None
    model_source: str
    tools: Mapping[str, bool]
    sources: Mapping[str, str] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    @property
    def uses_demo_model(self) -> bool:
        return self.model is None and self.model_source == "demo"


def merge_settings(
    command_line: CommandLine = CommandLine(),
    *,
    chat: Header | None = None,
    prompt_config: PromptConfig | None = None,
    profile: tuple[str, str] | None = None,
    chat_source: str = "the chat",
) -> Settings:
    """Merge the sources of a session's settings; see the module docstring.

    `chat` is the header of the chat being resumed (its ``hyperparameters``, ``model_path``
    and ``tools`` are the values it last ran with); `profile` is ``(name, model)`` of the
    profile in use. A chat that names no model cannot be resumed without ``--model`` or a
    profile: `SettingsError` says so rather than silently switching to the demo model.
    Command-line values that are not valid raise `SettingsError`; invalid chat values are
    skipped and reported in ``skipped``.
    """
    config = prompt_config if prompt_config is not None else PromptConfig()
    sources = dict.fromkeys(config.settings_set(), FROM_PROMPT_CONFIG)
    skipped: list[str] = []

    if chat is not None:
        for key, value in chat.hyperparameters.items():
            if key not in SETTING_NAMES:
                skipped.append(f"{chat_source}: {key!r} is not a setting; ignored")
                continue
            if key in command_line.values and command_line.values[key] is not None:
                continue  # the command line wins; do not even validate the chat's value
            try:
                config = config.updated(**{key: value})
            except ValidationError as error:
                message = format_validation_error(error, source=chat_source)
                skipped.append(f"{message}; ignored")
                continue
            sources[key] = FROM_CHAT

    given = {k: v for k, v in command_line.values.items() if v is not None}
    unknown = sorted(k for k in given if k not in SETTING_NAMES)
    if unknown:
        raise SettingsError(f"unknown settings {unknown}; valid ones: {sorted(SETTING_NAMES)}")
    if given:
        try:
            config = config.updated(**given)
        except ValidationError as error:
            raise SettingsError(format_validation_error(error, source="command line")) from None
        sources.update(dict.fromkeys(given, COMMAND_LINE))

    if command_line.server:
        model, model_source = command_line.model, "server"
    else:
        model, model_source = _choose_model(command_line.model, profile, chat, chat_source)
    tools = _choose_tools(command_line.tools, chat)
    return Settings(config, model, model_source, tools, sources, tuple(skipped))


def _choose_model(
    flag: str | None, profile: tuple[str, str] | None, chat: Header | None, chat_source: str
) -> tuple[str | None, str]:
    if flag:
        return flag, "--model"
    if profile is not None:
        name, model = profile
        return model, f"profile {name!r}"
    if chat is not None:
        if not chat.model_path:
            raise SettingsError(
                f"{chat_source} does not name its model (its header has no model_path), so it "
                "cannot be resumed as it is: pass --model MODEL or --profile NAME"
            )
        return chat.model_path, FROM_CHAT
    return None, "demo"


def _choose_tools(flags: Mapping[str, bool | None], chat: Header | None) -> dict[str, bool]:
    unknown = sorted(set(flags) - set(TOOL_NAMES))
    if unknown:
        raise SettingsError(f"unknown tools {unknown}; the built-in tools are {list(TOOL_NAMES)}")
    saved = chat.tools if chat is not None else {}
    tools: dict[str, bool] = {}
    for name in TOOL_NAMES:
        flag = flags.get(name)
        tools[name] = bool(flag if flag is not None else saved.get(name, False))
    return tools
