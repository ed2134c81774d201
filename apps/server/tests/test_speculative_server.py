"""Speculative decoding in the server: --draft-model / --num-draft-tokens / --prompt-lookup set the
default model's prompt config, such a model is served one request at a time, structured output on
it is a 400 that says why, and (slow, the demo model behind a real uvicorn and the openai SDK)
greedy answers are those of the plain server while the usage counts the accepted and rejected
guesses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony.generate.testing import ScriptedGenerator
from mlx_harmony.server import ServerSettings
from mlx_harmony.server.cli import build_parser, main

FINAL = "<|channel|>final<|message|>{}<|return|>"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_flags_reach_the_default_models_prompt_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--prompt-lookup", "3", "--num-draft-tokens", "6"])
    assert (args.prompt_lookup, args.num_draft_tokens, args.draft_model) == (3, 6, None)
    settings = ServerSettings(prompt_lookup=3, num_draft_tokens=6)
    config = settings.registry().default.prompt_config
    assert (config.prompt_lookup, config.num_draft_tokens, config.draft_model) == (3, 6, None)
    # A draft that is a folder is made absolute; anything else is a Hugging Face repo id.
    (tmp_path / "draft").mkdir()
    for given, expected in ((str(tmp_path / "draft"), str(tmp_path / "draft")), ("org/d", "org/d")):
        config = ServerSettings(draft_model=given).registry().default.prompt_config
        assert config.draft_model == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--draft-model", "d", "--prompt-lookup", "2"], "cannot be combined"),
        (["--prompt-lookup", "2", "--prompt-cache-dir", "x"], "turn off"),
    ],
)
def test_bad_combinations_exit_2_with_the_fix(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--prompt-lookup", "--num-draft-tokens"])
def test_counts_below_one_are_usage_errors(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([flag, "0"])
    assert exit_info.value.code == 2
    assert "expected a number >= 1" in capsys.readouterr().err


def test_a_requests_prompt_config_cannot_turn_speculation_on(
    start_server: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "lookup.json").write_text(json.dumps({"prompt_lookup": 2}))
    server = start_server(ScriptedGenerator([FINAL]), prompt_config_dir=str(folder))
    body = {"messages": [{"role": "user", "content": "hi"}], "prompt_config": "lookup.json"}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "prompt_config"
    assert "prompt_lookup" in error["message"]
    assert "when it loads" in error["message"]


class SpeculatingGenerator(ScriptedGenerator):
    """A scripted model that says it speculates, as a TokenGenerator with a draft does."""

    speculates = True


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": SCHEMA},
                }
            },
            "response_format",
        ),
        ({"tools": [WEATHER], "tool_choice": "required"}, "tools"),
    ],
)
def test_structured_output_on_a_speculating_model_is_a_400(
    start_server: Any, body: dict[str, Any], param: str
) -> None:
    generator = SpeculatingGenerator([FINAL])
    server = start_server(generator)
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param)
    assert "speculatively" in error["message"]
    assert "--draft-model or --prompt-lookup" in error["message"]
    assert generator.calls == []  # refused before any generation
    free = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert free.status_code == 200


# -- the demo model behind a real server --------------------------------------------------------


QUESTION = "Repeat after me, twice: the quick brown fox jumps over the lazy dog."


def _ask(server: Any) -> Any:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    return client.chat.completions.create(
        model=server.app.state.registry.default.id,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=200,
    )


@pytest.mark.slow
@pytest.mark.parametrize("how", ["prompt_lookup", "draft_model"])
def test_greedy_answers_match_and_usage_counts_the_guesses(
    start_server: Any, demo_model: Path, tmp_path: Path, how: str
) -> None:
    from mlx_harmony.generate import TokenGenerator

    config = tmp_path / "prompt-config.json"
    config.write_text(json.dumps({"loop_detection": "off"}))
    common = {"model": str(demo_model), "prompt_config": str(config), "preload": True}
    plain = _ask(start_server(real=True, **common))
    speculation = (
        {"prompt_lookup": 2} if how == "prompt_lookup" else {"draft_model": str(demo_model)}
    )
    server = start_server(real=True, max_concurrency=8, **common, **speculation)
    answer = _ask(server)
    assert answer.choices[0].message.content == plain.choices[0].message.content
    assert answer.usage is not None
    assert plain.usage is not None
    assert answer.usage.completion_tokens == plain.usage.completion_tokens
    details = answer.usage.completion_tokens_details
    assert details is not None
    assert details.accepted_prediction_tokens is not None
    assert details.rejected_prediction_tokens is not None
    assert details.accepted_prediction_tokens + details.rejected_prediction_tokens > 0
    if how == "draft_model":  # the model is its own draft: it rejects none of its guesses
        assert details.accepted_prediction_tokens > 0
        assert details.rejected_prediction_tokens == 0
    plain_details = plain.usage.completion_tokens_details
    assert plain_details is not None
    assert plain_details.accepted_prediction_tokens is None
    # Speculation does not batch: the model runs on the one-at-a-time generator.
    state = server.worker.state
    assert state is not None
    assert type(state.generator) is TokenGenerator
    assert state.generator.speculates
    refused = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "n", "schema": SCHEMA},
            },
        },
        timeout=60,
    )
    assert refused.status_code == 400, refused.text
    assert "speculatively" in refused.json()["error"]["message"]
