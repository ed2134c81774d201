"""Models, health, the request log, start-up options and the command line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony.api_client import Client
from mlx_harmony.server import ServerSettings, create_app
from mlx_harmony.server.cli import main

USER = [{"role": "user", "content": "Hi"}]


def _folder(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def catalog(tmp_path: Path) -> dict[str, Any]:
    models = tmp_path / "models"
    _folder(models, "alpha")
    _folder(models, "beta")
    (models / "not-a-model").mkdir()
    profiles = tmp_path / "profiles.json"
    profiles.write_text(
        json.dumps(
            {
                "default": "quick",
                "profiles": {
                    "quick": {
                        "model": "./models/alpha",
                        "prompt_config": {"reasoning_effort": "low"},
                    },
                    "deep": {
                        "model": "./models/beta",
                        "prompt_config": {"reasoning_effort": "high"},
                    },
                },
            }
        )
    )
    return {"models_dir": str(models), "profiles": str(profiles)}


def test_models_lists_the_default_then_folders_then_profiles(
    start_server: Any, catalog: dict[str, Any]
) -> None:
    server = start_server(**catalog)
    with Client(server.url) as client:
        cards = client.models()
    assert [(c["id"], c["kind"]) for c in cards] == [
        ("mlx-harmony-demo", "model"),
        ("alpha", "folder"),
        ("beta", "folder"),
        ("quick", "profile"),
        ("deep", "profile"),
    ]
    listed = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x").models.list()
    assert [m.id for m in listed.data] == [c["id"] for c in cards]
    assert httpx.get(f"{server.url}/v1/models/beta").json()["kind"] == "folder"


def test_naming_a_folder_or_profile_switches_model_and_prompt_config(
    start_server: Any, catalog: dict[str, Any]
) -> None:
    server = start_server(**catalog)
    with Client(server.url) as client:
        client.chat(USER)
        client.chat(USER, model="alpha")
        client.chat(USER, model="deep")
        client.chat(USER, model="deep")
        health = client.health()
    # The scripted loader returns one generator; the worker loads once per model folder.
    assert server.loads == ["mlx-harmony-demo", "alpha", "deep"]
    assert "Reasoning: high" in server.generator.calls[-1].prompt_text
    assert health["model"] == "deep"
    assert health["model_loaded"] is True


def test_a_profile_as_the_default_model(start_server: Any, catalog: dict[str, Any]) -> None:
    server = start_server(profile="quick", **catalog)
    with Client(server.url) as client:
        answer = client.chat(USER)
        assert client.models()[0]["id"] == "quick"
    assert answer.model == "quick"
    assert "Reasoning: low" in server.generator.calls[-1].prompt_text


def test_health_before_and_after_the_lazy_load(start_server: Any, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"developer_instructions": "Be kind."}))
    server = start_server(prompt_config=str(config))
    before = httpx.get(f"{server.url}/v1/health").json()
    assert before["model_loaded"] is False
    assert before["loaded_at_unix"] is None
    assert before["prompt_config_path"] == str(config.resolve())
    with Client(server.url) as client:
        client.chat(USER)
        after = client.health()
    assert after["model_loaded"] is True
    assert after["loaded_at_unix"] > 0
    assert after["model_path"] == "echo"
    assert "Be kind." in server.generator.calls[-1].prompt_text


def test_preload_loads_before_the_first_request(start_server: Any) -> None:
    server = start_server(preload=True)
    assert server.loads == ["mlx-harmony-demo"]
    assert httpx.get(f"{server.url}/v1/health").json()["model_loaded"] is True


def test_every_request_gets_one_log_line_with_its_tokens(server: Any, wait_for: Any) -> None:
    with Client(server.url, headers={"x-request-id": "trace-42"}) as client:
        answer = client.chat(USER)
    httpx.get(f"{server.url}/v1/nothing")
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": "x"})
    assert response.headers["x-request-id"]
    # A line is written once the response is sent, so the client may see it first.
    assert wait_for(lambda: len(server.log_lines()) == 3)
    lines = server.log_lines()
    usage = answer.usage
    assert usage is not None
    pattern = (
        rf"trace-42 POST /v1/chat/completions 200 prompt={usage.prompt_tokens} "
        rf"completion={usage.completion_tokens} \d+\.\d{{3}}s finish=stop$"
    )
    assert re.search(pattern, lines[0]), lines[0]
    assert " GET /v1/nothing 404 " in lines[1]
    assert " POST /v1/chat/completions 400 " in lines[2]
    assert "error=invalid_type" in lines[2]


def test_the_openapi_schema_describes_the_routes(server: Any) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/models", "/v1/health", "/v1/tokenize"} <= set(
        schema["paths"]
    )
    responses = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"200", "400", "401", "404", "413", "422", "503"} <= set(responses)


def test_bad_settings_are_reported_before_serving(tmp_path: Path) -> None:
    from mlx_harmony.controller import ConfigError

    bad = tmp_path / "config.json"
    bad.write_text('{"top_p": 0}')
    with pytest.raises(ConfigError, match="top_p"):
        create_app(ServerSettings(prompt_config=str(bad)))
    with pytest.raises(ConfigError, match="--profiles"):
        create_app(ServerSettings(profile="x"))
    with pytest.raises(ValueError, match="max_tokens_cap"):
        ServerSettings(max_tokens_cap=0)


def test_the_command_reports_bad_options_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "config.json"
    bad.write_text('{"tempreature": 1}')
    assert main(["--prompt-config", str(bad)]) == 2
    assert "did you mean 'temperature'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--max-tokens-cap", "0"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        main(["--model", "a", "--profile", "b"])


def test_the_command_serves_the_demo_model_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    import mlx_harmony.server.models as models

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setattr(models, "demo_model_folder", lambda: Path("/built/demo"))
    monkeypatch.setenv("MLX_HARMONY_API_KEY", "k")
    assert main(["--port", "8123"]) == 0
    err = capsys.readouterr().err
    assert "serving the demo model" in err
    assert "demo model in /built/demo" in err
    assert "http://127.0.0.1:8123/v1" in err
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)
    assert seen["app"].title == "mlx-harmony-server"
