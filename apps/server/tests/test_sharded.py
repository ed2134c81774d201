"""The server sharded over two ranks on 127.0.0.1 (MLX's ring backend), serving the demo model:
greedy answers equal to the one-process server's, streamed and whole, four at once; a
cancelled stream; a tool round trip; SIGTERM on rank 0 stopping the follower; a killed rank
answered with 503 and rank 0's exit. The ranks are started by hand, as ``mlx.launch --backend
ring`` would, so that the test owns each rank's pid and exit status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from mlx_harmony.generate.distributed import EXIT_RANK_FAILURE
from mlx_harmony.generate.testing import free_ports, start_ranks

pytestmark = pytest.mark.slow

QUESTIONS = (
    "What time is it?",
    "Tell me about the moon.",
    "How do I bake bread?",
    "Why is the sky blue? Answer briefly please.",
)
MAX_TOKENS = 48
TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_current_time",
        "description": "Get the current time.",
        "parameters": {"type": "object", "properties": {}},
    },
}


@pytest.fixture(scope="module")
def prompt_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sharded") / "prompt-config.json"
    path.write_text(json.dumps({"loop_detection": "off"}))
    return path


@dataclass
class Launch:
    """Two ranks of ``mlx-harmony-server``; rank 0 serves `url`."""

    url: str
    ranks: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def log(self, rank: int) -> str:
        return self.logs[rank].read_text(errors="replace")

    def stop(self) -> None:
        for p in self.ranks:
            if p.poll() is None:
                p.kill()
            p.wait(10)


def _launch(folder: Path, model: Path, config: Path, *extra: str) -> Launch:
    http = free_ports(1)[0]
    cmd = [sys.executable, "-m", "mlx_harmony.server", "--model", str(model)]
    cmd += ["--prompt-config", str(config), "--port", str(http), "--log-level", "warning"]
    cmd += ["--log-file", str(folder / "requests.log"), *extra]
    logs = [folder / f"rank{rank}.log" for rank in range(2)]

    def to_log(rank: int) -> dict[str, Any]:
        return {"stdout": logs[rank].open("wb"), "stderr": subprocess.STDOUT}

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLX_HARMONY_API_KEY", raising=False)
        ranks = start_ranks(lambda _: cmd, folder, popen=to_log)
    launch = Launch(f"http://127.0.0.1:{http}", ranks, logs)
    deadline = time.monotonic() + 150
    while True:
        for rank, p in enumerate(ranks):
            if p.poll() is not None:
                launch.stop()
                pytest.fail(f"rank {rank} exited with {p.returncode}:\n{launch.log(rank)}")
        try:
            if httpx.get(f"{launch.url}/health", timeout=2).json()["model_loaded"]:
                return launch
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            launch.stop()
            pytest.fail(f"the sharded server never came up:\n{launch.log(0)}\n{launch.log(1)}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def sharded(
    tmp_path_factory: pytest.TempPathFactory, demo_model: Path, prompt_config: Path
) -> Iterator[Launch]:
    launch = _launch(tmp_path_factory.mktemp("two-ranks"), demo_model, prompt_config)
    yield launch
    launch.stop()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)


def _ask(client: openai.OpenAI, question: str, *, stream: bool) -> str:
    messages: Any = [{"role": "user", "content": question}]
    if not stream:
        reply = client.chat.completions.create(
            model="default", messages=messages, temperature=0, max_tokens=MAX_TOKENS
        )
        return reply.choices[0].message.content or ""
    chunks = client.chat.completions.create(
        model="default", messages=messages, temperature=0, max_tokens=MAX_TOKENS, stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _answers(url: str) -> dict[tuple[str, bool], str]:
    """Every question whole and streamed, four requests at a time (they batch)."""
    client = _client(url)
    jobs = [(q, stream) for stream in (False, True) for q in QUESTIONS]
    with ThreadPoolExecutor(4) as pool:
        texts = pool.map(lambda job: _ask(client, job[0], stream=job[1]), jobs)
        return dict(zip(jobs, texts, strict=True))


def test_greedy_answers_equal_one_process(
    sharded: Launch, start_server: Any, demo_model: Path, prompt_config: Path
) -> None:
    got = _answers(sharded.url)
    alone = start_server(real=True, model=str(demo_model), prompt_config=str(prompt_config))
    want = _answers(alone.url)
    assert all(want.values()), want
    for job in want:
        assert got[job] == want[job], f"{job}: {got[job]!r} != {want[job]!r}"
    health = httpx.get(f"{sharded.url}/health").json()
    assert health["max_concurrency"] == 8


def test_a_cancelled_stream_leaves_the_ranks_in_step(sharded: Launch) -> None:
    client = _client(sharded.url)
    before = _ask(client, QUESTIONS[1], stream=False)
    chunks = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": QUESTIONS[2]}],
        temperature=0,
        max_tokens=500,
        stream=True,
    )
    for i, _ in enumerate(chunks):
        if i == 3:
            break
    chunks.close()  # the client goes away: rank 0 sends the removal to rank 1
    time.sleep(0.5)
    assert _ask(client, QUESTIONS[1], stream=False) == before
    health = httpx.get(f"{sharded.url}/health").json()
    assert health["running_requests"] == 0


def test_a_tool_round_trip(sharded: Launch) -> None:
    client = _client(sharded.url)
    messages: Any = [{"role": "user", "content": "What time is it?"}]
    first = client.chat.completions.create(
        model="default", messages=messages, tools=[TIME_TOOL], temperature=0
    )
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = first.choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_current_time"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"time": "14:05"}'})
    second = client.chat.completions.create(
        model="default", messages=messages, tools=[TIME_TOOL], temperature=0
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content


def test_what_cannot_travel_is_refused(sharded: Launch) -> None:
    client = _client(sharded.url)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Say hi as JSON."}],
            response_format={"type": "json_object"},
            max_tokens=8,
        )
    assert "not available on a sharded model" in str(caught.value)
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.chat.completions.create(
            model="another-model", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )


def test_sigterm_on_rank_zero_stops_every_rank(sharded: Launch) -> None:
    sharded.ranks[0].send_signal(signal.SIGTERM)
    codes = [p.wait(60) for p in sharded.ranks]
    # uvicorn shuts down cleanly, then re-raises the signal it caught (as in one process)
    assert codes == [-signal.SIGTERM, 0], f"{codes}\n{sharded.log(0)}\n{sharded.log(1)}"
    assert "Traceback" not in sharded.log(0) + sharded.log(1), sharded.log(0)


def test_a_killed_rank_gives_503_and_rank_zero_exits(
    tmp_path: Path, demo_model: Path, prompt_config: Path
) -> None:
    launch = _launch(tmp_path, demo_model, prompt_config, "--step-timeout", "8")
    try:
        client = _client(launch.url)
        whole: dict[str, Any] = {}

        def ask_whole() -> None:
            body = {
                "model": "default",
                "messages": [{"role": "user", "content": QUESTIONS[1]}],
                "max_tokens": 2000,
            }
            reply = httpx.post(f"{launch.url}/v1/chat/completions", json=body, timeout=60)
            whole.update(status=reply.status_code, body=reply.json())

        asker = threading.Thread(target=ask_whole)
        asker.start()
        stream = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": QUESTIONS[2]}],
            max_tokens=2000,
            stream=True,
        )
        killed = 0.0
        failure: openai.APIError | None = None
        try:
            for i, _ in enumerate(stream):
                if i == 2:
                    launch.ranks[1].kill()
                    killed = time.monotonic()
        except openai.APIError as error:
            failure = error
        asker.join(60)
        try:
            launch.ranks[0].wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 did not exit; whole: {whole}\n{launch.log(0)}")
        took = time.monotonic() - killed
    finally:
        launch.stop()
    assert killed, "the stream ended before rank 1 was killed"
    assert failure is not None, "the stream ended without the failure"
    assert "sharded model is lost" in str(failure), f"{failure!r} {whole}\n{launch.log(0)}"
    assert whole["status"] == 503, whole
    assert whole["body"]["error"]["code"] == "rank_failed"
    assert launch.ranks[0].returncode == EXIT_RANK_FAILURE, launch.log(0)
    assert took < 8 + 5 + 10, took  # step timeout (a lost peer may hang) + grace + slack
