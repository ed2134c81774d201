"""Under load: concurrent streams stay separate, the queue is FIFO, a client that leaves
cancels its generation (running or queued)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import httpx
import openai

from mlx_harmony.api_client import AsyncClient, Client, ContentDelta
from mlx_harmony.controller.testing import Script


def ask(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question number {n}"}]


def test_eight_concurrent_streams_all_complete_without_mixing(
    start_server: Any, echo: Any, wait_for: Any
) -> None:
    server = start_server(echo())
    results: dict[int, tuple[str, str, str | None]] = {}
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x")
            content = reasoning = ""
            finish = None
            for chunk in client.chat.completions.create(
                model="mlx-harmony-demo", messages=ask(n), stream=True
            ):
                for choice in chunk.choices:
                    content += choice.delta.content or ""
                    reasoning += (choice.delta.model_extra or {}).get("reasoning") or ""
                    finish = choice.finish_reason or finish
            results[n] = (content, reasoning, finish)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == list(range(8))
    for n, (content, reasoning, finish) in results.items():
        assert content == f"You said: question number {n}"
        assert reasoning == f"The user said 'question number {n}'."
        assert finish == "stop"
    # One thread ran every generation, one at a time.
    assert server.generator.threads == {"mlx-harmony-model"}
    assert len(server.generator.records) == 8
    assert server.worker.stats.turns == 8
    assert wait_for(lambda: server.worker.queued == 0)


def test_eight_concurrent_async_streams_with_our_async_client(start_server: Any, echo: Any) -> None:
    server = start_server(echo())

    async def one(client: AsyncClient, n: int) -> tuple[str, int]:
        stream = await client.stream_chat(ask(n))
        async with stream:
            await stream.until_done()
        return stream.content, stream.deltas

    async def main() -> list[tuple[str, int]]:
        async with AsyncClient(server.url) as client:
            return await asyncio.gather(*(one(client, n) for n in range(8)))

    for n, (content, deltas) in enumerate(asyncio.run(main())):
        assert content == f"You said: question number {n}"
        assert deltas > 5


def test_requests_are_served_in_the_order_they_arrive(
    start_server: Any, echo: Any, wait_for: Any
) -> None:
    server = start_server(echo(hold_after=8))
    server.generator.add(Script.harmony("word " * 150, analysis="The first one is long."))
    answers: dict[int, str] = {}

    def run(n: int) -> None:
        with Client(server.url) as client:
            answers[n] = client.chat(ask(n)).content

    threads = []
    for n in range(5):
        thread = threading.Thread(target=run, args=(n,))
        thread.start()
        threads.append(thread)
        # Each request is queued before the next is sent (the first keeps the worker busy).
        assert wait_for(lambda n=n: server.worker.queued == n + 1, timeout=30)
    server.generator.release()
    for t in threads:
        t.join(60)
    order = [r.prompt.rsplit("question number ", 1)[1][0] for r in server.generator.records]
    assert order == ["0", "1", "2", "3", "4"]
    assert answers[0].startswith("word word")
    assert answers == {0: answers[0]} | {n: f"You said: question number {n}" for n in range(1, 5)}


def test_a_client_that_disconnects_mid_stream_cancels_the_generation(
    start_server: Any, echo: Any, wait_for: Any
) -> None:
    server = start_server(echo(hold_after=20))
    server.generator.add(Script.harmony("word " * 300, analysis="Long answer ahead."))
    with Client(server.url) as client:
        stream = client.stream_chat(ask(1))
        seen = 0
        for event in stream:
            seen += isinstance(event, ContentDelta)
            if seen == 3:
                break
        stream.close()
    # The request ends (and is logged as cancelled) while the generation is still held.
    assert wait_for(lambda: any(" cancelled" in line for line in server.log_lines()))
    server.generator.release()
    assert wait_for(lambda: server.worker.stats.cancelled == 1)
    record = server.generator.records[-1]
    assert record.cancelled
    assert record.stop_reason == "cancelled"
    assert record.tokens < 100  # of the ~310 scripted
    assert wait_for(lambda: any(" cancelled" in line for line in server.log_lines()))
    with Client(server.url) as client:  # the worker goes on serving
        assert client.chat(ask(2)).content == "You said: question number 2"


def test_a_queued_request_whose_client_left_is_never_run(
    start_server: Any, echo: Any, wait_for: Any
) -> None:
    server = start_server(echo(hold_after=8))
    server.generator.add(Script.harmony("word " * 100, analysis="busy"))
    with Client(server.url) as client, client.stream_chat(ask(1)) as first:
        next(iter(first))  # the worker is busy with this one
        with httpx.Client(timeout=httpx.Timeout(30, read=1.0)) as raw:
            request = raw.build_request(
                "POST", f"{server.url}/v1/chat/completions", json={"messages": ask(2)}
            )
            waiting = threading.Thread(target=lambda: _send_and_drop(raw, request))
            waiting.start()
            assert wait_for(lambda: server.worker.queued == 2)
            waiting.join(10)
        # the server saw the client leave (its request logged as cancelled) before the worker
        # is free to take the job
        log = server.log_file
        assert wait_for(lambda: log is not None and "cancelled" in log.read_text())
        server.generator.release()
        first.until_done()
    assert wait_for(lambda: server.worker.queued == 0)
    assert server.worker.stats.cancelled == 1
    prompts = [r.prompt for r in server.generator.records]
    assert len(prompts) == 1
    assert "question number 2" not in prompts[0]


def _send_and_drop(client: httpx.Client, request: httpx.Request) -> None:
    # The client gives up while the request is still queued: the socket closes.
    with contextlib.suppress(httpx.ReadTimeout):
        client.send(request)
