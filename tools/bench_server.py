"""Chat through our server against the same chat in-process, and mlx-lm's server, side by side.

    uv run python tools/bench_server.py                 # the demo model
    uv run python tools/bench_server.py --model PATH --max-tokens 256 --rounds 5

Three ways to run the same chat turns on the same model folder, greedy, ``max_tokens`` each:

- ``in-process``: the controller's `LocalBackend` over mlx-generate's `TokenGenerator` (the
  code the server runs, minus HTTP); with N clients, N turns asked at once run one after
  another (their TTFT includes the wait).
- ``mlx-harmony-server``: ``python -m mlx_harmony.server`` as a subprocess, streamed through
  HTTP (SSE) by 1 or N concurrent clients.
- ``mlx_lm.server``: mlx-lm's server as a subprocess on the same folder, the same way.

Both servers run for the whole benchmark (always stopped at the end) and the rounds alternate
between the three, so load changes on the machine hit them alike. Each request asks a
different question (no prompt is served whole from a cache). Figures, medians over rounds:

- TTFT: request sent -> first reasoning or answer text, seen by the client;
- stream tok/s: completion tokens after the first / (last text - first text), per stream;
- total tok/s: all completion tokens / wall time from the first request to the last answer.

The ratio ``mlx-harmony-server / in-process`` of total tok/s with one client is the server's
overhead (target >= 0.95). Loop detection is off for ours (mlx-lm has none), and the Harmony
end tokens are banned with ``logit_bias`` (all three honour it) so every request generates
``max_tokens`` (``--natural-stops`` lets the model stop).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

QUESTION = "Request {i}: explain in detail how bees build their honeycomb, step by step."
NEVER_END = {"200002": -100.0, "200007": -100.0, "200012": -100.0}
"""<|return|>, <|end|>, <|call|> banned: every request generates exactly max_tokens."""


@dataclass
class Sample:
    """One request: seconds since the batch started, and tokens."""

    sent: float
    first: float | None
    last: float | None
    done: float
    tokens: int
    text_events: int


@dataclass
class Row:
    system: str
    clients: int
    ttft: float
    stream_tps: float
    total_tps: float
    tokens: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _stream_request(url: str, body: dict[str, Any], t0: float) -> Sample:
    sent = time.perf_counter() - t0
    first = last = None
    tokens = text_events = 0
    with httpx.stream("POST", url, json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                text = (
                    delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content")
                )
                if text:
                    now = time.perf_counter() - t0
                    first = now if first is None else first
                    last = now
                    text_events += 1
    done = time.perf_counter() - t0
    return Sample(sent, first, last, done, tokens or text_events, text_events)


def _http_batch(
    url: str, clients: int, offset: int, max_tokens: int, extra: dict[str, Any]
) -> list[Sample]:
    t0 = time.perf_counter()
    samples: list[Sample | None] = [None] * clients

    def run(k: int) -> None:
        body = {
            "model": "default_model",
            "messages": [{"role": "user", "content": QUESTION.format(i=offset + k)}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            **extra,
        }
        samples[k] = _stream_request(url, body, t0)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [s for s in samples if s is not None]


def _in_process_batch(backend: Any, config: Any, clients: int, offset: int) -> list[Sample]:
    from mlx_harmony.controller import (
        AnswerDelta,
        ChatRequest,
        ThinkingDelta,
        Turn,
        TurnDone,
    )
    from mlx_harmony.harmony_format import Message

    t0 = time.perf_counter()
    samples = []
    for k in range(clients):
        sent = 0.0  # all N "clients" ask at once; one model answers them in turn
        first = last = None
        events = tokens = 0
        request = ChatRequest(Turn(Message.user(QUESTION.format(i=offset + k))), config=config)
        for event in backend.stream_turn(request):
            if isinstance(event, ThinkingDelta | AnswerDelta) and event.text:
                now = time.perf_counter() - t0
                first = now if first is None else first
                last = now
                events += 1
            elif isinstance(event, TurnDone):
                tokens = event.result.completion_tokens
        samples.append(Sample(sent, first, last, time.perf_counter() - t0, tokens, events))
    return samples


def _summarize(samples: list[Sample]) -> tuple[float, float, float, int]:
    ttfts = [s.first - s.sent for s in samples if s.first is not None]
    rates = [
        (s.tokens - 1) / (s.last - s.first)
        for s in samples
        if s.first is not None and s.last is not None and s.last > s.first and s.text_events > 1
    ]
    tokens = sum(s.tokens for s in samples)
    wall = max(s.done for s in samples) - min(s.sent for s in samples)
    ttft = statistics.median(ttfts) if ttfts else math.nan
    rate = statistics.median(rates) if rates else math.nan
    return ttft, rate, tokens / wall if wall > 0 else math.nan, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the demo model)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,4", help="concurrent clients, e.g. 1,4")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-mlx-lm", action="store_true", help="leave mlx_lm.server out")
    parser.add_argument(
        "--natural-stops",
        action="store_true",
        help="let the model stop on its own (default: ban the end tokens, so every request "
        "generates max_tokens)",
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]

    from mlx_harmony.controller import LocalBackend, PromptConfig
    from mlx_harmony.generate import TokenGenerator
    from mlx_harmony.server.models import demo_model_folder
    from mlx_harmony.server.service import STRICT_RETRY_POLICY

    model = Path(args.model) if args.model else demo_model_folder()
    print(f"model: {model}  max_tokens {args.max_tokens}  rounds {args.rounds}", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="bench-server-"))
    config_file = workdir / "prompt-config.json"
    config_file.write_text(json.dumps({"loop_detection": "off", "temperature": 0.0}))
    extra = {} if args.natural_stops else {"logit_bias": NEVER_END}
    config = PromptConfig.from_file(config_file).updated(max_tokens=args.max_tokens, **extra)
    # The policy the server uses for a request with max_tokens: no retries.
    backend = LocalBackend(TokenGenerator(model, loop_detection="off"), policy=STRICT_RETRY_POLICY)

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    processes: list[subprocess.Popen[bytes]] = []
    runners: dict[str, Callable[[int, int], list[Sample]]] = {
        "in-process": lambda clients, offset: _in_process_batch(backend, config, clients, offset)
    }
    try:
        ours_port = _free_port()
        ours = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlx_harmony.server",
                "--model",
                str(model),
                "--port",
                str(ours_port),
                "--preload",
                "--prompt-config",
                str(config_file),
                "--log-file",
                str(workdir / "requests.log"),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(workdir / "ours.err", "wb"),  # noqa: SIM115
        )
        processes.append(ours)
        _wait_ready(f"http://127.0.0.1:{ours_port}/v1/health", ours, 300)
        ours_url = f"http://127.0.0.1:{ours_port}/v1/chat/completions"
        runners["mlx-harmony-server"] = lambda c, o: _http_batch(
            ours_url, c, o, args.max_tokens, extra
        )
        if not args.skip_mlx_lm:
            lm_port = _free_port()
            lm = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlx_lm.server",
                    "--model",
                    str(model),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(lm_port),
                    "--temp",
                    "0.0",
                    "--max-tokens",
                    str(args.max_tokens),
                    "--log-level",
                    "WARNING",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(workdir / "mlx_lm.err", "wb"),  # noqa: SIM115
            )
            processes.append(lm)
            _wait_ready(f"http://127.0.0.1:{lm_port}/v1/models", lm, 300)
            lm_url = f"http://127.0.0.1:{lm_port}/v1/chat/completions"
            runners["mlx_lm.server"] = lambda c, o: _http_batch(
                lm_url, c, o, args.max_tokens, extra
            )

        for run in runners.values():  # warm up: first-call compilation, caches
            run(1, 10_000)
        results: dict[tuple[str, int], list[tuple[float, float, float, int]]] = {}
        offset = 0
        for r in range(args.rounds):
            names = list(runners)
            names = names[r % len(names) :] + names[: r % len(names)]
            for clients in counts:
                for name in names:
                    offset += clients
                    summary = _summarize(runners[name](clients, offset))
                    results.setdefault((name, clients), []).append(summary)
                    print(f"  round {r + 1} {name} x{clients}: {summary}", file=sys.stderr)
    finally:
        for process in processes:
            _stop(process)

    rows = []
    for (name, clients), summaries in results.items():
        ttft, rate, total, tokens = (statistics.median(col) for col in zip(*summaries, strict=True))
        rows.append(Row(name, clients, ttft, rate, total, int(tokens)))
    base = {r.clients: r.total_tps for r in rows if r.system == "in-process"}
    print(f"\nmodel {model.name}, {args.max_tokens} max tokens, greedy, median of {args.rounds}")
    header = (
        f"{'system':<20} {'clients':>7} {'TTFT s':>8} {'stream tok/s':>13} {'total tok/s':>12}"
        f" {'vs in-process':>14} {'tokens':>7}"
    )
    print(header)
    print("-" * len(header))
    for row in sorted(rows, key=lambda r: (r.clients, list(runners).index(r.system))):
        ratio = row.total_tps / base[row.clients] if row.clients in base else math.nan
        print(
            f"{row.system:<20} {row.clients:>7} {row.ttft:>8.3f} {row.stream_tps:>13.1f} "
            f"{row.total_tps:>12.1f} {ratio:>14.3f} {row.tokens:>7}"
        )
    ours_1 = next((r for r in rows if r.system == "mlx-harmony-server" and r.clients == 1), None)
    if ours_1 is not None and 1 in base:
        ratio = ours_1.total_tps / base[1]
        verdict = "meets" if ratio >= 0.95 else "MISSES"
        print(f"\nmlx-harmony-server / in-process, 1 client: {ratio:.3f} ({verdict} >= 0.95)")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
