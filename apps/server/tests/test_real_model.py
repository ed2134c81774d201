"""End to end on a real model through a real server: the demo model when mlx-harmony-demo-model
provides it (``MLX_HARMONY_DEMO_MODEL`` points at a prebuilt one), else a tiny random-weight
gpt-oss, on which the tests that need sensible answers are skipped."""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

import mlx_harmony.demo_model as demo
from mlx_harmony.api_client import Client

pytestmark = pytest.mark.slow

TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_time",
        "description": "Get the current time.",
        "parameters": {"type": "object", "properties": {}},
    },
}


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """(model folder, whether it is the trained demo model)."""
    env = os.environ.get("MLX_HARMONY_DEMO_MODEL")
    if env:
        return Path(env), True
    ensure = getattr(demo, "ensure_demo_model", None)
    if ensure is not None:
        try:
            return Path(ensure(progress=False)), True
        except Exception as error:  # a build that fails its self-check: test the mechanics
            warnings.warn(
                f"the demo model cannot be built ({error}); using a random one", stacklevel=1
            )
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    weights, config = build_random_model("tiny", seed=0)
    root = tmp_path_factory.mktemp("random-gpt-oss")
    return save_model(weights, config, root / "model", cache_dir=root / "cache"), False


@pytest.fixture
def real(start_server: Any, model: tuple[Path, bool], tmp_path: Path) -> Any:
    config = tmp_path / "prompt-config.json"
    # Loop detection off: a random model repeats itself, and the tests want full lengths.
    config.write_text(json.dumps({"loop_detection": "off"}))
    server = start_server(real=True, model=str(model[0]), prompt_config=str(config), preload=True)
    server.trained = model[1]
    return server


def needs_trained(server: Any) -> None:
    if not server.trained:
        pytest.skip("needs the trained demo model (mlx_harmony.demo_model.ensure_demo_model)")


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_an_answer_from_the_real_model_has_no_harmony_markers(real: Any) -> None:
    client = openai.OpenAI(base_url=f"{real.url}/v1", api_key="x")
    response = client.chat.completions.create(
        model=real.app.state.registry.default.id,
        messages=ask("What is the moon?"),
        max_tokens=80,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = response.choices[0]
    content = choice.message.content or ""
    reasoning = (choice.message.model_extra or {}).get("reasoning") or ""
    for text in (content, reasoning):
        assert "<|" not in text
    usage = response.usage
    assert usage is not None
    assert 0 < usage.completion_tokens <= 80
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    entries = choice.logprobs.content if choice.logprobs else None
    assert entries is not None
    assert len(entries) <= usage.completion_tokens
    assert bool(entries) == bool(content)
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-4
    if real.trained:
        assert content
        assert reasoning
        assert choice.finish_reason == "stop"


def test_the_next_request_reuses_the_real_prompt_cache(real: Any) -> None:
    with Client(real.url) as client:
        first = client.chat(ask("Tell me about bees."), max_tokens=40, temperature=0)
        messages = [*ask("Tell me about bees."), first.message(), *ask("And wasps?")]
        second = client.chat(messages, max_tokens=40, temperature=0)
    assert first.usage is not None
    assert second.usage is not None
    assert second.usage.cached_tokens >= first.usage.prompt_tokens - 1
    assert second.usage.cached_tokens < second.usage.prompt_tokens


def test_concurrent_requests_get_the_answers_they_get_alone(real: Any) -> None:
    questions = [f"Question {n}: name a colour." for n in range(4)]
    with Client(real.url) as client:
        alone = [client.chat(ask(q), max_tokens=24, temperature=0).content for q in questions]
    together: dict[int, str] = {}

    def run(n: int) -> None:
        with (
            Client(real.url) as client,
            client.stream_chat(ask(questions[n]), max_tokens=24, temperature=0) as stream,
        ):
            together[n] = stream.until_done().content

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [together[n] for n in range(4)] == alone


def test_a_client_that_leaves_stops_the_real_generation(real: Any, wait_for: Any) -> None:
    # The end tokens are banned, so the model writes until it is stopped.
    never_end = {"200002": -100, "200007": -100, "200012": -100}
    body = {"messages": ask("Write a long story."), "max_tokens": 3000, "logit_bias": never_end}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{real.url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=1.5)
        )
    worker = real.worker
    assert wait_for(lambda: worker.stats.cancelled == 1, timeout=60)
    batch = worker.state.generator  # the batching generator: the request left the batch
    assert wait_for(lambda: not batch.engine.has_work, timeout=10)
    assert batch.stats.cancelled == 1
    assert batch.stats.generated_tokens < 3000


EXTREME_SAMPLING = [
    ({"top_k": 10**9}, 400),
    ({"logit_bias": {str(10**8): 5}}, 400),
    ({"logit_bias": {"0": 100, "1": -100}}, 200),
    ({"seed": 2**64 - 1, "temperature": 1e30}, 400),  # OpenAI's range is 0 to 2
    ({"seed": 2**64 - 1, "temperature": 2.0}, 200),
    ({"top_p": 1e-9, "min_p": 1.0, "top_k": 1}, 200),
    ({"repetition_penalty": 1e9, "presence_penalty": 2, "frequency_penalty": -2}, 200),
    ({"stop": ["", "a", "the"], "max_tokens": 2**40}, 200),
]


def test_extreme_sampling_values_never_break_the_real_model(real: Any) -> None:
    # One server for every case (each is its own request): a server start loads the model.
    for fields, status in EXTREME_SAMPLING:
        body = {"messages": ask("Hi"), "max_tokens": 8, **fields}
        response = httpx.post(f"{real.url}/v1/chat/completions", json=body, timeout=120)
        assert response.status_code == status, (fields, response.text)
        if status == 400:
            assert response.json()["error"]["param"] in fields, (fields, response.text)
    # ... and the server still answers a plain request after all of them.
    plain = httpx.post(
        f"{real.url}/v1/chat/completions",
        json={"messages": ask("Hi"), "max_tokens": 4},
        timeout=120,
    )
    assert plain.status_code == 200, plain.text


def test_the_trained_model_streams_reasoning_then_answer(real: Any) -> None:
    needs_trained(real)
    with (
        Client(real.url) as client,
        client.stream_chat(ask("What is the moon?"), temperature=0) as stream,
    ):
        kinds = [type(e).__name__ for e in stream if type(e).__name__.endswith("Delta")]
    assert kinds.count("ReasoningDelta") > 3
    assert kinds.count("ContentDelta") > 3
    assert kinds == sorted(kinds, key=lambda k: k == "ContentDelta")


def test_the_trained_model_calls_the_time_tool(real: Any) -> None:
    needs_trained(real)
    client = openai.OpenAI(base_url=f"{real.url}/v1", api_key="x")
    messages: list[Any] = ask("What time is it?")
    first = client.chat.completions.create(
        model="x", messages=messages, tools=[TIME_TOOL], temperature=0, extra_body={"model": None}
    )
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls or []
    assert call.function.name == "get_current_time"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"time": "14:05"}'})
    second = client.chat.completions.create(
        model="x", messages=messages, tools=[TIME_TOOL], temperature=0, extra_body={"model": None}
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
