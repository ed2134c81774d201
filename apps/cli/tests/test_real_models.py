"""The real thing, slow: a real MLX model behind the chat, on a pipe and in a real terminal
under tmux. The demo model answers with reasoning then an answer; a tiny random gpt-oss
checks the loading path on its own (its words are noise)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlx_harmony.chat_history import load_chat
from mlx_harmony.cli.generate import run_generate
from mlx_harmony.cli.launch import locate_model, make_backend
from mlx_harmony.cli.render import THINKING_HEADING
from mlx_harmony.cli.testing import ENTER, run_chat

pytestmark = pytest.mark.slow

# Read before the autouse fixture replaces it with a stand-in folder.
QUIT = "\\quit" + ENTER


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    folder = tmp_path_factory.mktemp("random-tiny")
    model, config = build_random_model("tiny", seed=3)
    return save_model(model, config, folder / "model", cache_dir=folder / "cache")


def real_backend(launch: Any) -> Any:
    return make_backend(launch, locate_model(launch), on_close=lambda _: None)


def test_a_real_model_loads_in_the_background_and_answers(
    random_model: Path, tmp_path: Path
) -> None:
    chat_file = tmp_path / "chat.json"
    argv = [
        "--model",
        str(random_model),
        "--max-tokens",
        "8",
        "--seed",
        "1",
        "--chat",
        str(chat_file),
    ]
    run = run_chat(argv, "Hello" + ENTER + QUIT, backend=real_backend)
    assert run.status == 0, run.screen
    assert "tok/s" in run.session.toolbar()
    log = load_chat(chat_file)
    assert log.messages[0].content == "Hello"
    assert log.messages[-1].role == "assistant"
    assert log.header.model_path == str(random_model.resolve())
    assert log.messages[-1].timing is not None
    assert log.messages[-1].timing.generation_tokens


EXIT_SCRIPT = """
import sys
from mlx_harmony.cli.launch import locate_model, make_backend
from mlx_harmony.cli.testing import ENTER, run_chat

run = run_chat(
    ["--model", sys.argv[1], "--max-tokens", "16"],
    "Hello" + ENTER + "\\x04",
    backend=lambda launch: make_backend(launch, locate_model(launch), on_close=lambda _: None),
)
sys.exit(run.status)
"""


def test_the_process_exits_cleanly_after_mlx_ran_on_the_worker(random_model: Path) -> None:
    # Without releasing the worker's MLX streams, about every other exit aborted with
    # "terminate called without an active exception" (ml-explore/mlx#3126).
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, str(random_model)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert "terminate called" not in done.stderr


def test_the_demo_model_thinks_then_answers_and_the_chat_is_saved(
    demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLX_HARMONY_DEMO_MODEL", str(demo_model))
    chat_file = tmp_path / "chat.json"
    argv = ["--temperature", "0", "--max-tokens", "300", "--chat", str(chat_file)]
    run = run_chat(argv, "Hello!" + ENTER + QUIT, backend=real_backend)
    assert run.status == 0, run.screen
    log = load_chat(chat_file)
    answer = next(m for m in log.messages if m.role == "assistant" and m.channel == "final")
    assert answer.content.strip()
    assert (answer.analysis or "").strip()
    screen = run.screen
    first_words = " ".join(answer.content.split()[:3])
    assert screen.index(THINKING_HEADING) < screen.index(first_words)


def test_generate_json_with_the_demo_model(
    demo_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLX_HARMONY_DEMO_MODEL", str(demo_model))
    out = io.StringIO()
    status = run_generate(
        ["--prompt", "Hello!", "--json", "--temperature", "0", "--max-tokens", "300"],
        stdout=out,
        stderr=io.StringIO(),
    )
    assert status == 0
    data = json.loads(out.getvalue())
    assert data["final"].strip()
    assert data["analysis"].strip()
    assert data["finish_reason"] == "stop"
    assert data["stats"]["generation_tokens"] > 0


# -- a real terminal ---------------------------------------------------------------------------


class Tmux:
    """One tmux server on its own socket, one window of a fixed size."""

    def __init__(self, name: str) -> None:
        self.socket = name

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return result.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-J", "-S", "-200", "-t", "chat")

    def wait_for(self, predicate: Any, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.screen()}")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install -y tmux); CI must have it")
    server = Tmux(f"mlx-harmony-test-{os.getpid()}")
    yield server
    subprocess.run(["tmux", "-L", server.socket, "kill-server"], capture_output=True)


def test_chat_in_a_real_terminal(demo_model: Path, tmux: Tmux, tmp_path: Path) -> None:
    chat = Path(sys.executable).parent / "mlx-harmony-chat"
    assert chat.exists(), "the console script is installed with the package"
    chat_file = tmp_path / "chat.json"
    env = {
        "MLX_HARMONY_DEMO_MODEL": str(demo_model),
        "MLX_HARMONY_HOME": str(tmp_path / "home"),
        "TERM": "xterm-256color",
    }
    if os.environ.get("LD_PRELOAD"):
        env["LD_PRELOAD"] = os.environ["LD_PRELOAD"]
    exports = " ".join(f"{k}={v}" for k, v in env.items())
    command = (
        f"env {exports} {chat} --temperature 0 --max-tokens 300 --chat {chat_file}; "
        "echo CHAT-EXITED-$?; sleep 600"
    )
    tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "50", command)
    tmux.wait_for(lambda s: "reasoning medium" in s, 60, "the first prompt")
    tmux.wait_for(lambda s: "context " in s, 300, "the model to load")
    tmux("send-keys", "-t", "chat", "Hello!", "Enter")
    screen = tmux.wait_for(lambda s: "tok/s" in s, 300, "the answer")
    tmux("send-keys", "-t", "chat", "C-d")
    tmux.wait_for(lambda s: "CHAT-EXITED-0" in s, 30, "the chat to exit")

    log = load_chat(chat_file)  # a valid chat-log v3
    assert log.schema_version == 3
    answer = next(m for m in log.messages if m.role == "assistant" and m.channel == "final")
    assert answer.content.strip()
    assert (answer.analysis or "").strip()
    lines = screen.splitlines()
    asked = next(i for i, line in enumerate(lines) if line.startswith("> Hello!"))
    thinking = next(i for i, line in enumerate(lines) if line.strip() == THINKING_HEADING)
    first_words = " ".join(answer.content.split()[:3])
    answered = next(i for i, line in enumerate(lines) if first_words in line)
    assert asked < thinking < answered, screen
    assert any(line.startswith("│ ") for line in lines[thinking + 1 : answered]), screen


def test_ctrl_c_in_a_real_terminal_stops_the_reply(
    random_model: Path, tmux: Tmux, tmp_path: Path
) -> None:
    chat = Path(sys.executable).parent / "mlx-harmony-chat"
    chat_file = tmp_path / "chat.json"
    preload = f"LD_PRELOAD={os.environ['LD_PRELOAD']} " if os.environ.get("LD_PRELOAD") else ""
    command = (
        f"env {preload}MLX_HARMONY_HOME={tmp_path / 'home'} TERM=xterm-256color {chat} "
        f"--model {random_model} --max-tokens 5000 --loop-detection off --chat {chat_file}; "
        "echo CHAT-EXITED-$?; sleep 600"
    )
    tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "40", command)
    tmux.wait_for(lambda s: "context " in s, 300, "the model to load")
    tmux("send-keys", "-t", "chat", "Tell me everything", "Enter")

    def generating(screen: str) -> bool:  # the prompt and its toolbar are gone
        return "context " not in screen.split("> Tell me everything", 1)[-1]

    tmux.wait_for(generating, 60, "the reply to start")
    time.sleep(2)  # the random model's words may be no text at all (a header that never ends)
    tmux("send-keys", "-t", "chat", "C-c")
    tmux.wait_for(lambda s: "⏹ cancelled" in s, 60, "the cancellation")
    tmux("send-keys", "-t", "chat", "-l", "\\quit")
    tmux("send-keys", "-t", "chat", "Enter")
    tmux.wait_for(lambda s: "CHAT-EXITED-0" in s, 30, "the chat to exit")
    log = load_chat(chat_file)
    assert [m.content for m in log.messages if m.role == "user"] == ["Tell me everything"]
    last = log.messages[-1].model_dump()
    assert last["finish_reason"] == "cancelled"
    assert last["timing"]["generation_tokens"] < 5000


@pytest.fixture
def server(random_model: Path, tmp_path: Path) -> Iterator[str]:
    """A real mlx-harmony server on the random model (skipped if the server app is absent)."""
    binary = Path(sys.executable).parent / "mlx-harmony-server"
    if not binary.exists():
        pytest.skip("mlx-harmony-server is not installed")
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MLX_HARMONY_HOME": str(tmp_path / "server-home")}
    process = subprocess.Popen(
        [str(binary), "--model", str(random_model), "--port", str(port), "--preload"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as response:
                    if json.loads(response.read()).get("model_loaded"):
                        break
            except OSError:
                pass
            assert process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not load its model"
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def test_chat_with_a_real_server(server: str, tmp_path: Path) -> None:
    chat_file = tmp_path / "chat.json"
    argv = ["--server", server, "--max-tokens", "8", "--seed", "1", "--chat", str(chat_file)]
    keys = "Hello" + ENTER + "\\tokens" + ENTER + QUIT
    run = run_chat(argv, keys, backend=real_backend)
    assert run.status == 0, run.screen
    assert "Context: " in run.screen, run.screen  # \tokens, counted by the server
    log = load_chat(chat_file)
    assert [m.role for m in log.messages][:2] == ["user", "assistant"]
    assert log.messages[0].content == "Hello"
