"""Reasoning in the Responses API: summaries (``reasoning.summary``), sealed reasoning for
stateless clients (``include: ["reasoning.encrypted_content"]`` with ``store: false``), and
the warnings for what the server cannot use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from cryptography.fernet import Fernet

from mlx_harmony.controller.testing import Script
from mlx_harmony.server.reasoning_seal import KEY_ENV_VAR, ReasoningSeal, load_reasoning_seal
from mlx_harmony.server.responses.events import summarize

TIME_TOOL = {
    "type": "function",
    "name": "get_current_time",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
}
MODEL = "mlx-harmony-demo"
ENCRYPTED = "reasoning.encrypted_content"


def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


# -- the seal ------------------------------------------------------------------------------------


def test_a_sealed_text_opens_with_the_same_key_only() -> None:
    seal = ReasoningSeal()
    blob = seal.seal("I think, therefore I call.")
    assert "think" not in blob
    assert seal.open(blob) == "I think, therefore I call."
    assert ReasoningSeal().open(blob) is None


@pytest.mark.parametrize(
    "blob", ["", "gAAAAAB-openai-blob", "mlxh1:", "mlxh1:not base64 at all", "mlxh1:gAAAAABfake"]
)
def test_a_forged_or_foreign_blob_does_not_open(blob: str) -> None:
    assert ReasoningSeal().open(blob) is None


def test_an_altered_blob_does_not_open() -> None:
    seal = ReasoningSeal()
    blob = seal.seal("secret")
    flipped = blob[:-5] + ("A" if blob[-5] != "A" else "B") + blob[-4:]
    assert seal.open(flipped) is None


def test_the_key_comes_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = Fernet.generate_key()
    (tmp_path / "key").write_bytes(key + b"\n")
    blob = ReasoningSeal(key).seal("shared")
    assert load_reasoning_seal(str(tmp_path / "key")).open(blob) == "shared"
    monkeypatch.setenv(KEY_ENV_VAR, key.decode())
    assert load_reasoning_seal().open(blob) == "shared"
    monkeypatch.delenv(KEY_ENV_VAR)
    assert load_reasoning_seal().open(blob) is None


def test_a_bad_key_is_refused_with_how_to_make_one(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("too short")
    with pytest.raises(ValueError, match=r"Fernet\.generate_key"):
        load_reasoning_seal(str(tmp_path / "key"))
    with pytest.raises(ValueError, match="cannot read it"):
        load_reasoning_seal(str(tmp_path / "missing"))


def test_concise_keeps_the_first_sentences() -> None:
    text = "First I look at the question. " * 3 + "x" * 300
    assert summarize(text, "auto") == text.strip()
    concise = summarize(text, "concise")
    assert concise == " ".join(["First I look at the question."] * 3)
    assert summarize("y" * 300, "concise") == "y" * 199 + "…"


# -- through the server ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "detailed", "concise"])
def test_a_summary_is_the_analysis_and_the_setting_is_echoed(server: Any, mode: str) -> None:
    response = oai(server.url).responses.create(
        model=MODEL, input="Hello", reasoning={"effort": "low", "summary": mode}
    )
    assert response.reasoning is not None
    assert response.reasoning.summary == mode
    reasoning = response.output[0]
    assert reasoning.type == "reasoning"
    assert [part.text for part in reasoning.summary] == ["The user said 'Hello'."]
    assert reasoning.encrypted_content is None


def test_without_a_summary_setting_the_summary_is_empty(server: Any) -> None:
    response = oai(server.url).responses.create(model=MODEL, input="Hello")
    assert response.reasoning is not None
    assert response.reasoning.summary is None
    assert response.output[0].type == "reasoning"
    assert response.output[0].summary == []


def test_an_unknown_summary_is_a_400(server: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        oai(server.url).responses.create(model=MODEL, input="Hi", reasoning={"summary": "long"})
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "reasoning.summary"
    assert "'long'" in body["message"]


def test_stateless_tool_round_with_sealed_reasoning(server: Any) -> None:
    """store: false, the reasoning sent back sealed only: it is in the prompt of the round."""
    client = oai(server.url)
    items: list[Any] = [{"role": "user", "content": "What time is it?"}]
    first = client.responses.create(
        model=MODEL, input=items, tools=[TIME_TOOL], store=False, include=[ENCRYPTED]
    )
    reasoning, call = first.output
    assert reasoning.type == "reasoning"
    assert call.type == "function_call"
    assert reasoning.encrypted_content
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    items += [
        {
            "type": "reasoning",
            "id": reasoning.id,
            "summary": [],
            "encrypted_content": reasoning.encrypted_content,
        },
        call.model_dump(exclude_none=True),
        {"type": "function_call_output", "call_id": call.call_id, "output": "noon"},
    ]
    raw = client.responses.with_raw_response.create(
        model=MODEL, input=items, tools=[TIME_TOOL], store=False, include=[ENCRYPTED]
    )
    assert raw.headers.get_list("x-mlx-harmony-warning") == []
    assert raw.parse().output_text == "The tool get_current_time said: noon"
    prompt = server.generator.records[-1].prompt
    assert (
        "<|channel|>analysis<|message|>The user wants the time; I call the tool.<|end|>" in prompt
    )


def test_a_forged_blob_is_dropped_with_a_warning_not_an_error(server: Any) -> None:
    items = [
        {"role": "user", "content": "What time is it?"},
        {"type": "reasoning", "summary": [], "encrypted_content": "mlxh1:gAAAAABforged"},
        {"type": "function_call", "call_id": "c1", "name": "get_current_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "noon"},
    ]
    response = httpx.post(
        f"{server.url}/v1/responses",
        json={"model": MODEL, "input": items, "tools": [TIME_TOOL], "store": False},
        timeout=60,
    )
    assert response.status_code == 200
    (warning,) = response.headers.get_list("x-mlx-harmony-warning")
    assert "input[1].encrypted_content was not sealed with this server's reasoning key" in warning
    assert "<|channel|>analysis" not in server.generator.records[-1].prompt.split("What time")[1]


def test_a_forged_blob_with_a_summary_falls_back_to_the_summary(server: Any) -> None:
    items = [
        {"role": "user", "content": "What time is it?"},
        {
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Ask the clock."}],
            "encrypted_content": "foreign",
        },
        {"type": "function_call", "call_id": "c1", "name": "get_current_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "noon"},
    ]
    oai(server.url).responses.create(model=MODEL, input=items, tools=[TIME_TOOL])
    assert (
        "<|channel|>analysis<|message|>Ask the clock.<|end|>" in server.generator.records[-1].prompt
    )


def test_an_include_value_not_produced_is_a_warning(server: Any) -> None:
    raw = oai(server.url).responses.with_raw_response.create(
        model=MODEL, input="Hi", include=["message.output_text.logprobs", ENCRYPTED]
    )
    (warning,) = raw.headers.get_list("x-mlx-harmony-warning")
    assert "include[0] 'message.output_text.logprobs'" in warning
    assert raw.parse().output[0].encrypted_content


def test_codex_fields_are_accepted(server: Any) -> None:
    server.generator.add(Script.harmony("Hi there.", analysis="Greet."))
    response = httpx.post(
        f"{server.url}/v1/responses",
        json={
            "model": MODEL,
            "input": "Hi",
            "store": False,
            "parallel_tool_calls": True,
            "prompt_cache_key": "thread-1",
            "client_metadata": {"thread_id": "thread-1"},
        },
        timeout=60,
    )
    assert response.status_code == 200
    assert "x-mlx-harmony-warning" not in response.headers
    assert response.json()["output"][-1]["content"][0]["text"] == "Hi there."
