"""The python tool's sandbox against hostile code, with the real OS mechanisms (no mocks).

Every attack goes through ``ctypes`` and libc where it can, because audit hooks never see
those calls: what stops them here is bubblewrap's namespaces, rlimits and the seccomp filter.
"""

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlx_harmony.tools import PythonTool
from mlx_harmony.tools.sandbox import (
    SandboxUnavailableError,
    bubblewrap_argv,
    find_sandbox,
    render_macos_profile,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="bubblewrap is Linux")

MAX_PROCESSES = 8


@pytest.fixture
def tool(tmp_path: Path) -> Iterator[PythonTool]:
    tool = PythonTool(
        scratch_dir=tmp_path / "scratch",
        timeout_s=10,
        memory_limit_mb=512,
        max_processes=MAX_PROCESSES,
    )
    assert tool.sandbox.confined, "these tests need the OS sandbox (apt-get install bubblewrap)"
    yield tool
    tool.close()


@pytest.fixture
def listener() -> Iterator[tuple[int, list[socket.socket]]]:
    """A real TCP listener on 127.0.0.1 and the connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()
    for conn in accepted:
        conn.close()


LIBC = "import ctypes, os, time\nlibc = ctypes.CDLL(None, use_errno=True)\n"


@linux_only
def test_ctypes_fork_and_exec_of_a_shell_is_blocked(tool: PythonTool) -> None:
    run = tool.run(
        LIBC + "pid = libc.fork()\n"
        "if pid == 0:\n"
        "    libc.execl(b'/bin/sh', b'sh', b'-c', b'echo SHELL-RAN', None)\n"
        "    print('exec failed, errno', ctypes.get_errno(), flush=True)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    assert "SHELL-RAN" not in run.stdout + run.stderr
    assert "exec failed, errno 1" in run.stdout  # EPERM from the seccomp filter


@linux_only
def test_raw_libc_connect_to_a_local_listener_fails(
    tool: PythonTool, listener: tuple[int, list[socket.socket]]
) -> None:
    port, accepted = listener
    # socket(2) and connect(2) straight from libc: no audit hook sees them.
    run = tool.run(
        LIBC + "import struct, socket\n"
        "fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)\n"
        f"addr = struct.pack('!HH4s8x', socket.AF_INET, {port}, socket.inet_aton('127.0.0.1'))\n"
        "addr = struct.pack('=H', socket.AF_INET) + addr[2:]\n"
        "rc = libc.connect(fd, addr, len(addr))\n"
        "print('CONNECTED' if rc == 0 else f'refused errno {ctypes.get_errno()}')\n"
    )
    time.sleep(0.3)
    assert "CONNECTED" not in run.stdout
    assert "refused errno" in run.stdout
    assert accepted == []


@linux_only
def test_a_fork_bomb_gets_only_the_process_limit_and_returns_promptly(tool: PythonTool) -> None:
    start = time.monotonic()
    run = tool.run(
        LIBC + "started = 0\n"
        "for _ in range(200):\n"
        "    pid = libc.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(5)\n"
        "        os._exit(0)\n"
        "    started += pid > 0\n"
        "print('forks', started)\n"
    )
    elapsed = time.monotonic() - start
    # The run itself is one of the MAX_PROCESSES.
    assert run.stdout.split() == ["forks", str(MAX_PROCESSES - 1)]
    assert elapsed < 2.0  # the sleeping children die with the run


@pytest.mark.slow  # seconds: the quick tier stays under its budget
@linux_only
def test_a_setsid_child_does_not_outlive_the_call(tool: PythonTool, tmp_path: Path) -> None:
    marker = tool.scratch_dir / "survivor.txt"
    start = time.monotonic()
    run = tool.run(
        LIBC + "if libc.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(1.0)\n"
        "    open('survivor.txt', 'w').write(str(os.getpid()))\n"
        "    os._exit(0)\n"
        "print('parent done')\n"
    )
    assert run.stdout.strip() == "parent done"
    assert time.monotonic() - start < 1.0
    time.sleep(2.0)
    assert not marker.exists()


@linux_only
def test_a_child_holding_the_pipes_does_not_hold_the_call(tool: PythonTool) -> None:
    start = time.monotonic()
    run = tool.run(
        LIBC + "if libc.fork() == 0:\n    time.sleep(10)\n    os._exit(0)\nprint('returned')\n"
    )
    elapsed = time.monotonic() - start
    assert run.stdout.strip() == "returned"
    assert elapsed < 1.0


@pytest.mark.slow  # seconds: the quick tier stays under its budget
@linux_only
def test_the_timeout_kills_every_process_of_the_run(tmp_path: Path) -> None:
    tool = PythonTool(scratch_dir=tmp_path / "scratch", timeout_s=1.0, max_processes=4)
    start = time.monotonic()
    run = tool.run(
        LIBC + "if libc.fork() == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(1.5)\n"
        "    open('late.txt', 'w').write('alive')\n"
        "    os._exit(0)\n"
        "while True:\n"
        "    pass\n"
    )
    assert run.timed_out
    assert time.monotonic() - start < 2.0
    time.sleep(1.5)
    assert not (tool.scratch_dir / "late.txt").exists()


@linux_only
def test_files_outside_the_scratch_folder_cannot_be_read(tool: PythonTool, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    code = "for path in {paths!r}:\n" + (
        "    try:\n"
        "        print(path, open(path).read()[:40])\n"
        "    except OSError as error:\n"
        "        print(path, 'refused', type(error).__name__)\n"
    )
    paths = ["/etc/passwd", "/etc/shadow", str(secret), "/root/.bashrc", "/home"]
    run = tool.run(code.format(paths=paths))
    lines = run.stdout.splitlines()
    assert len(lines) == len(paths)
    assert all(" refused " in line for line in lines), run.stdout
    assert "TOP-SECRET" not in run.stdout
    assert "root:" not in run.stdout


@linux_only
def test_files_outside_the_scratch_folder_cannot_be_written(
    tool: PythonTool, tmp_path: Path
) -> None:
    targets = [tmp_path / "escaped.txt", Path("/usr/escaped.txt"), Path("/escaped.txt")]
    run = tool.run(
        f"for path in {[str(t) for t in targets]!r}:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print(path, 'WRITTEN')\n"
        "    except OSError as error:\n"
        "        print(path, 'refused', type(error).__name__)\n"
    )
    assert "WRITTEN" not in run.stdout
    assert run.stdout.count(" refused ") == len(targets)
    for target in targets:
        assert not target.exists()


def test_normal_code_still_works(tool: PythonTool) -> None:
    run = tool.run("import math, json\nprint(math.factorial(20))\njson.dumps({'a': 1})")
    assert run.ok, run.render()
    assert run.stdout.splitlines() == ["2432902008176640000", "'{\"a\": 1}'"]
    assert tool.run("open('notes.txt', 'w').write('kept')").ok
    again = tool.run("print(open('notes.txt').read())")
    assert again.stdout.strip() == "kept"
    assert (tool.scratch_dir / "notes.txt").read_text() == "kept"
    # The private /tmp is writable too, and threads work under the process limit.
    run = tool.run(
        "import tempfile, threading\n"
        "with tempfile.NamedTemporaryFile('w') as f:\n"
        "    f.write('t')\n"
        "threads = [threading.Thread(target=lambda: None) for _ in range(4)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print('ok')"
    )
    assert run.stdout.strip() == "ok", run.render()


@linux_only
def test_root_runs_as_an_unprivileged_user(tool: PythonTool) -> None:
    run = tool.run("import os\nprint(os.getuid(), os.geteuid())")
    uid = os.geteuid() if os.geteuid() != 0 else tool.sandbox.drop_to_uid
    assert run.stdout.split() == [str(uid), str(uid)]
    assert uid != 0


def test_the_description_states_the_active_limits(tmp_path: Path) -> None:
    tool = PythonTool(scratch_dir=tmp_path, timeout_s=7, memory_limit_mb=300, max_processes=5)
    (namespace,) = tool.declarations().system
    text = namespace.description
    assert "stopped after 7 seconds" in text
    assert "300 MB of memory" in text
    assert "no network access" in text
    assert "files outside the scratch folder cannot be written" in text
    if tool.sandbox.kind == "bubblewrap":
        assert "at most 5 processes and threads may run at once" in text
        assert "it cannot start other programs" in text
    networked = PythonTool(scratch_dir=tmp_path, allow_network=True)
    assert "internet access is available" in networked.declarations().system[0].description


def test_without_a_sandbox_the_tool_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap, no sandbox-exec
    with pytest.raises(SandboxUnavailableError) as caught:
        PythonTool(scratch_dir=tmp_path)
    message = str(caught.value)
    if sys.platform.startswith("linux"):
        assert "apt-get install bubblewrap" in message
    assert "allow_unsandboxed=True" in message
    unsafe = PythonTool(scratch_dir=tmp_path / "scratch", allow_unsandboxed=True)
    assert unsafe.sandbox.kind == "none"
    description = unsafe.declarations().system[0].description
    assert "There is no operating system sandbox" in description
    assert find_sandbox(allow_unsandboxed=True).kind == "none"


def test_the_bubblewrap_command_binds_only_what_python_needs(tmp_path: Path) -> None:
    argv = bubblewrap_argv(
        "bwrap",
        scratch=tmp_path,
        read_only=("/opt/python", "/usr/lib/python3"),
        allow_network=False,
        as_root=False,
    )
    binds = [(argv[i], argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if "bind" in a]
    writable = [b for b in binds if b[0] == "--bind"]
    assert writable == [("--bind", str(tmp_path), str(tmp_path))]
    sources = {b[1] for b in binds}
    assert "/opt/python" in sources
    assert "/usr/lib/python3" not in sources  # inside /usr, already bound
    assert not sources & {"/", "/etc", "/home", "/root", "/etc/passwd"}
    for flag in ("--unshare-net", "--unshare-pid", "--die-with-parent", "--new-session"):
        assert flag in argv
    networked = bubblewrap_argv(
        "bwrap", scratch=tmp_path, read_only=(), allow_network=True, as_root=True
    )
    assert "--unshare-net" not in networked
    assert networked[networked.index("--cap-drop") + 1] == "ALL"


def test_the_macos_profile_denies_network_writes_and_fork() -> None:
    profile = render_macos_profile(
        scratch=Path('/Users/me/scr "x"'), read_only=("/opt/py",), allow_network=False
    )
    assert profile.splitlines() == [
        "(version 1)",
        "(allow default)",
        "(deny network*)",
        "(deny file-write*)",
        '(allow file-write* (subpath "/Users/me/scr \\"x\\"") (literal "/dev/null"))',
        '(deny file-read* (subpath "/Users") (subpath "/Volumes") (subpath "/private/var/root"))',
        '(allow file-read* (subpath "/Users/me/scr \\"x\\"") (subpath "/opt/py"))',
        "(deny process-fork)",
    ]
    networked = render_macos_profile(scratch=Path("/tmp/s"), read_only=(), allow_network=True)
    assert "(deny network*)" not in networked


def test_without_a_sandbox_the_tool_refuses_unless_told_to_run_unsandboxed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlx_harmony.tools import sandbox
    from mlx_harmony.tools.registry import ToolRegistry

    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)  # no bwrap, no sandbox-exec
    with pytest.raises(sandbox.SandboxUnavailableError, match="--python-unsandboxed"):
        ToolRegistry.from_flags(python=True)
    registry = ToolRegistry.from_flags(python=True, python_allow_unsandboxed=True)
    try:
        (tool,) = [t for t in registry.tools if t.name == "python"]
        assert not tool.sandbox.confined
    finally:
        registry.close()
