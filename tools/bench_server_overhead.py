"""The server's own cost per token: a model that costs nothing, streamed through HTTP.

    uv run python tools/bench_server_overhead.py                 # 4000 tokens, 5 rounds
    uv run python tools/bench_server_overhead.py --tokens 8000 --rounds 3

A free generator (`FreeGenerator`: every token and its text decoded up front, handed out as
`StreamEvent`s with no work) stands in for the model, so what is left is the server's work per
token: the turn's Harmony parse, the worker -> request channel, the SSE encoding and the HTTP
write. The reply is reasoning then a final answer of ``--tokens`` tokens in all; the client
streams ``/v1/chat/completions`` and ``/v1/responses`` and reads every event. Printed: the
median microseconds per generated token over the rounds, for each API, and the generator's own
cost (iterating it with nothing else).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import uvicorn

from mlx_harmony.controller.testing import Script
from mlx_harmony.generate import (
    CacheReuseMode,
    GenerationStats,
    StopReason,
    StreamEvent,
)
from mlx_harmony.harmony_format import STOP_TOKENS, get_encoding
from mlx_harmony.server import ServerSettings, create_app
from mlx_harmony.server.models import ModelEntry

WORDS = [
    "bees",
    "build",
    "their",
    "comb",
    "from",
    "wax",
    "they",
    "make",
    "in",
    "glands",
    "under",
    "the",
    "belly",
]


class FreeGenerator:
    """Plays one reply, forever, with each token's text decoded once up front."""

    is_harmony = True

    def __init__(self, tokens: int) -> None:
        half = max(1, tokens // 2)
        words = [WORDS[i % len(WORDS)] for i in range(half)]
        script = Script.harmony(" ".join(words), analysis=" ".join(words))
        encoding = get_encoding()
        self.tokens: tuple[int, ...] = script.tokens
        self.texts: tuple[str, ...] = tuple(
            "" if t in STOP_TOKENS else encoding.decode([t]) for t in self.tokens
        )
        self.context_length: int | None = None
        self.eos_token_ids: frozenset[int] = frozenset()

    @property
    def default_stop_tokens(self) -> frozenset[int]:
        return frozenset(STOP_TOKENS)

    def encode(self, text: str) -> list[int]:
        return list(get_encoding().encode(text, allowed_special="all"))

    def decode(self, tokens: Sequence[int]) -> str:
        return get_encoding().decode(list(tokens))

    def reset_cache(self) -> None:
        return None

    def stream(self, *, prompt_tokens: Sequence[int], **_: Any) -> Iterator[StreamEvent]:
        tokens, texts = self.tokens, self.texts
        last = len(tokens) - 1
        for i in range(last):
            yield StreamEvent(tokens[i], texts[i])
        n = len(tokens)
        stats = GenerationStats(
            prompt_tokens=len(prompt_tokens),
            reused_prompt_tokens=0,
            prefilled_tokens=len(prompt_tokens),
            prefill_s=0.0,
            time_to_first_token_s=0.0,
            completion_tokens=n,
            decode_s=0.0,
            decode_tokens_per_s=0.0,
            peak_memory_gb=0.0,
            kv_length=len(prompt_tokens) + n,
            stop_reason=StopReason.STOP,
            loop_detection="off",
            cache_reuse=CacheReuseMode.FRESH,
            stop_token=tokens[last],
        )
        yield StreamEvent(tokens[last], texts[last], None, StopReason.STOP, stats)


def _serve(generator: FreeGenerator) -> tuple[uvicorn.Server, threading.Thread, str]:
    def load(entry: ModelEntry) -> FreeGenerator:
        return generator

    app = create_app(ServerSettings(max_concurrency=1, preload=True), loader=load)  # type: ignore[arg-type]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def _stream(client: httpx.Client, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for _ in response.iter_bytes():
            pass
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4000, help="tokens per reply (about)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    generator = FreeGenerator(args.tokens)
    n = len(generator.tokens)
    own: list[float] = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        for _event in generator.stream(prompt_tokens=[1]):
            pass
        own.append(time.perf_counter() - started)
    server, thread, base = _serve(generator)
    chat = {
        "model": "default",
        "stream": True,
        "messages": [{"role": "user", "content": "How do bees build their comb?"}],
    }
    responses = {"model": "default", "stream": True, "input": "How do bees build their comb?"}
    times: dict[str, list[float]] = {"chat": [], "responses": []}
    try:
        with httpx.Client(timeout=300) as client:
            _stream(client, f"{base}/v1/chat/completions", chat)  # warm up
            for _ in range(args.rounds):
                times["chat"].append(_stream(client, f"{base}/v1/chat/completions", chat))
                times["responses"].append(_stream(client, f"{base}/v1/responses", responses))
    finally:
        server.should_exit = True
        thread.join(30)
    print(f"{n} tokens per reply, median of {args.rounds} rounds")
    print(f"generator alone      {statistics.median(own) / n * 1e6:8.1f} us/token")
    for name, values in times.items():
        print(f"{name:<20} {statistics.median(values) / n * 1e6:8.1f} us/token")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
