"""``POST /v1/completions``: the raw prompt through the model's tokenizer (no template), whole
or streamed, with echo, logprobs, max_tokens and stop."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony.controller.testing import Script
from mlx_harmony.harmony_format import get_encoding

PROMPT = "Once upon a time"
TEXT = " there was a tiny model that wrote stories."


def text_script(text: str = TEXT) -> Script:
    return Script(tuple(get_encoding().encode(text)), stop_reason="stop")


def post(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/completions", json=body, timeout=30)


def test_a_completion_continues_the_raw_prompt(server: Any) -> None:
    server.generator.add(text_script())
    response = post(server.url, {"prompt": PROMPT, "max_tokens": 50, "seed": 3})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "text_completion"
    assert answer["id"].startswith("cmpl-")
    choice = answer["choices"][0]
    assert choice["text"] == TEXT
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    call = server.generator.calls[-1]
    assert list(call.prompt_tokens) == get_encoding().encode(PROMPT)  # no chat template
    assert call.sampling.seed == 3
    usage = answer["usage"]
    assert usage["prompt_tokens"] == len(call.prompt_tokens)
    assert usage["completion_tokens"] == len(get_encoding().encode(TEXT))


def test_max_tokens_and_stop_cut_the_text(server: Any) -> None:
    server.generator.add(text_script())
    cut = post(server.url, {"prompt": PROMPT, "max_tokens": 2}).json()["choices"][0]
    assert cut["finish_reason"] == "length"
    assert cut["text"] == get_encoding().decode(get_encoding().encode(TEXT)[:2])
    server.generator.add(text_script())
    stopped = post(server.url, {"prompt": PROMPT, "stop": ["tiny"]}).json()["choices"][0]
    assert stopped["text"] == " there was a "
    assert stopped["finish_reason"] == "stop"


def test_echo_puts_the_prompt_first(server: Any) -> None:
    server.generator.add(text_script())
    choice = post(server.url, {"prompt": PROMPT, "echo": True}).json()["choices"][0]
    assert choice["text"] == PROMPT + TEXT
    ids = get_encoding().encode(PROMPT)
    server.generator.add(text_script())
    by_ids = post(server.url, {"prompt": ids, "echo": True}).json()["choices"][0]
    assert by_ids["text"] == PROMPT + TEXT


def test_a_streamed_completion_sends_the_text_as_it_comes(server: Any) -> None:
    server.generator.add(text_script())
    body = {
        "prompt": PROMPT,
        "stream": True,
        "echo": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(choice["text"] for c in chunks for choice in c["choices"])
    assert text == PROMPT + TEXT
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len(get_encoding().encode(TEXT))
    assert len(chunks) > 4  # token by token, not one block


def test_logprobs_come_in_the_legacy_shape(server: Any) -> None:
    server.generator.add(text_script())
    choice = post(server.url, {"prompt": PROMPT, "logprobs": 2}).json()["choices"][0]
    logprobs = choice["logprobs"]
    tokens = [get_encoding().decode([t]) for t in get_encoding().encode(TEXT)]
    assert logprobs["tokens"] == tokens
    assert len(logprobs["token_logprobs"]) == len(tokens)
    assert len(logprobs["top_logprobs"]) == len(tokens)
    offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert logprobs["text_offset"] == offsets


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": PROMPT, "n": 2}, "n"),
        ({"prompt": PROMPT, "suffix": "end"}, "suffix"),
        ({"prompt": PROMPT, "echo": True, "logprobs": 1}, "logprobs"),
        ({"prompt": PROMPT, "logprobs": 9}, "logprobs"),
        ({"prompt": PROMPT, "temperature": 3}, "temperature"),
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({}, "prompt"),
    ],
)
def test_bad_completion_requests_are_400s_naming_the_field(
    server: Any, body: dict[str, Any], param: str
) -> None:
    response = post(server.url, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_openai_client_reads_a_completion(server: Any) -> None:
    server.generator.add(text_script())
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
    answer = client.completions.create(model="mlx-harmony-demo", prompt=PROMPT, max_tokens=40)
    assert answer.choices[0].text == TEXT
    server.generator.add(text_script())
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="mlx-harmony-demo", prompt=PROMPT, stream=True)
        if c.choices
    )
    assert streamed == TEXT


@pytest.mark.parametrize("token", [-1, 2**63, 10**30])
def test_token_ids_outside_the_vocabulary_are_a_400(server: Any, token: int) -> None:
    response = post(server.url, {"prompt": [token]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "prompt"
