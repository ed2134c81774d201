"""Server subprocesses on 127.0.0.1 that are always stopped.

`ServerProcess` is a context manager: entering starts the command in its own process group,
its output going to a log file, and waits until a health URL answers 200; leaving (normally,
on an error or on Ctrl-C) stops the whole group: SIGINT (a clean shutdown, which also lets a
profiler write its file), then SIGTERM, then SIGKILL. A server that exits or never answers
while starting raises `ServerStartError` with the end of its log, and is stopped first.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "mlx_lm_server_command",
    "our_server_command",
    "our_server_flags",
    "port_is_free",
    "process_peak_rss_gb",
]

_LIVE: weakref.WeakSet[ServerProcess] = weakref.WeakSet()


class ServerStartError(RuntimeError):
    """A server exited or did not answer while starting; the message ends with its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:`port` (a bind succeeds)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def process_peak_rss_gb(pid: int) -> float | None:
    """A process's peak resident memory (Linux ``VmHWM``), else its current RSS (psutil),
    in GB; None when neither can be read."""
    status = Path(f"/proc/{pid}/status")
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    try:
        import psutil

        return float(psutil.Process(pid).memory_info().rss) / 1e9
    except Exception:
        return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class ServerProcess:
    """One server process for the length of a ``with`` block.

    ``command`` must make the server listen on ``port``; ``ready_path`` is fetched from
    ``http://127.0.0.1:port`` until it answers 200 and ``ready_check`` (given the response)
    agrees. The process runs in its own session, so Ctrl-C in the terminal reaches only the
    harness, which then stops it.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        port: int,
        name: str,
        ready_path: str = "/health",
        ready_check: Callable[[httpx.Response], bool] | None = None,
        log_path: str | os.PathLike[str],
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 600.0,
        stop_timeout: float = 15.0,
    ) -> None:
        if startup_timeout <= 0:
            raise ValueError(f"startup_timeout must be > 0 seconds, got {startup_timeout}")
        self.command = list(command)
        self.port = port
        self.name = name
        self.ready_path = ready_path
        self.ready_check = ready_check
        self.log_path = Path(log_path)
        self.env = dict(env) if env is not None else {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.started_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start and wait until ready; on failure the process is stopped, then
        `ServerStartError` is raised."""
        if self.process is not None:
            raise RuntimeError(f"{self.name} was already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        try:
            with open(self.log_path, "ab") as log:
                log.write(f"$ {' '.join(self.command)}\n".encode())
                log.flush()
                self.process = subprocess.Popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                )
            _LIVE.add(self)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.started_s = time.perf_counter() - t0

    def _wait_ready(self) -> None:
        assert self.process is not None
        url = self.base_url + self.ready_path
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=5.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise ServerStartError(
                        f"{self.name} exited with status {code} before it was ready; its log "
                        f"{self.log_path} ends with:\n{_tail(self.log_path)}"
                    )
                try:
                    response = client.get(url)
                    if response.status_code == 200 and (
                        self.ready_check is None or self.ready_check(response)
                    ):
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"{self.name} did not answer {url} within {self.startup_timeout:g} s "
                        f"(raise --startup-timeout for a large model); its log "
                        f"{self.log_path} ends with:\n{_tail(self.log_path)}"
                    )
                time.sleep(0.2)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def peak_rss_gb(self) -> float | None:
        return process_peak_rss_gb(self.process.pid) if self.alive() and self.process else None

    def stop(self) -> int | None:
        """Stop the process group: SIGINT, SIGTERM, then SIGKILL; returns the exit status.
        Safe to call twice, and after the process died by itself."""
        process = self.process
        if process is None:
            return None
        _LIVE.discard(self)
        try:
            for sig, wait in (
                (signal.SIGINT, self.stop_timeout),
                (signal.SIGTERM, min(5.0, self.stop_timeout)),
                (signal.SIGKILL, 10.0),
            ):
                if process.poll() is not None:
                    break
                _signal_group(process.pid, sig)
                try:
                    process.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
        finally:
            # Whatever the leader did, leave no member of its group behind.
            _signal_group(process.pid, signal.SIGKILL)
        return process.returncode


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@atexit.register
def _stop_leftovers() -> None:
    """A last guard: servers still running when the interpreter exits are stopped."""
    for server in list(_LIVE):
        server.stop()


def our_server_flags(help_text: str) -> dict[str, bool]:
    """Which optional flags this build of ``mlx-harmony-server`` has (from its --help)."""
    return {"max_concurrency": "--max-concurrency" in help_text}


def _server_help(python: str) -> str:
    done = subprocess.run(
        [python, "-m", "mlx_harmony.server", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout + done.stderr


def our_server_command(
    model: str,
    *,
    port: int,
    python: str = sys.executable,
    prompt_config: str | None = None,
    profile: str | None = None,
    profiles: str | None = None,
    max_concurrency: int | None = None,
    extra: Sequence[str] = (),
    wrap: Sequence[str] = (),
) -> tuple[list[str], dict[str, Any]]:
    """``python -m mlx_harmony.server`` preloading `model` on 127.0.0.1:`port`, and notes
    (e.g. that ``--max-concurrency`` was asked for but this server has no such flag).

    ``wrap`` goes between the interpreter and ``-m`` (a profiler that runs a module)."""
    which = ["--profile", profile] if profile else ["--model", model]
    if profiles:
        which += ["--profiles", profiles]
    command = [python, *wrap, "-m", "mlx_harmony.server", *which]
    command += ["--host", "127.0.0.1", "--port", str(port), "--preload", "--log-level", "warning"]
    if prompt_config:
        command += ["--prompt-config", prompt_config]
    notes: dict[str, Any] = {}
    if max_concurrency is not None:
        flags = our_server_flags(_server_help(python))
        if flags["max_concurrency"]:
            command += ["--max-concurrency", str(max_concurrency)]
            notes["max_concurrency"] = max_concurrency
        else:
            notes["max_concurrency"] = None
            notes["max_concurrency_note"] = (
                f"asked for --max-concurrency {max_concurrency}, but this mlx-harmony-server "
                "has no such flag: it serves one request at a time"
            )
    return [*command, *extra], notes


def mlx_lm_server_command(
    model: str,
    *,
    port: int,
    python: str = sys.executable,
    max_tokens: int | None = None,
    extra: Sequence[str] = (),
    wrap: Sequence[str] = (),
) -> list[str]:
    """``python -m mlx_lm server`` on `model` at 127.0.0.1:`port`, greedy by default."""
    # ``-m mlx_lm server`` is the current spelling; under a profiler, name the module itself.
    module = ["-m", "mlx_lm.server"] if wrap else ["-m", "mlx_lm", "server"]
    command = [python, *wrap, *module]
    command += ["--model", model, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--temp", "0.0", "--log-level", "WARNING"]
    if max_tokens is not None:
        command += ["--max-tokens", str(max_tokens)]
    return [*command, *extra]
