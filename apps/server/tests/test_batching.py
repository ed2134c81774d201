"""Concurrent serving: the fair bounded queue, turns running together, and the real batching
generator under many clients that come and go."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony.server.admission import FairQueue, QueueFullError, client_key, current_client
from mlx_harmony.server.worker import ModelWorker

USER = [{"role": "user", "content": "Hi"}]


# -- the fair queue ----------------------------------------------------------------------------


def test_the_queue_serves_clients_round_robin_and_fifo_within_one() -> None:
    queue: FairQueue[str] = FairQueue(10)
    for item in ("a1", "a2", "a3"):
        queue.put(item, "a")
    queue.put("b1", "b")
    queue.put("c1", "c")
    queue.put("b2", "b")
    order = [queue.get(timeout=0) for _ in range(6)]
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert queue.get(timeout=0) is None
    assert len(queue) == 0


def test_the_queue_is_bounded_but_server_work_may_pass() -> None:
    queue: FairQueue[int] = FairQueue(2)
    queue.put(1, "a")
    queue.put(2, "b")
    with pytest.raises(QueueFullError, match="limit is 2"):
        queue.put(3, "c")
    queue.put(4, "c", force=True)
    assert len(queue) == 3
    assert sorted(queue.drain()) == [1, 2, 4]
    with pytest.raises(ValueError, match="max_len"):
        FairQueue(0)


def test_close_wakes_a_waiting_get() -> None:
    queue: FairQueue[int] = FairQueue(1)
    got: list[int | None] = []
    thread = threading.Thread(target=lambda: got.append(queue.get()))
    thread.start()
    time.sleep(0.05)
    queue.close()
    thread.join(5)
    assert got == [None]


def test_client_lines_come_from_the_key_else_the_address() -> None:
    assert client_key("Bearer a", "10.0.0.1") == client_key("Bearer a", "10.0.0.2")
    assert client_key("Bearer a", "10.0.0.1") != client_key("Bearer b", "10.0.0.1")
    assert client_key(None, "10.0.0.1") == "host:10.0.0.1"
    assert "Bearer" not in client_key("Bearer secret", None)  # never the key itself


# -- turns together, with a scripted model that takes several streams ----------------------------


@pytest.fixture
def concurrent_echo(echo: Any) -> Any:
    class ConcurrentEcho(echo):  # type: ignore[misc, valid-type]
        """The echo model, declaring it takes four streams at once (as `BatchTokenGenerator`)."""

        max_batch_size = 4

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._lock = threading.Lock()

        def stream(self, *, prompt_tokens: Any, **kwargs: Any) -> Any:
            with self._lock:
                return super().stream(prompt_tokens=prompt_tokens, **kwargs)

    return ConcurrentEcho


def test_turns_run_together_up_to_max_concurrency(
    start_server: Any, concurrent_echo: Any, wait_for: Any
) -> None:
    generator = concurrent_echo(hold_after=8)
    # one client sends all seven: its line may fill the whole queue here
    server = start_server(generator, max_concurrency=3, max_queue=8, max_queue_per_client=8)
    results: list[int] = []

    def ask() -> None:
        response = httpx.post(
            f"{server.url}/v1/chat/completions", json={"messages": USER}, timeout=60
        )
        results.append(response.status_code)

    threads = [threading.Thread(target=ask) for _ in range(7)]
    for thread in threads:
        thread.start()
    worker = server.worker
    assert wait_for(lambda: (worker.running, worker.waiting) == (3, 4))
    generator.release()
    for thread in threads:
        thread.join(60)
    assert results == [200] * 7
    assert worker.stats.max_running == 3  # never more than --max-concurrency
    assert worker.stats.turns == 7
    assert len({n for n in generator.threads if n.startswith("turn")}) == 3
    assert wait_for(lambda: worker.queued == 0)


def test_a_full_queue_behind_busy_slots_is_a_503(
    start_server: Any, concurrent_echo: Any, wait_for: Any
) -> None:
    generator = concurrent_echo(hold_after=8)
    server = start_server(generator, max_concurrency=2, max_queue=1, preload=True)
    statuses: list[int] = []

    def ask() -> None:
        statuses.append(
            httpx.post(
                f"{server.url}/v1/chat/completions", json={"messages": USER}, timeout=60
            ).status_code
        )

    threads = [threading.Thread(target=ask) for _ in range(3)]
    worker = server.worker
    for n, thread in enumerate(threads, 1):  # one by one: each finds its place
        thread.start()
        expected = (min(n, 2), max(0, n - 2))
        assert wait_for(lambda e=expected: (worker.running, worker.waiting) == e)
    response = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": USER})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "--max-concurrency 2" in response.json()["error"]["message"]
    generator.release()
    for thread in threads:
        thread.join(60)
    assert statuses == [200, 200, 200]
    health = httpx.get(f"{server.url}/v1/health").json()
    assert health["max_concurrency"] == 2
    assert health["running_requests"] == 0


def test_the_worker_dispatches_clients_fairly(echo: Any) -> None:
    """Client a queues three turns before client b queues one: b's runs second, not fourth."""
    started: list[str] = []
    gate = threading.Event()

    class Job:
        def __init__(self, name: str) -> None:
            self.name = name
            self.entry = type("Entry", (), {"model": "m", "id": "m"})()
            self.cancel = threading.Event()

        def run(self, state: Any, worker: Any) -> None:
            started.append(self.name)
            gate.wait(10)

        def fail(self, error: BaseException) -> None:
            started.append(f"failed {self.name}: {error}")

    worker = ModelWorker(lambda entry: echo(), max_queue=10)
    worker.start()
    try:
        for name, client in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")):
            token = current_client.set(client)
            worker.submit(Job(name))  # type: ignore[arg-type]
            current_client.reset(token)
        gate.set()
        deadline = time.monotonic() + 10
        while len(started) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    # a1 may be taken before the others arrive; either way b1 overtakes a3
    assert started in (["a1", "b1", "a2", "a3"], ["a1", "a2", "b1", "a3"])


# -- the real batching generator ----------------------------------------------------------------


@pytest.fixture
def batched(start_server: Any, demo_model: Path, tmp_path: Path) -> Any:
    config = tmp_path / "prompt-config.json"
    config.write_text(json.dumps({"loop_detection": "off"}))
    return start_server(
        real=True,
        model=str(demo_model),
        prompt_config=str(config),
        preload=True,
        max_concurrency=8,
        max_queue=32,
    )


@pytest.mark.slow
def test_sixteen_streaming_clients_with_random_disconnects(batched: Any, wait_for: Any) -> None:
    rng = random.Random(0)
    leave_after = [rng.choice([None, 1, 3, 8]) for _ in range(16)]
    outcomes: list[str | None] = [None] * 16
    errors: list[BaseException] = []
    questions = ["What time is it?", "Tell me about the moon.", "Hello!", "What is 2+2?"]

    def run(i: int) -> None:
        body = {
            "messages": [{"role": "user", "content": questions[i % 4]}],
            "max_tokens": 60,
            "stream": True,
            "temperature": 0,
        }
        try:
            with httpx.stream(
                "POST", f"{batched.url}/v1/chat/completions", json=body, timeout=120
            ) as response:
                assert response.status_code == 200
                chunks = 0
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        outcomes[i] = "done"
                        return
                    chunks += 1
                    if leave_after[i] is not None and chunks >= leave_after[i]:
                        outcomes[i] = "left"
                        return  # closing the response drops the connection
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    assert errors == []
    assert all(o in ("done", "left") for o in outcomes)
    assert outcomes.count("done") >= leave_after.count(None)
    worker = batched.worker
    batch = worker.state.generator
    assert wait_for(lambda: worker.queued == 0 and not batch.engine.has_work, timeout=60)
    assert worker.stats.failed == 0
    assert worker.stats.turns == 16
    assert batch.stats.max_batch > 1  # they really decoded together
    assert worker.stats.max_running <= 8
    # and the server still answers
    client = openai.OpenAI(base_url=f"{batched.url}/v1", api_key="x")
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=USER, max_tokens=40)
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_the_shared_prompt_cache_serves_conversations_that_interleave(batched: Any) -> None:
    client = openai.OpenAI(base_url=f"{batched.url}/v1", api_key="x")
    model = client.models.list().data[0].id

    def turn(messages: list[dict[str, str]]) -> Any:
        return client.chat.completions.create(
            model=model, messages=messages, max_tokens=60, temperature=0
        )

    a = [{"role": "user", "content": "Tell me about the moon."}]
    b = [{"role": "user", "content": "What is 2+2?"}]
    first_a = turn(a)
    turn(b)  # another conversation in between: a one-slot cache would have lost a's prefix
    a += [
        {"role": "assistant", "content": first_a.choices[0].message.content or ""},
        {"role": "user", "content": "And the sun?"},
    ]
    second_a = turn(a)
    cached = second_a.usage.prompt_tokens_details.cached_tokens
    assert cached >= first_a.usage.prompt_tokens - 1
    health = httpx.get(f"{batched.url}/v1/health").json()
    assert health["prompt_cache"]["hits"] >= 1
    assert health["prompt_cache"]["entries"] >= 2
