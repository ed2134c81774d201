"""The gpt-oss `python` tool: run the model's code in a fresh, confined Python subprocess.

Each call starts ``sys.executable -I`` inside an OS sandbox (`sandbox.find_sandbox`:
bubblewrap on Linux, sandbox-exec on macOS) with the scratch folder as its only writable
place, no network, a process limit, an address-space limit (RLIMIT_AS), a CPU-time limit
(RLIMIT_CPU), a file-size limit, no inherited environment and a wall-clock timeout. On Linux
the run's PID namespace ends with its first process, so nothing it started outlives the call
or holds its pipes. Output is cut to a size limit while it is read, so a print loop cannot fill
memory. Audit hooks that refuse sockets stay as a second layer.

Without a sandbox the tool refuses to start unless `allow_unsandboxed=True`; then only the
rlimits and audit hooks remain, which stop accidents, not hostile code.

The limits are set inside the child by its bootstrap, not by ``preexec_fn``: ``preexec_fn`` is
unsafe when the parent runs threads (the server does).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from openai_harmony import ToolNamespaceConfig

from .base import ToolDeclarations, ToolResult
from .sandbox import Sandbox, bubblewrap_argv, find_sandbox, python_prefixes, render_macos_profile

__all__ = ["PythonRun", "PythonTool"]

# Runs in the child before the model's code. argv: memory bytes, cpu seconds, file bytes,
# max processes, uid to switch to (-1: keep), hooks (0: none, 1: network, 2: network and
# processes), working folder, seccomp (0: none; else the audit arch, execve and execveat
# numbers, "arch:execve:execveat"). The last expression's value is printed, as in a notebook
# cell. Any failure here ends the run before the model's code is read, so the limits hold or
# nothing runs.
_BOOTSTRAP = r"""
import sys
def _setup():
    import os, resource
    memory, cpu, fsize, nproc, uid, hooks = (int(a) for a in sys.argv[1:7])
    if uid >= 0:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise SystemExit("sandbox: could not switch to the sandbox user")
        # A user namespace of this run's own: the kernel then counts its processes apart.
        try:
            import ctypes
            ctypes.CDLL(None, use_errno=True).unshare(0x10000000)
        except Exception:
            pass
    os.chdir(sys.argv[7])
    if nproc > 0:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
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
    if sys.argv[8] != "0":
        _no_exec(*(int(n) for n in sys.argv[8].split(":")))
    if not hooks:
        return
    import socket
    local = {getattr(socket, "AF_UNIX", None)}
    blocked = (
        "socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
        "socket.getnameinfo",
    )
    if hooks > 1:
        blocked += (
            "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
            "os.fork", "os.forkpty", "pty.spawn",
        )
    def hook(event, args):
        if event == "socket.__new__":
            if args[1] not in local:
                raise PermissionError("network access is disabled in this python tool")
        elif event.startswith(blocked):
            what = "network access" if event.startswith("socket.") else "starting processes"
            raise PermissionError(f"{what} is disabled in this python tool ({event})")
    sys.addaudithook(hook)
def _no_exec(arch, execve, execveat):
    # A seccomp filter: execve and execveat fail with EPERM, other architectures' system
    # calls (x32, i386) kill the process. Needs no_new_privs, which bubblewrap sets.
    import ctypes, struct
    allow, kill, eperm = 0x7FFF0000, 0x80000000, 0x00050001
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    program = [
        (ld, 0, 0, 4), (jeq, 1, 0, arch), (ret, 0, 0, kill),
        (ld, 0, 0, 0), (jge, 3, 0, 0x40000000), (jeq, 2, 0, execve), (jeq, 1, 0, execveat),
        (ret, 0, 0, allow), (ret, 0, 0, eperm),
    ]
    code = b"".join(struct.pack("HBBI", *op) for op in program)
    buffer = ctypes.create_string_buffer(code, len(code))
    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = Program(len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise SystemExit(f"sandbox: seccomp filter refused (errno {ctypes.get_errno()})")
_setup()
del _setup, _no_exec
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
    "calls. {confinement}"
)

_SANDBOXED = (
    "The code runs in a sandbox: {network}; files outside the scratch folder cannot be "
    "written, and only the Python installation is readable besides it{tmp}; {processes}."
)

_UNSANDBOXED = (
    "{network} Starting other processes is refused by the interpreter. There is no operating "
    "system sandbox: files the user can reach are reachable."
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
    `max_processes` bounds the processes and threads of one run on Linux (macOS allows one
    process). The constructor raises `SandboxUnavailableError` where no OS sandbox exists, unless
    `allow_unsandboxed=True`. Run as root on Linux, the code runs as uid 65534 and the scratch
    folder is given to that uid so the code can write there.
    """

    def __init__(
        self,
        *,
        scratch_dir: str | os.PathLike[str] | None = None,
        timeout_s: float = 30.0,
        memory_limit_mb: int = 2048,
        max_file_mb: int = 256,
        max_output_chars: int = 20_000,
        max_processes: int = 32,
        allow_network: bool = False,
        allow_unsandboxed: bool = False,
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
        if max_processes < 1:
            raise ValueError(f"max_processes must be >= 1 (the run itself), got {max_processes}")
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self.max_file_mb = max_file_mb
        self.max_output_chars = max_output_chars
        self.max_processes = max_processes
        self.allow_network = allow_network
        self.python = python
        self.sandbox: Sandbox = find_sandbox(allow_unsandboxed=allow_unsandboxed)
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
                scratch = Path(tempfile.mkdtemp(prefix="mlx-harmony-python-"))
                # Removed by close(), or when the tool is collected or Python exits: a caller
                # that never closes the tool leaves no folder behind.
                weakref.finalize(self, shutil.rmtree, scratch, ignore_errors=True)
            else:
                scratch = Path(self._scratch_arg).resolve()
                scratch.mkdir(parents=True, exist_ok=True)
            uid = self.sandbox.drop_to_uid
            if uid is not None and scratch.stat().st_uid != uid:
                os.chown(scratch, uid, uid)
            self._scratch = scratch
        return self._scratch

    @property
    def process_limit(self) -> int:
        """How many processes (and threads) one run may have at once."""
        return 1 if self.sandbox.kind == "sandbox-exec" else self.max_processes

    def handles(self, recipient: str) -> bool:
        return recipient == "python" or recipient.startswith("python.")

    def describe_confinement(self) -> str:
        """What the model is told holds; each clause is enforced by the sandbox in use."""
        if not self.sandbox.confined:
            network = (
                "Internet access is available."
                if self.allow_network
                else "Network access is refused by the interpreter."
            )
            return _UNSANDBOXED.format(network=network)
        limit = self.process_limit
        if limit == 1:
            processes = "it cannot start other processes"
        else:
            processes = f"at most {limit} processes and threads may run at once"
            if _seccomp_argument() != "0":
                processes = "it cannot start other programs, and " + processes
        return _SANDBOXED.format(
            network="internet access is available" if self.allow_network else "no network access",
            tmp=f" (and a private {_TMP_MB} MB /tmp)" if self.sandbox.kind == "bubblewrap" else "",
            processes=processes,
        )

    def declarations(self) -> ToolDeclarations:
        description = _DESCRIPTION.format(
            version=".".join(map(str, sys.version_info[:2])),
            timeout=self.timeout_s,
            memory=self.memory_limit_mb,
            confinement=self.describe_confinement(),
        )
        return ToolDeclarations(
            system=(ToolNamespaceConfig(name="python", description=description, tools=[]),)
        )

    def execute(self, recipient: str, arguments: str) -> ToolResult:
        run = self.run(_code_from_arguments(arguments))
        return ToolResult(name=recipient, content=run.render(), error=not run.ok)

    def command(self, scratch: Path) -> list[str]:
        """The full command line of one run: the sandbox, then the interpreter."""
        sandbox = self.sandbox
        confined = sandbox.confined
        hooks = 0 if self.allow_network else 1
        if not confined:
            hooks = 2  # without a sandbox, refusing processes is all there is
        python = [
            self.python,
            "-I",
            "-X",
            "utf8",
            "-c",
            _BOOTSTRAP,
            str(self.memory_limit_mb * 2**20),
            str(int(self.timeout_s) + 1),
            str(self.max_file_mb * 2**20),
            str(self.max_processes if sandbox.kind == "bubblewrap" else 0),
            str(sandbox.drop_to_uid if sandbox.drop_to_uid is not None else -1),
            str(hooks),
            str(scratch),
            _seccomp_argument(),
        ]
        prefixes = python_prefixes(self.python)
        if sandbox.kind == "bubblewrap":
            assert sandbox.executable is not None
            wrapper = bubblewrap_argv(
                sandbox.executable,
                scratch=scratch,
                read_only=prefixes,
                allow_network=self.allow_network,
                as_root=sandbox.drop_to_uid is not None,
                disable_userns=sandbox.disable_userns,
                tmp_size_mb=_TMP_MB,
            )
            return wrapper + python
        if sandbox.kind == "sandbox-exec":
            assert sandbox.executable is not None
            profile = render_macos_profile(
                scratch=scratch, read_only=prefixes, allow_network=self.allow_network
            )
            return [sandbox.executable, "-p", profile, *python]
        return python

    def run(self, code: str) -> PythonRun:
        """Run `code` in a new confined interpreter and collect what it printed."""
        scratch = self.scratch_dir
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(scratch),
            "TMPDIR": "/tmp" if self.sandbox.kind == "bubblewrap" else str(scratch),
            "LANG": "C.UTF-8",
            "MPLBACKEND": "Agg",
            # Fewer BLAS threads keep the address space (RLIMIT_AS) and thread count small.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
        }
        if not self.sandbox.confined:
            env["PATH"] = os.environ.get("PATH", os.defpath)
        limit = self.max_output_chars
        process = subprocess.Popen(
            self.command(scratch),
            cwd=scratch,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        out = _CappedReader(_buffered(process.stdout), limit)
        err = _CappedReader(_buffered(process.stderr), limit)
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
            if not timed_out:
                _kill_group(process)
                raise
        finally:
            # Under bubblewrap this ends the PID namespace (--die-with-parent): every process
            # the code started dies, so none can hold the pipes open.
            _kill_group(process)
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


_TMP_MB = 64

# The audit architecture and the execve/execveat numbers, per machine (linux/audit.h and
# the system call tables).
_SECCOMP = {
    "x86_64": (0xC000003E, 59, 322),
    "aarch64": (0xC00000B7, 221, 281),
}


def _seccomp_argument() -> str:
    """The bootstrap's seccomp argument: "0" where no filter is known for this machine."""
    numbers = _SECCOMP.get(platform.machine()) if sys.platform.startswith("linux") else None
    return ":".join(map(str, numbers)) if numbers else "0"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the run's process group, then reap its leader."""
    if process.returncode is None:
        # Not reaped yet, so its process group id cannot have been reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _buffered(pipe: IO[bytes] | None) -> io.BufferedReader:
    """A ``PIPE`` stream of a binary ``Popen``: typeshed says ``IO[bytes] | None``, but with the
    default buffering it is a ``BufferedReader``, whose ``read1`` returns what has arrived."""
    if pipe is None:
        raise RuntimeError("the process was started without a pipe for its output")
    return cast(io.BufferedReader, pipe)


class _CappedReader:
    """Drains a pipe in a thread, keeping the first `limit` characters and counting the rest."""

    def __init__(self, pipe: io.BufferedReader, limit: int) -> None:
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
        """The kept text and about how many characters were dropped.

        Waits at most a second for the end of the pipe: a process that escaped the kill (only
        possible without a sandbox) must not hold the call.
        """
        self._thread.join(timeout=1.0)
        self._chunks = list(self._chunks)
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
