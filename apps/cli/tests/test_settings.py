"""merge_settings: command line, then the chat's last-used values, then the prompt config,
then the defaults."""

from __future__ import annotations

import pytest

from mlx_harmony.chat_history import new_chat
from mlx_harmony.cli.settings import (
    COMMAND_LINE,
    FROM_CHAT,
    FROM_PROMPT_CONFIG,
    CommandLine,
    SettingsError,
    merge_settings,
)
from mlx_harmony.controller import PromptConfig


def header(**values):
    log = new_chat(
        model_path=values.pop("model_path", "chat-model"),
        tools=values.pop("tools", {}),
        hyperparameters=values,
    )
    return log.header


def test_defaults_alone() -> None:
    settings = merge_settings()
    assert settings.config == PromptConfig()
    assert settings.model is None
    assert settings.uses_demo_model
    assert settings.model_source == "demo"
    assert settings.tools == {"browser": False, "python": False, "apply_patch": False}
    assert settings.sources == {}


def test_each_layer_wins_over_the_ones_below() -> None:
    config = PromptConfig(temperature=0.3, top_p=0.9, top_k=5, max_tokens=100)
    chat = header(temperature=0.5, top_p=0.8)
    line = CommandLine(values={"temperature": 0.7})
    settings = merge_settings(line, chat=chat, prompt_config=config)
    cfg = settings.config
    assert (
        cfg.setting("temperature"),
        cfg.setting("top_p"),
        cfg.setting("top_k"),
        cfg.max_tokens,
    ) == (0.7, 0.8, 5, 100)
    assert cfg.setting("min_p") is None  # nobody set it: PromptConfig's default
    assert settings.sources["temperature"] == COMMAND_LINE
    assert settings.sources["top_p"] == FROM_CHAT
    assert settings.sources["top_k"] == FROM_PROMPT_CONFIG
    assert "min_p" not in settings.sources


def test_the_chat_beats_the_prompt_config_but_not_the_command_line() -> None:
    chat = header(reasoning_effort="high", max_tokens=64)
    settings = merge_settings(
        CommandLine(values={"max_tokens": 32}),
        chat=chat,
        prompt_config=PromptConfig(reasoning_effort="low", max_tokens=1000),
    )
    assert settings.config.reasoning_effort == "high"
    assert settings.config.max_tokens == 32


def test_none_on_the_command_line_means_not_given() -> None:
    settings = merge_settings(
        CommandLine(values={"temperature": None}), prompt_config=PromptConfig(temperature=0.2)
    )
    assert settings.config.setting("temperature") == 0.2


def test_bad_chat_values_are_skipped_and_reported() -> None:
    chat = header(temperature=0.4, top_p=0.0, colour="blue")
    settings = merge_settings(chat=chat)
    assert settings.config.setting("temperature") == 0.4
    assert settings.config.setting("top_p") is None
    assert any("top_p" in s and "(0, 1]" in s for s in settings.skipped)
    assert any("'colour' is not a setting" in s for s in settings.skipped)


def test_a_bad_chat_value_is_not_checked_when_the_command_line_replaces_it() -> None:
    settings = merge_settings(CommandLine(values={"top_p": 0.5}), chat=header(top_p=0.0))
    assert settings.config.setting("top_p") == 0.5
    assert settings.skipped == ()


def test_bad_command_line_values_raise() -> None:
    with pytest.raises(SettingsError, match="top_p"):
        merge_settings(CommandLine(values={"top_p": 2.0}))
    with pytest.raises(SettingsError, match="unknown settings"):
        merge_settings(CommandLine(values={"tempreature": 1.0}))


def test_model_precedence() -> None:
    chat = header(model_path="from-chat")
    profile = ("quick", "from-profile")
    assert merge_settings(CommandLine(model="flag"), chat=chat, profile=profile).model == "flag"
    settings = merge_settings(chat=chat, profile=profile)
    assert (settings.model, settings.model_source) == ("from-profile", "profile 'quick'")
    settings = merge_settings(chat=chat)
    assert (settings.model, settings.model_source) == ("from-chat", FROM_CHAT)


def test_a_chat_without_a_model_needs_a_model_flag() -> None:
    chat = new_chat().header
    with pytest.raises(SettingsError, match=r"does not name its model.*--model"):
        merge_settings(chat=chat, chat_source="old.json")
    assert merge_settings(CommandLine(model="m"), chat=chat).model == "m"


def test_tools_come_from_flags_then_the_chat() -> None:
    chat = header(tools={"python": True, "browser": True})
    settings = merge_settings(CommandLine(tools={"browser": False, "apply_patch": True}), chat=chat)
    assert settings.tools == {"browser": False, "python": True, "apply_patch": True}
    with pytest.raises(SettingsError, match="unknown tools"):
        merge_settings(CommandLine(tools={"shell": True}))


def test_performance_mode_from_the_command_line_uses_the_perf_values() -> None:
    config = PromptConfig(max_tokens=1000, perf_max_tokens=50)
    settings = merge_settings(CommandLine(values={"performance_mode": True}), prompt_config=config)
    assert settings.config.effective().max_tokens == 50
