"""Habits and files of mlx-harmony 0.4 in the chat: quit words, ``/``, ``\\set a=b``,
``\\models``, the flat profiles file, the original README's prompt config, the client."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from mlx_harmony.cli.client import DEFAULT_SERVER, SERVER_ENV, client_argv
from mlx_harmony.cli.frontend import describe_models
from mlx_harmony.cli.testing import ENTER, run_chat
from mlx_harmony.controller.testing import FakeBackend

README_CONFIG = {
    "system_model_identity": "You are {assistant} on <|DATE|> at <|TIMEZ|> (local time, "
    "<|TIMEU|> UTC).",
    "reasoning_effort": "Medium",
    "conversation_start_date": "<|DATE|>",
    "knowledge_cutoff": "2025-01",
    "developer_instructions": "Address the user as {user} and be concise.",
    "assistant_greeting": "Hello {user}, I'm {assistant}. How can I help you today?",
    "example_dialogues": [
        [
            {"role": "user", "content": "Hello, how can you help me?"},
            {
                "role": "assistant",
                "content": "Hello {user}! I'm {assistant} and I'm here to help...",
            },
        ]
    ],
    "placeholders": {"assistant": "Dave", "user": "Morgan"},
    "temperature": 0.8,
    "top_p": 0.9,
    "top_k": 40,
    "min_p": 0.0,
    "min_tokens_to_keep": 1,
    "max_tokens": 1024,
    "repetition_penalty": 1.0,
    "repetition_context_size": 20,
    "prewarm_cache": True,
    "mlock": False,
}


@pytest.mark.parametrize("word", ["q", "quit", "exit", "Q"])
def test_a_quit_word_alone_leaves_the_chat(word: str) -> None:
    backend = FakeBackend(["ok"])
    run = run_chat([], "Hi" + ENTER + word + ENTER + "never sent" + ENTER, backend=backend)
    assert run.status == 0
    assert [r.turn.user.text for r in backend.requests] == ["Hi"]


def test_slash_commands_and_set_name_equals_value() -> None:
    backend = FakeBackend(["ok"])
    keys = "/set temperature=0.25" + ENTER + "/help" + ENTER + "Go" + ENTER + "/quit" + ENTER
    run = run_chat([], keys, backend=backend)
    assert run.status == 0
    assert "temperature = 0.25" in run.screen
    assert "\\retry" in run.screen
    [request] = backend.requests
    assert request.config.setting("temperature") == 0.25
    assert request.turn.user.text == "Go"


def _model_folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt_oss"}))
    return folder


def test_models_lists_models_dir_and_the_flat_profiles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    _model_folder(models, "gpt-oss-20b")
    _model_folder(models, "gpt-oss-120b")
    (models / "notes").mkdir()  # not a model: no config.json
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"models_dir": str(models)}))
    profiles = tmp_path / "profiles.json"
    profiles.write_text(
        json.dumps({"small": {"model": "./models/gpt-oss-20b", "prompt_config": "config.json"}})
    )
    monkeypatch.setenv("MLX_HARMONY_PROFILES", str(profiles))
    run = run_chat(["--prompt-config", str(config)], "\\list" + ENTER + "q" + ENTER)
    assert run.status == 0
    screen = run.screen
    assert f"Models in {models}" in screen
    assert "  gpt-oss-120b\n  gpt-oss-20b\nProfiles (use with --profile NAME):\n  small" in screen
    assert "notes" not in screen


def test_describe_models_says_what_is_missing(tmp_path: Path) -> None:
    text = describe_models(None, ())
    assert "No models_dir" in text
    assert "No profiles file" in text
    assert "is not a folder" in describe_models(tmp_path / "nowhere", ("a",))


def test_a_flat_profiles_file_picks_the_model_and_config(tmp_path: Path) -> None:
    model = _model_folder(tmp_path, "gpt-oss-20b")
    (tmp_path / "config.json").write_text(
        json.dumps({"developer_instructions": "Be {x}.", "placeholders": {"x": "kind"}})
    )
    profiles = tmp_path / "profiles.json"
    profiles.write_text(
        json.dumps({"gpt-oss-20b": {"model": "./gpt-oss-20b", "prompt_config": "config.json"}})
    )
    backend = FakeBackend(["ok"])
    argv = ["--profiles-file", str(profiles), "--profile", "gpt-oss-20b"]
    run = run_chat(argv, "Hi" + ENTER + "q" + ENTER, backend=backend)
    assert run.status == 0, run.screen
    assert run.calls[0]["location"].path == model
    assert backend.requests[0].config.developer_instructions == "Be kind."


def test_the_original_readme_config_starts_the_chat_with_one_warning(tmp_path: Path) -> None:
    config = tmp_path / "prompt-config.json"
    config.write_text(json.dumps(README_CONFIG))
    run = run_chat(["--prompt-config", str(config)], "q" + ENTER)
    assert run.status == 0, run.screen
    screen = " ".join(run.screen.split())
    assert screen.count("warning:") == 1
    assert "warning: prewarm_cache has no job here" in screen
    assert "Hello Morgan, I'm Dave." in screen


def test_client_adds_the_server_unless_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)
    assert client_argv([]) == ["--server", DEFAULT_SERVER]
    assert client_argv(["--model", "m"]) == ["--server", DEFAULT_SERVER, "--model", "m"]
    assert client_argv(["--server", "http://127.0.0.1:9"]) == ["--server", "http://127.0.0.1:9"]
    assert client_argv(["--server=http://127.0.0.1:9"]) == ["--server=http://127.0.0.1:9"]
    monkeypatch.setenv(SERVER_ENV, "http://127.0.0.1:8123")
    assert client_argv([])[:2] == ["--server", "http://127.0.0.1:8123"]


def test_client_chats_with_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SERVER_ENV, raising=False)
    run = run_chat(client_argv([]), "q" + ENTER)
    assert run.status == 0, run.screen
    location: Any = run.calls[0]["location"]
    assert location.server == DEFAULT_SERVER


def test_the_client_console_script_is_declared() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    scripts = pyproject["project"]["scripts"]
    assert scripts["mlx-harmony-client"] == "mlx_harmony.cli.client:main"
