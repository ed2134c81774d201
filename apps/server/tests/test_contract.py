"""The OpenAI contract on chat completions: stop strings (streamed and whole agree), 400s in
OpenAI's shape and ranges for every invalid request."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony.controller.testing import Script

USER = [{"role": "user", "content": "Who are you?"}]


def post(url: str, body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def streamed(url: str, body: dict[str, Any]) -> tuple[str, str, str | None]:
    """(content, reasoning, finish_reason) joined from a stream's chunks."""
    content, reasoning, finish = "", "", None
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:])["choices"]:
                content += choice["delta"].get("content") or ""
                reasoning += choice["delta"].get("reasoning") or ""
                finish = choice["finish_reason"] or finish
    return content, reasoning, finish


def whole(url: str, body: dict[str, Any]) -> tuple[str, str, str]:
    response = post(url, body)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    message = choice["message"]
    return message["content"] or "", message.get("reasoning") or "", choice["finish_reason"]


REPLY = Script.harmony("This is a tiny demo model.", analysis="User asks something. Reply briefly.")


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_in_the_answer_ends_it_before_the_stop_string(
    server: Any, stream: bool
) -> None:
    server.generator.add(REPLY)
    body = {"messages": USER, "stop": ["tiny"], "max_tokens": 100}
    content, reasoning, finish = (streamed if stream else whole)(server.url, body)
    assert content == "This is a "
    assert reasoning == "User asks something. Reply briefly."
    assert finish == "stop"


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_string_in_the_reasoning_cuts_the_reasoning_and_ends_the_turn(
    server: Any, stream: bool
) -> None:
    server.generator.add(REPLY)
    body = {"messages": USER, "stop": "Reply"}
    content, reasoning, finish = (streamed if stream else whole)(server.url, body)
    assert reasoning == "User asks something. "
    assert content == ""
    assert finish == "stop"
    # No retry that starts the final answer: the stop string ended the turn.
    assert len(server.generator.calls) == 1


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("max_tokens", -1, "max_tokens"),
        ("top_logprobs", 30, "top_logprobs"),
        ("messages", [{"role": "wizard", "content": "x"}], "messages[0]"),
        ("messages", [], "messages"),
        ("reasoning_effort", "minimal", "reasoning_effort"),
        ("temperature", 5, "temperature"),
        ("temperature", -0.5, "temperature"),
    ],
)
def test_invalid_requests_are_400s_in_openais_shape(
    server: Any, field: str, value: Any, param: str
) -> None:
    body: dict[str, Any] = {"messages": USER, "logprobs": True, field: value}
    response = post(server.url, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


def test_the_openai_client_raises_bad_request_for_an_invalid_request(server: Any) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="mlx-harmony-demo", messages=USER, temperature=5)
    assert raised.value.status_code == 400


def test_the_responses_api_answers_a_schema_error_with_a_400(server: Any) -> None:
    response = httpx.post(f"{server.url}/v1/responses", json={"input": 5}, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_a_stream_that_waits_gets_keep_alive_comments(start_server: Any, echo: Any) -> None:
    generator = echo(hold_after=0)  # each generation waits before its first token
    server = start_server(generator, keepalive_s=0.1)
    body = {"messages": [{"role": "user", "content": "Hello"}], "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=5) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = [next(lines) for _ in range(4)]
        assert seen[0] == ": keep-alive"  # before any token: the status and a comment
        assert all(line in (": keep-alive", "") for line in seen)
        generator.release()
        rest = [line for line in lines if line and line != ": keep-alive"]
    content = "".join(
        choice["delta"].get("content") or ""
        for line in rest
        if line.startswith("data: {")
        for choice in json.loads(line[6:])["choices"]
    )
    assert content == "You said: Hello"
    assert rest[-1] == "data: [DONE]"


def test_an_error_found_after_keep_alives_ends_the_stream_with_an_error_event(
    start_server: Any, echo: Any
) -> None:
    generator = echo(hold_after=0, context_length=64)
    generator.release()
    server = start_server(generator, keepalive_s=0.1)
    long = {"messages": [{"role": "user", "content": "word " * 200}], "stream": True}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=long, timeout=10)
    # Found before generating and before the first keep-alive: still an HTTP status.
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


# -- n ------------------------------------------------------------------------------------------


def test_n_choices_have_their_own_seeds_and_summed_usage(server: Any) -> None:
    from mlx_harmony.server.chat.translation import choice_seed

    body = {"messages": USER, "n": 3, "seed": 7, "temperature": 1.0}
    single = post(server.url, {**body, "n": 1}).json()
    answer = post(server.url, body).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "You said: Who are you?" for c in answer["choices"])
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert answer["usage"][key] == 3 * single["usage"][key]
    seeds = [call.sampling.seed for call in server.generator.calls[1:]]
    assert sorted(seeds) == sorted([7, choice_seed(7, 1), choice_seed(7, 2)])
    assert len(set(seeds)) == 3
    post(server.url, body)  # the same seed: the same choice seeds again
    assert sorted(c.sampling.seed for c in server.generator.calls[4:]) == sorted(seeds)


def test_n_choices_without_a_seed_still_differ(server: Any) -> None:
    post(server.url, {"messages": USER, "n": 2})
    assert len({call.sampling.seed for call in server.generator.calls}) == 2


def test_n_choices_stream_with_their_index(server: Any) -> None:
    body = {"messages": USER, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert len({chunk["id"] for chunk in chunks}) == 1
    content = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            content[choice["index"]] += choice["delta"].get("content") or ""
            if choice["finish_reason"]:
                finishes[choice["index"]] = choice["finish_reason"]
    assert content == {0: "You said: Who are you?", 1: "You said: Who are you?"}
    assert finishes == {0: "stop", 1: "stop"}
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    single = post(server.url, {"messages": USER}).json()["usage"]
    assert usage["completion_tokens"] == 2 * single["completion_tokens"]


def test_n_above_the_cap_names_the_flag(start_server: Any) -> None:
    server = start_server(max_n=2)
    response = post(server.url, {"messages": USER, "n": 3})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert "--max-n" in response.json()["error"]["message"]


# -- the official client against the real demo model ---------------------------------------------


@pytest.fixture(scope="module")
def demo_model() -> str:
    import os

    import mlx_harmony.demo_model as demo

    env = os.environ.get("MLX_HARMONY_DEMO_MODEL")
    if env:
        return env
    try:
        return str(demo.ensure_demo_model(progress=False))
    except Exception as error:  # no trained model here: these tests need its answers
        pytest.skip(f"the demo model cannot be built ({error})")


@pytest.fixture
def real(start_server: Any, demo_model: str) -> openai.OpenAI:
    server = start_server(real=True, model=demo_model, preload=True)
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


ASK = [{"role": "user", "content": "Who are you?"}]


@pytest.mark.slow
def test_the_openai_client_chats_and_streams_the_same_answer(real: openai.OpenAI) -> None:
    whole = real.chat.completions.create(model="mlx-harmony-demo", messages=ASK, temperature=0)
    text = whole.choices[0].message.content
    assert text
    assert "<|" not in text
    chunks = real.chat.completions.create(
        model="mlx-harmony-demo", messages=ASK, temperature=0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


@pytest.mark.slow
def test_the_openai_client_stops_streamed_and_whole_at_a_stop_string(
    real: openai.OpenAI,
) -> None:
    whole = real.chat.completions.create(
        model="mlx-harmony-demo", messages=ASK, temperature=0, stop=["tiny"]
    )
    text = whole.choices[0].message.content or ""
    assert "tiny" not in text
    chunks = real.chat.completions.create(
        model="mlx-harmony-demo", messages=ASK, temperature=0, stop=["tiny"], stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text


@pytest.mark.slow
def test_the_openai_client_gets_a_tool_call(real: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_current_time",
            "description": "Get the current time.",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    answer = real.chat.completions.create(
        model="mlx-harmony-demo",
        messages=[{"role": "user", "content": "What time is it?"}],
        tools=[tool],  # type: ignore[list-item]
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls
    assert choice.message.tool_calls[0].function.name == "get_current_time"  # type: ignore[union-attr]


@pytest.mark.slow
def test_the_openai_client_gets_n_seeded_reproducible_choices(real: openai.OpenAI) -> None:
    def ask() -> list[str]:
        answer = real.chat.completions.create(
            model="mlx-harmony-demo",
            messages=[{"role": "user", "content": "Tell me about the sea."}],
            n=3,
            seed=11,
            temperature=1.5,
            max_tokens=40,
        )
        assert [c.index for c in answer.choices] == [0, 1, 2]
        assert answer.usage is not None
        assert answer.usage.completion_tokens > 3
        return [
            (c.message.model_extra or {}).get("reasoning", "") + (c.message.content or "")
            for c in answer.choices
        ]

    first = ask()
    assert ask() == first  # the same seed: the same choices
    assert len(set(first)) > 1  # each choice samples with its own seed
    chunks = real.chat.completions.create(
        model="mlx-harmony-demo", messages=ASK, n=2, stream=True, temperature=0
    )
    indexes = {choice.index for chunk in chunks for choice in chunk.choices}
    assert indexes == {0, 1}
