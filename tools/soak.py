"""Soak test: many clients, mixed traffic, a real server process; does anything leak or stick?

    uv run python tools/soak.py --duration 60 --out soak-out
    uv run python tools/soak.py --duration 1800 --out docs/benchmarks/soak-30min

Starts ``mlx-harmony-server`` (the demo model unless ``--model``) on 127.0.0.1, waits for it, and
runs ``--clients`` threads for ``--duration`` seconds. Each client loops over a random mix of:
plain and streamed chat, streams cut after a few chunks (the client disconnects), long prompts,
bad inputs (malformed JSON, a lone surrogate, wrong types, an unknown model: each must be a
4xx), tool calls answered with a tool result, Responses chains (``previous_response_id``), and
token counts. Every ``--interval`` seconds it samples the server's RSS, open file descriptors,
queue depth and running requests.

At the end it waits for the server to go idle, samples again, and checks:

- no 5xx (a 503 from a full queue counts too: the load is sized to fit it);
- no leak: RSS within ``--rss-slack`` MiB of the baseline (sampled after a warm-up) and open FDs
  within ``--fd-slack`` of it;
- no stuck slot: health reports no running and no waiting request within 30 s;
- no traceback in the server's stderr (kept in ``server.err``).

Writes ``soak.json`` (samples, every request's kind, status and latency, the checks) and
``soak.png`` (RSS, FDs, queue depth, latency over time) into ``--out``; exits 1 when a check
fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_time",
            "description": "The current time",
            "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}},
        },
    }
]
WORDS = [
    "the",
    "moon",
    "orbits",
    "earth",
    "while",
    "tides",
    "follow",
    "its",
    "pull",
    "across",
    "every",
    "ocean",
]


@dataclass
class Request:
    kind: str
    started: float
    seconds: float
    status: int
    error: str = ""


@dataclass
class Sample:
    at: float
    rss_mib: float
    fds: int
    running: int
    waiting: int


@dataclass
class Soak:
    url: str
    pid: int
    started: float = field(default_factory=time.monotonic)
    requests: list[Request] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, started: float, status: int, error: str = "") -> None:
        with self.lock:
            self.requests.append(
                Request(kind, started - self.started, time.monotonic() - started, status, error)
            )


# -- the server process --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, extra: list[str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "mlx_harmony.server",
        "--port",
        str(port),
        "--preload",
        "--max-tokens-cap",
        "48",
        "--log-file",
        str(log),
        *extra,
    ]
    with log.with_name("server.err").open("wb") as stderr:  # a file: a full pipe would block it
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = log.with_name("server.err").read_text(errors="replace")
            raise RuntimeError(f"the server exited ({process.returncode}): {stderr[-2000:]}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=2).json().get("model_loaded"):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server did not load its model in {timeout} s")


def rss_and_fds(pid: int) -> tuple[float, int]:
    """Resident memory (MiB) and open file descriptors of `pid`."""
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
                break
        else:
            rss = 0.0
        return rss, len(os.listdir(proc / "fd"))
    import psutil  # macOS

    process = psutil.Process(pid)
    return process.memory_info().rss / 2**20, process.num_fds()


def sample(soak: Soak) -> Sample:
    rss, fds = rss_and_fds(soak.pid)
    try:
        health = httpx.get(f"{soak.url}/v1/health", timeout=10).json()
    except httpx.HTTPError:
        health = {}
    return Sample(
        time.monotonic() - soak.started,
        rss,
        fds,
        int(health.get("running_requests", -1)),
        int(health.get("waiting_requests", -1)),
    )


# -- the clients ---------------------------------------------------------------------------------


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _chat(client: httpx.Client, soak: Soak, rng: random.Random) -> None:
    started = time.monotonic()
    body = {"messages": [{"role": "user", "content": f"What is the moon? {_text(rng, 5)}"}]}
    response = client.post("/v1/chat/completions", json=body)
    soak.record("chat", started, response.status_code)


def _stream(client: httpx.Client, soak: Soak, rng: random.Random, *, cut: bool) -> None:
    started = time.monotonic()
    body = {"stream": True, "messages": [{"role": "user", "content": _text(rng, 8)}]}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        status = response.status_code
        for n, line in enumerate(response.iter_lines()):
            if cut and n >= 3:
                break  # leaves: the server must free the slot
            if line == "data: [DONE]":
                break
    soak.record("stream_cut" if cut else "stream", started, status)


def _long(client: httpx.Client, soak: Soak, rng: random.Random) -> None:
    started = time.monotonic()
    body = {"messages": [{"role": "user", "content": _text(rng, rng.randint(800, 2500))}]}
    response = client.post("/v1/chat/completions", json=body)
    soak.record("long_prompt", started, response.status_code)


_BAD: list[tuple[str, bytes]] = [
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
    ("/v1/chat/completions", b'{"messages": "not a list"}'),
    ("/v1/chat/completions", b'{"model": "no-such-model", "messages": []}'),
    ("/v1/responses", b'{"input": "\\udfff"}'),
    ("/v1/tokenize", b'{"messages": [{"role": "wizard", "content": "x"}]}'),
]


def _bad(client: httpx.Client, soak: Soak, rng: random.Random) -> None:
    path, body = rng.choice(_BAD)
    started = time.monotonic()
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    ok = 400 <= response.status_code < 500
    soak.record("bad_input", started, response.status_code, "" if ok else "expected a 4xx")


def _tool_call(client: httpx.Client, soak: Soak, rng: random.Random) -> None:
    started = time.monotonic()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What time is it?"}]
    first = client.post("/v1/chat/completions", json={"messages": messages, "tools": TOOLS})
    status = first.status_code
    calls = first.json()["choices"][0]["message"].get("tool_calls") if status == 200 else None
    if calls:
        messages.append(first.json()["choices"][0]["message"])
        messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": "14:05"})
        status = client.post(
            "/v1/chat/completions", json={"messages": messages, "tools": TOOLS}
        ).status_code
    soak.record("tool_call", started, status)


def _responses_chain(client: httpx.Client, soak: Soak, rng: random.Random) -> None:
    started = time.monotonic()
    first = client.post("/v1/responses", json={"input": f"Hello {_text(rng, 3)}"})
    status = first.status_code
    previous = first.json().get("id") if status == 200 else None
    for _ in range(rng.randint(1, 3)):
        if previous is None:
            break
        follow = client.post(
            "/v1/responses", json={"input": "And again?", "previous_response_id": previous}
        )
        status = follow.status_code
        previous = follow.json().get("id") if status == 200 else None
    soak.record("responses_chain", started, status)


def _tokenize(client: httpx.Client, soak: Soak, rng: random.Random) -> None:
    started = time.monotonic()
    body = {"messages": [{"role": "user", "content": _text(rng, 20)}]}
    soak.record("tokenize", started, client.post("/v1/tokenize", json=body).status_code)


ACTIONS = [
    (_chat, 3),
    (lambda c, s, r: _stream(c, s, r, cut=False), 3),
    (lambda c, s, r: _stream(c, s, r, cut=True), 2),
    (_long, 1),
    (_bad, 2),
    (_tool_call, 2),
    (_responses_chain, 2),
    (_tokenize, 1),
]


def client_loop(soak: Soak, seed: int, stop: threading.Event) -> None:
    rng = random.Random(seed)
    actions = [action for action, weight in ACTIONS for _ in range(weight)]
    with httpx.Client(base_url=soak.url, timeout=120) as client:
        while not stop.is_set():
            action = rng.choice(actions)
            started = time.monotonic()
            try:
                action(client, soak, rng)
            except (httpx.HTTPError, ValueError, KeyError) as error:
                soak.record(getattr(action, "__name__", "action"), started, -1, repr(error))


# -- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    port = args.port or _free_port()
    url = f"http://127.0.0.1:{port}"
    args.out.mkdir(parents=True, exist_ok=True)
    process = start_server(port, args.server_arg or [], args.out / "requests.log")
    try:
        wait_ready(url, process, args.out / "requests.log")
        soak = Soak(url, process.pid)
        sampling = threading.Event()

        def sampler() -> None:
            while not sampling.wait(args.interval):
                soak.samples.append(sample(soak))

        sampler_thread = threading.Thread(target=sampler, daemon=True)
        sampler_thread.start()
        _traffic(soak, args.clients, min(args.warmup, args.duration / 2), seed=10_000)
        _wait_idle(soak, timeout=60)
        baseline = sample(soak)  # warm: caches built, kernels compiled, pools grown
        _traffic(soak, args.clients, args.duration, seed=0)
        idle = _wait_idle(soak)
        time.sleep(2)
        final = sample(soak)
        sampling.set()
        sampler_thread.join(10)
        return _report(args, soak, baseline, final, idle)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _traffic(soak: Soak, clients: int, seconds: float, *, seed: int) -> None:
    """`clients` threads of mixed traffic for `seconds`; returns when all have stopped."""
    stop = threading.Event()
    threads = [
        threading.Thread(target=client_loop, args=(soak, seed + n, stop), daemon=True)
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(180)


def _wait_idle(soak: Soak, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = sample(soak)
        if now.running == 0 and now.waiting == 0:
            return True
        time.sleep(0.2)
    return False


def _report(
    args: argparse.Namespace, soak: Soak, baseline: Sample, final: Sample, idle: bool
) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for request in soak.requests:
        statuses[str(request.status)] = statuses.get(str(request.status), 0) + 1
    server_errors = [r for r in soak.requests if r.status >= 500]
    failures = [r for r in soak.requests if r.status < 0 or r.error]
    by_kind: dict[str, dict[str, float]] = {}
    for kind in sorted({r.kind for r in soak.requests}):
        seconds = sorted(r.seconds for r in soak.requests if r.kind == kind)
        by_kind[kind] = {
            "count": len(seconds),
            "median_s": statistics.median(seconds),
            "p95_s": seconds[int(0.95 * (len(seconds) - 1))],
            "max_s": seconds[-1],
        }
    checks = {
        "no_5xx": not server_errors,
        "no_client_failures": not failures,
        "rss_back_near_baseline": final.rss_mib <= baseline.rss_mib + args.rss_slack,
        "fds_back_near_baseline": final.fds <= baseline.fds + args.fd_slack,
        "no_stuck_slot": idle and final.running == 0 and final.waiting == 0,
        "no_server_tracebacks": "Traceback" not in _server_errors(args.out),
    }
    result = {
        "duration_s": args.duration,
        "clients": args.clients,
        "requests": len(soak.requests),
        "statuses": statuses,
        "latency_by_kind": by_kind,
        "baseline": asdict(baseline),
        "final": asdict(final),
        "peak_rss_mib": max((s.rss_mib for s in soak.samples), default=0.0),
        "peak_fds": max((s.fds for s in soak.samples), default=0),
        "checks": checks,
        "ok": all(checks.values()),
        "failures": [asdict(r) for r in (server_errors + failures)[:50]],
        "samples": [asdict(s) for s in soak.samples],
        "request_log": [asdict(r) for r in soak.requests],
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    _plot(args.out / "soak.png", soak, baseline)
    return result


def _server_errors(out: Path) -> str:
    path = out / "server.err"
    return path.read_text(errors="replace") if path.exists() else ""


def _plot(path: Path, soak: Soak, baseline: Sample) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at = [s.at for s in soak.samples]
    figure, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    axes[0].plot(at, [s.rss_mib for s in soak.samples])
    axes[0].axhline(baseline.rss_mib, linestyle="--", color="grey", label="baseline")
    axes[0].set_ylabel("RSS (MiB)")
    axes[0].legend()
    axes[1].plot(at, [s.fds for s in soak.samples])
    axes[1].axhline(baseline.fds, linestyle="--", color="grey")
    axes[1].set_ylabel("open FDs")
    axes[2].plot(at, [s.running for s in soak.samples], label="running")
    axes[2].plot(at, [s.waiting for s in soak.samples], label="waiting")
    axes[2].set_ylabel("requests")
    axes[2].legend()
    for kind in sorted({r.kind for r in soak.requests}):
        points = [(r.started, r.seconds) for r in soak.requests if r.kind == kind]
        axes[3].scatter([p[0] for p in points], [p[1] for p in points], s=4, label=kind)
    axes[3].set_ylabel("latency (s)")
    axes[3].set_yscale("log")
    axes[3].set_xlabel("seconds")
    axes[3].legend(fontsize=7, ncol=4)
    figure.suptitle(f"soak: {len(soak.requests)} requests")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (60)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=15.0, help="seconds before the baseline")
    parser.add_argument("--rss-slack", type=float, default=150.0, help="MiB over the baseline")
    parser.add_argument("--fd-slack", type=int, default=8, help="FDs over the baseline (8)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--out", type=Path, default=Path("soak-out"), help="output folder")
    parser.add_argument(
        "--server-arg",
        action="append",
        help="an extra argument for mlx-harmony-server (repeat), e.g. --server-arg=--model=PATH",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args)
    print(
        f"{result['requests']} requests in {args.duration:.0f} s, statuses {result['statuses']}; "
        f"RSS {result['baseline']['rss_mib']:.0f} -> {result['final']['rss_mib']:.0f} MiB "
        f"(peak {result['peak_rss_mib']:.0f}), FDs {result['baseline']['fds']} -> "
        f"{result['final']['fds']} (peak {result['peak_fds']})"
    )
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
