"""The gpt-oss `python` tool: run the model's code in a fresh, limited Python subprocess.

Each call starts ``sys.executable -I`` in a scratch folder with an address-space limit
(RLIMIT_AS), a CPU-time limit (RLIMIT_CPU), a file-size limit, a wall-clock timeout that kills
the whole process group, no inherited environment, and an audit hook that refuses network
sockets, DNS look-ups and new processes. Output is captured and cut to a size limit while it is
read, so a print loop cannot fill memory.

The limits are set inside the child by its bootstrap, not by ``preexec_fn``: ``preexec_fn`` is
unsafe when the parent runs threads (the server does).

This guards against accidents (a runaway loop, a download the user did not ask for); audit
hooks are not a security boundary, so run untrusted models in a container.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from openai_harmony import ToolNamespaceConfig

from .base import ToolDeclarations, ToolResult

__all__ = ["PythonRun", "PythonTool"]

# Runs in the child before the model's code. argv: memory bytes, cpu seconds, file bytes,
# allow network (0/1). The last expression's value is printed, as in a notebook cell.
_BOOTSTRAP = r"""
import sys
def _setup():
    import resource
    memory, cpu, fsize, network = (int(a) for a in sys.argv[1:5])
    for limit, value, hard in (
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_FSIZE, fsize, fsize),
    ):
        if value > 0:
            try:
                resource.setrlimit(limit, (value, hard))
            except (ValueError, OSError):
                pass
    if network:
        return
    import socket
    local = {getattr(socket, "AF_UNIX", None)}
    blocked = (
        "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
        "socket.getnameinfo", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
        "os.spawn", "os.fork", "os.forkpty", "pty.spawn",
    )
    def hook(event, args):
        if event == "socket.__new__":
            if args[1] not in local:
                raise PermissionError("network access is disabled in this python tool")
        elif event.startswith(blocked):
            what = "network access" if event.startswith("socket.") else "starting processes"
            raise PermissionError(f"{what} is disabled in this python tool ({event})")
    sys.addaudithook(hook)
_setup()
del _setup
def _run():
    import ast, linecache, os, traceback
    source = sys.stdin.read()
    sys.stdin = open(os.devnull)
    name = "<python>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        tree = ast.parse(source, name, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, name, "exec"), namespace)
        if last is not None:
            value = eval(compile(last, name, "eval"), namespace)
            if value is not None:
                print(repr(value))
    except SystemExit:
        raise
    except BaseException as error:
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != name:
            tb = tb.tb_next
        traceback.print_exception(type(error), error, tb)
        sys.stderr.flush()
        os._exit(1)
_run()
"""

_DESCRIPTION = (
    "Use this tool to execute Python code in your chain of thought. The code will not be shown "
    "to the user. This tool should be used for internal reasoning, but not for code that is "
    "intended to be visible to the user.\n\n"
    "When you send a message containing Python code to python, it runs in a fresh Python "
    "{version} process (nothing carries over between calls, so redefine what you need). Its "
    "stdout and stderr are returned to you; use print() to see values (the value of a final "
    "expression is printed too). The run is stopped after {timeout:g} seconds and may use "
    "{memory} MB of memory. The current folder is a scratch folder that keeps files between "
    "calls. {network}"
)


@dataclass(frozen=True)
class PythonRun:
    """What one run produced; `render()` is the text the model gets back."""

    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool = False
    timeout_s: float = 0.0
    dropped_chars: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def render(self) -> str:
        parts = [self.stdout.rstrip("\n")] if self.stdout.strip() else []
        if self.stderr.strip():
            parts.append(self.stderr.rstrip("\n"))
        if self.dropped_chars:
            parts.append(f"[output cut: about {self.dropped_chars} more characters were dropped]")
        if self.timed_out:
            parts.append(f"[timed out after {self.timeout_s:g} s; the process was killed]")
        elif self.returncode is not None and self.returncode < 0:
            parts.append(f"[killed by {_signal_name(-self.returncode)}]")
        elif self.returncode:
            parts.append(f"[exit code {self.returncode}]")
        if not parts:
            parts.append("[no output; print() what you want to see]")
        return "\n".join(parts)


def _signal_name(number: int) -> str:
    try:
        name = signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
    reasons = {"SIGXCPU": " (CPU time limit)", "SIGXFSZ": " (file size limit)"}
    return name + reasons.get(name, "")


class PythonTool:
    """Runs code for the `python` recipient; one scratch folder for the tool's lifetime.

    `scratch_dir` is created when missing; without it a temporary folder is made and removed by
    `close()`. `memory_limit_mb` bounds the child's address space, so keep room for the
    interpreter and the libraries the code imports (numpy needs a few hundred MB).
    """

    def __init__(
        self,
        *,
        scratch_dir: str | os.PathLike[str] | None = None,
        timeout_s: float = 30.0,
        memory_limit_mb: int = 2048,
        max_file_mb: int = 256,
        max_output_chars: int = 20_000,
        allow_network: bool = False,
        python: str = sys.executable,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s}")
        if memory_limit_mb < 64:
            raise ValueError(
                f"memory_limit_mb must be >= 64 (Python itself needs that), got {memory_limit_mb}"
            )
        if max_output_chars < 100:
            raise ValueError(f"max_output_chars must be >= 100, got {max_output_chars}")
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.max_file_mb = max_file_mb
        self.max_output_chars = max_output_chars
        self.allow_network = allow_network
        self.python = python
        self._owns_scratch = scratch_dir is None
        self._scratch_arg = scratch_dir
        self._scratch: Path | None = None

    @property
    def name(self) -> str:
        return "python"

    @property
    def scratch_dir(self) -> Path:
        """The working folder of every run (created on first use)."""
        if self._scratch is None:
            if self._scratch_arg is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="mlx-harmony-python-"))
            else:
                self._scratch = Path(self._scratch_arg).resolve()
                self._scratch.mkdir(parents=True, exist_ok=True)
        return self._scratch

    def handles(self, recipient: str) -> bool:
        return recipient == "python" or recipient.startswith("python.")

    def declarations(self) -> ToolDeclarations:
        network = (
            "Internet access is available."
            if self.allow_network
            else "There is no internet access and no starting of other processes."
        )
        description = _DESCRIPTION.format(
            version=".".join(map(str, sys.version_info[:2])),
            timeout=self.timeout_s,
            memory=self.memory_limit_mb,
            network=network,
        )
        return ToolDeclarations(
            system=(ToolNamespaceConfig(name="python", description=description, tools=[]),)
        )

    def execute(self, recipient: str, arguments: str) -> ToolResult:
        run = self.run(_code_from_arguments(arguments))
        return ToolResult(name=recipient, content=run.render(), error=not run.ok)

    def run(self, code: str) -> PythonRun:
        """Run `code` in a new limited interpreter and collect what it printed."""
        scratch = self.scratch_dir
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "LANG": "C.UTF-8",
            "MPLBACKEND": "Agg",
            # Fewer BLAS threads keep the address space (RLIMIT_AS) small.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        argv = [
            self.python,
            "-I",
            "-X",
            "utf8",
            "-c",
            _BOOTSTRAP,
            str(self.memory_limit_mb * 2**20),
            str(int(self.timeout_s) + 1),
            str(self.max_file_mb * 2**20),
            "1" if self.allow_network else "0",
        ]
        limit = self.max_output_chars
        process = subprocess.Popen(
            argv,
            cwd=scratch,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        out = _CappedReader(process.stdout, limit)  # type: ignore[arg-type]
        err = _CappedReader(process.stderr, limit)  # type: ignore[arg-type]
        deadline = time.monotonic() + self.timeout_s
        timed_out = False
        try:
            assert process.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                process.stdin.write(code.encode("utf-8"))
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except BaseException as error:
            timed_out = isinstance(error, subprocess.TimeoutExpired)
            # The child is not reaped yet, so its process group id cannot have been reused.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            if not timed_out:
                raise
        stdout, dropped_out = out.result()
        stderr, dropped_err = err.result()
        dropped = dropped_out + dropped_err
        # Both streams together stay under the limit: stdout first, then stderr.
        if len(stdout) + len(stderr) > limit:
            keep = max(limit - len(stdout), limit // 4)
            dropped += len(stderr) - keep
            stderr = stderr[:keep]
            if len(stdout) + len(stderr) > limit:
                dropped += len(stdout) - (limit - len(stderr))
                stdout = stdout[: limit - len(stderr)]
        return PythonRun(
            stdout=stdout,
            stderr=stderr,
            returncode=None if timed_out else process.returncode,
            timed_out=timed_out,
            timeout_s=self.timeout_s,
            dropped_chars=dropped,
        )

    def reset(self) -> None:
        """Nothing to forget: runs share only the scratch folder, which is kept."""

    def close(self) -> None:
        if self._owns_scratch and self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


class _CappedReader:
    """Drains a pipe in a thread, keeping the first `limit` characters and counting the rest."""

    def __init__(self, pipe: IO[bytes], limit: int) -> None:
        self._pipe = pipe
        self._limit = limit
        self._room = limit * 4  # a character is at most 4 UTF-8 bytes
        self._chunks: list[bytes] = []
        self._extra = 0
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        with self._pipe:
            while chunk := self._pipe.read1(65536):
                kept = chunk[: self._room]
                self._room -= len(kept)
                self._extra += len(chunk) - len(kept)
                if kept:
                    self._chunks.append(kept)

    def result(self) -> tuple[str, int]:
        """The kept text and about how many characters were dropped."""
        self._thread.join(timeout=5.0)
        text = b"".join(self._chunks).decode("utf-8", errors="replace")
        return text[: self._limit], self._extra + max(0, len(text) - self._limit)


def _code_from_arguments(arguments: str) -> str:
    """The code of a `python` call; unwrap ``{"code": "..."}`` that some models send."""
    stripped = arguments.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            return arguments
        if isinstance(value, dict) and isinstance(value.get("code"), str) and len(value) == 1:
            return value["code"]
    return arguments
