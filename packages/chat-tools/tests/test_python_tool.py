import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlx_harmony.tools import PythonTool, ToolRegistry


@pytest.fixture
def tool(tmp_path: Path) -> Iterator[PythonTool]:
    tool = PythonTool(scratch_dir=tmp_path / "scratch", timeout_s=10, memory_limit_mb=512)
    yield tool
    tool.close()


def test_prints_and_the_last_expression_come_back(tool: PythonTool) -> None:
    run = tool.run("x = 6\nprint('seven', x + 1)\nx * 7")
    assert run.ok
    assert run.render() == "seven 7\n42"


def test_errors_show_a_traceback_of_the_model_code_only(tool: PythonTool) -> None:
    run = tool.run("def f():\n    return 1 / 0\nf()")
    assert not run.ok
    assert run.returncode == 1
    assert "ZeroDivisionError" in run.stderr
    assert 'File "<python>", line 2, in f' in run.stderr
    assert "return 1 / 0" in run.stderr  # source lines are shown
    assert "_run" not in run.stderr  # the bootstrap's frames are hidden


def test_runs_in_the_scratch_folder_which_keeps_files(tool: PythonTool) -> None:
    tool.run("open('kept.txt', 'w').write('hello')")
    run = tool.run("import os\nprint(os.getcwd())\nprint(open('kept.txt').read())")
    assert run.stdout.splitlines() == [str(tool.scratch_dir), "hello"]
    assert (tool.scratch_dir / "kept.txt").read_text() == "hello"


def test_interpreter_is_isolated_and_the_environment_is_not_inherited(
    tool: PythonTool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    run = tool.run(
        "import os, sys\nprint(sys.flags.isolated, sys.executable)\n"
        "print(os.environ.get('SECRET_TOKEN'))"
    )
    assert run.stdout.splitlines() == [f"1 {sys.executable}", "None"]


def test_nothing_carries_over_between_runs(tool: PythonTool) -> None:
    tool.run("leftover = 1")
    run = tool.run("print('leftover' in globals())")
    assert run.stdout.strip() == "False"


@pytest.fixture
def listening_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
            accepted.append(conn)
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.close()
    for conn in accepted:
        conn.close()


def test_network_connections_are_refused(tool: PythonTool, listening_port: int) -> None:
    code = (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {listening_port}), timeout=2)\n"
        "print('connected')"
    )
    run = tool.run(code)
    assert "connected" not in run.stdout
    assert "PermissionError: network access is disabled" in run.stderr
    # The same code reaches the server when the network is allowed, so the refusal is real.
    allowed = PythonTool(scratch_dir=tool.scratch_dir, timeout_s=10, allow_network=True)
    assert allowed.run(code).stdout.strip() == "connected"


def test_raw_socket_creation_and_dns_are_refused(tool: PythonTool) -> None:
    run = tool.run(
        "import socket\n"
        "for attempt in (lambda: socket.socket(), lambda: socket.getaddrinfo('localhost', 80)):\n"
        "    try:\n"
        "        attempt()\n"
        "        print('allowed')\n"
        "    except PermissionError:\n"
        "        print('refused')\n"
    )
    assert run.stdout.split() == ["refused", "refused"]


def test_starting_programs_is_refused(tool: PythonTool) -> None:
    run = tool.run("import subprocess\nsubprocess.run(['echo', 'escaped'])")
    assert "escaped" not in run.stdout
    assert "PermissionError" in run.stderr


def test_memory_limit_stops_a_large_allocation(tool: PythonTool) -> None:
    run = tool.run("block = bytearray(1024 * 2**20)\nprint('allocated')")
    assert "allocated" not in run.stdout
    assert "MemoryError" in run.stderr
    # Well under the limit is fine.
    assert tool.run("block = bytearray(64 * 2**20)\nprint(len(block))").stdout.strip() == str(
        64 * 2**20
    )


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_timeout_kills_the_run_and_says_so(tmp_path: Path) -> None:
    tool = PythonTool(scratch_dir=tmp_path, timeout_s=1.0)
    start = time.monotonic()
    run = tool.run("print('started', flush=True)\nwhile True:\n    pass")
    elapsed = time.monotonic() - start
    assert run.timed_out
    assert not run.ok
    assert run.stdout.strip() == "started"  # output before the kill is kept
    assert "[timed out after 1 s; the process was killed]" in run.render()
    assert elapsed < 5


def test_output_is_cut_to_the_limit(tmp_path: Path) -> None:
    tool = PythonTool(scratch_dir=tmp_path, timeout_s=10, max_output_chars=1000)
    run = tool.run("for i in range(10_000):\n    print('x' * 99)")
    assert len(run.stdout) + len(run.stderr) <= 1000
    assert run.dropped_chars == 10_000 * 100 - 1000
    assert "[output cut: about 999000 more characters were dropped]" in run.render()


def test_silent_code_gets_a_hint() -> None:
    tool = PythonTool(timeout_s=10)
    try:
        assert tool.run("x = 1").render() == "[no output; print() what you want to see]"
        scratch = tool.scratch_dir
        assert scratch.is_dir()
    finally:
        tool.close()
    assert not scratch.exists()  # an own temporary scratch folder is removed on close


def test_registry_runs_python_calls_and_unwraps_json(tmp_path: Path) -> None:
    with ToolRegistry.from_flags(python=True, python_scratch_dir=tmp_path) as registry:
        assert registry.handles("python")
        plain = registry.execute(_Call("python", "print(2 + 2)"))
        wrapped = registry.execute(_Call("python", '{"code": "print(3 + 3)"}'))
        failed = registry.execute(_Call("python", "raise ValueError('bad')"))
    assert (plain.name, plain.content, plain.error) == ("python", "4", False)
    assert wrapped.content == "6"
    assert failed.error
    assert "ValueError: bad" in failed.content


class _Call:
    def __init__(self, recipient: str, arguments: str) -> None:
        self.recipient = recipient
        self.arguments = arguments


def test_declaration_describes_the_real_limits() -> None:
    tool = PythonTool(timeout_s=12, memory_limit_mb=700)
    (namespace,) = tool.declarations().system
    assert namespace.name == "python"
    assert namespace.tools == []
    assert "12 seconds" in namespace.description
    assert "700 MB" in namespace.description
    assert "no network access" in namespace.description
    assert "stateful" not in namespace.description  # each run is a fresh process


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"timeout_s": 0}, "timeout_s"),
        ({"memory_limit_mb": 10}, "memory_limit_mb"),
        ({"max_output_chars": 5}, "max_output_chars"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        PythonTool(**kwargs)
