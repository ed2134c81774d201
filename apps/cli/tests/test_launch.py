"""From flags to a backend: profiles, prompt configs, model lookup, tools, debug output and
the generator's options."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from mlx_harmony.chat_history import load_chat
from mlx_harmony.cli.launch import (
    CliError,
    debug_options,
    demo_model_path,
    locate_model,
    make_backend,
    make_tools,
    mlx_harmony_home,
    prepare,
)
from mlx_harmony.cli.options import build_chat_parser, parse_args
from mlx_harmony.cli.testing import ENTER, run_chat
from mlx_harmony.controller import LocalBackend
from mlx_harmony.controller.testing import Script, ScriptedGenerator

QUIT = "\\quit" + ENTER


def launch_for(argv: list[str]) -> Any:
    return prepare(parse_args(build_chat_parser(), argv))


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (tmp_path / "quick.json").write_text(json.dumps({"temperature": 0.2, "max_tokens": 99}))
    path = tmp_path / "profiles.json"
    path.write_text(
        json.dumps(
            {
                "default": "quick",
                "profiles": {
                    "quick": {"model": "./models/tiny", "prompt_config": "quick.json"},
                    "inline": {"model": "./models/tiny", "prompt_config": {"top_k": 3}},
                },
            }
        )
    )
    return path


def test_a_profile_gives_the_model_and_the_prompt_config(profiles: Path) -> None:
    launch = launch_for(["--profiles-file", str(profiles), "--profile", "inline"])
    assert launch.config.setting("top_k") == 3
    assert launch.settings.model_source == "profile 'inline'"
    location = locate_model(launch)
    assert location.path == profiles.parent / "models" / "tiny"
    # without --profile: the file's default profile, with its config file
    launch = launch_for(["--profiles-file", str(profiles), "--temperature", "0.9"])
    assert (launch.config.setting("temperature"), launch.config.max_tokens) == (0.9, 99)
    assert launch.prompt_config_path == str(profiles.parent / "quick.json")


def test_profile_errors_name_the_fix(
    profiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(CliError, match=r"unknown profile 'quik'.*quick"):
        launch_for(["--profiles-file", str(profiles), "--profile", "quik"])
    monkeypatch.chdir(tmp_path / "models")
    with pytest.raises(CliError, match="--profile quick needs a profiles file"):
        launch_for(["--profile", "quick"])
    monkeypatch.setenv("MLX_HARMONY_PROFILES", str(profiles))
    assert launch_for(["--profile", "inline"]).config.setting("top_k") == 3
    monkeypatch.delenv("MLX_HARMONY_PROFILES")
    monkeypatch.chdir(tmp_path)  # ./profiles.json is found without --profiles-file
    assert launch_for(["--profile", "quick"]).config.max_tokens == 99


def test_the_prompt_config_flag_wins_over_the_profiles(profiles: Path, write_json: Any) -> None:
    config = write_json("mine.json", {"max_tokens": 7, "developer_instructions": "Be brief."})
    launch = launch_for(
        ["--profiles-file", str(profiles), "--profile", "quick", "--prompt-config", str(config)]
    )
    assert launch.config.max_tokens == 7
    assert launch.config.developer_instructions == "Be brief."
    assert launch.config.setting("temperature") is None  # the profile's config is not merged in
    with pytest.raises(CliError, match=r"tempreature.*did you mean 'temperature'"):
        launch_for(["--prompt-config", str(write_json("bad.json", {"tempreature": 1}))])


def test_models_are_found_as_folders_in_models_dir_or_the_demo(
    tmp_path: Path, write_json: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "zoo" / "my-model").mkdir(parents=True)
    config = write_json("c.json", {"models_dir": "zoo"})
    location = locate_model(launch_for(["--prompt-config", str(config), "--model", "my-model"]))
    assert location.path == tmp_path / "zoo" / "my-model"
    assert location.label == "my-model"
    location = locate_model(launch_for([]))
    assert location.label == "demo model"
    assert (location.path / "config.json").is_file()
    assert not location.check_demo  # $MLX_HARMONY_DEMO_MODEL is used as it is
    monkeypatch.setenv("MLX_HARMONY_DEMO_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(CliError, match="not a model folder"):
        demo_model_path()


def test_a_built_demo_model_is_used_at_once_and_checked_by_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlx_harmony.demo_model
    import mlx_harmony.generate

    monkeypatch.delenv("MLX_HARMONY_DEMO_MODEL")
    monkeypatch.setenv("MLX_HARMONY_HOME", str(tmp_path))
    assert mlx_harmony_home() == mlx_harmony.demo_model.mlx_harmony_home()
    built = mlx_harmony.demo_model.demo_model_path()  # the package's own rule
    built.mkdir(parents=True)
    (built / mlx_harmony.demo_model.BUILD_RECORD).write_text("{}")
    location = locate_model(launch_for([]))
    assert (location.path, location.check_demo) == (built, True)

    checked: list[bool] = []

    def ensure_demo_model(*, progress: bool) -> Path:
        checked.append(progress)
        return built

    monkeypatch.setattr(mlx_harmony.demo_model, "ensure_demo_model", ensure_demo_model)
    monkeypatch.setattr(mlx_harmony.generate, "TokenGenerator", RecordingGenerator)
    RecordingGenerator.built.clear()
    make_backend(launch_for([]), location, on_close=lambda _: None)
    assert checked == [False]  # checked (and rebuilt if stale) quietly, on the worker
    assert RecordingGenerator.built[0][0] == built


def test_a_missing_local_model_is_a_clear_error() -> None:
    with pytest.raises(CliError, match="does not exist"):
        locate_model(launch_for(["--model", "./no/such/folder"]))


class RecordingGenerator(ScriptedGenerator):
    """Stands in for TokenGenerator: records how it was built."""

    built: ClassVar[list[tuple[Any, Any]]] = []
    lazy_flags: ClassVar[list[bool]] = []

    def __init__(self, model: Any, options: Any, *, lazy: bool = False) -> None:
        super().__init__([Script.harmony("Hi.")])
        self.options = options
        self.lazy = lazy
        RecordingGenerator.built.append((model, options))
        RecordingGenerator.lazy_flags.append(lazy)

    def close(self) -> None:
        self.closed = True


def test_generation_flags_reach_the_token_generator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlx_harmony.generate

    monkeypatch.setattr(mlx_harmony.generate, "TokenGenerator", RecordingGenerator)
    RecordingGenerator.built.clear()
    argv = [
        "--model",
        str(tmp_path),
        "--max-kv-size",
        "256",
        "--mlock",
        "--loop-detection",
        "full",
        "--python",
    ]
    launch = launch_for(argv)
    closers: list[Any] = []
    backend = make_backend(launch, locate_model(launch), on_close=closers.append)
    assert isinstance(backend, LocalBackend)
    [(model, options)] = RecordingGenerator.built
    assert model == tmp_path
    from mlx_harmony.generate import GeneratorOptions

    assert options == GeneratorOptions(max_kv_size=256, mlock=True, loop_detection="full")
    assert backend.tools is not None
    assert backend.tools.handles("python")
    for close in closers:
        close()
    assert backend.generator.closed


def test_lazy_in_the_prompt_config_reaches_the_model_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_json: Any
) -> None:
    import mlx_harmony.generate

    monkeypatch.setattr(mlx_harmony.generate, "TokenGenerator", RecordingGenerator)
    for lazy in (False, True):
        RecordingGenerator.lazy_flags.clear()
        config = write_json("cfg.json", {"lazy": lazy})
        launch = launch_for(["--model", str(tmp_path), "--prompt-config", str(config)])
        closers: list[Any] = []
        make_backend(launch, locate_model(launch), on_close=closers.append)
        assert RecordingGenerator.lazy_flags == [lazy]
        for close in closers:
            close()


def test_performance_mode_builds_the_generator_with_the_perf_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_json: Any
) -> None:
    import mlx_harmony.generate

    monkeypatch.setattr(mlx_harmony.generate, "TokenGenerator", RecordingGenerator)
    RecordingGenerator.built.clear()
    config = write_json("c.json", {"perf_max_kv_size": 128, "perf_loop_detection": "off"})
    launch = launch_for(
        ["--model", str(tmp_path), "--prompt-config", str(config), "--performance-mode"]
    )
    make_backend(launch, locate_model(launch), on_close=lambda _: None)
    [(_, options)] = RecordingGenerator.built
    assert options.max_kv_size == 128
    assert options.loop_detection == "off"


def test_tool_flags_build_the_registry() -> None:
    assert make_tools(launch_for([])) is None
    tools = make_tools(launch_for(["--browser", "--apply-patch"]))
    assert tools is not None
    try:
        assert tools.handles("browser.open")
        assert tools.handles("functions.apply_patch")
        assert not tools.handles("python")
    finally:
        tools.close()


def test_the_python_tool_runs_in_a_chat(tmp_path: Path) -> None:
    generator = ScriptedGenerator(
        [
            Script.harmony(
                call=("python", "print(6 * 7)"), call_channel="analysis", constrain=None
            ),
            Script.harmony("The answer is 42."),
        ]
    )

    def backend(launch: Any) -> LocalBackend:
        return LocalBackend(generator, tools=make_tools(launch))

    chat_file = tmp_path / "chat.json"
    run = run_chat(
        ["--python", "--chat", str(chat_file)], "Compute" + ENTER + QUIT, backend=backend
    )
    assert "⚙ python: print(6 * 7)" in run.screen
    assert "↳ 42" in run.screen
    assert "The answer is 42." in run.screen
    log = load_chat(chat_file)
    assert log.header.tools["python"] is True
    assert [m.role for m in log.messages] == ["user", "assistant", "tool", "assistant"]


def test_debug_flags_print_and_write_each_generation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def backend(launch: Any) -> LocalBackend:
        generator = ScriptedGenerator([Script.harmony("Hi.", analysis="Say hi.")])
        return LocalBackend(generator, debug=debug_options(launch.args))

    folder = tmp_path / "debug"
    argv = ["--debug", "--debug-tokens", "both", "--debug-file", str(folder)]
    run_chat(argv, "Hello" + ENTER + QUIT, backend=backend)
    err = capsys.readouterr().err
    assert "<|start|>user<|message|>Hello<|end|>" in err  # the raw prompt
    assert "[debug] prompt token ids: [" in err
    assert "[debug] response token ids: [" in err
    [attempt] = sorted(folder.iterdir())
    assert attempt.name == "001-attempt-1"
    assert json.loads((attempt / "parse.json").read_text())["final"] == "Hi."
    assert debug_options(parse_args(build_chat_parser(), [])) is None


class _OpenAIStub(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible server: one model, a streamed reply with reasoning."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, value: Any) -> None:
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._json({"object": "list", "data": [{"id": "stub-model", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/tokenize"):
            self._json({"prompt_tokens": 12, "max_context_tokens": 4096, "margin": 512})
            return
        _OpenAIStub.requests.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        deltas = [
            {"reasoning": "Thinking remotely."},
            {"content": "Hello from "},
            {"content": "afar."},
        ]
        for delta in deltas:
            chunk = {"choices": [{"index": 0, "delta": delta}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        end = {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        }
        self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())


@pytest.fixture
def stub_server() -> Any:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _OpenAIStub.requests.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_server_flag_chats_through_the_api_client(stub_server: str, tmp_path: Path) -> None:
    chat_file = tmp_path / "chat.json"
    keys = "Hi there" + ENTER + QUIT
    argv = ["--server", stub_server, "--temperature", "0.4", "--chat", str(chat_file)]
    run = run_chat(
        argv,
        keys,
        backend=lambda launch: make_backend(launch, locate_model(launch), on_close=lambda _: None),
    )
    assert run.status == 0, run.screen
    assert "Thinking remotely." in run.screen
    assert "Hello from afar." in run.screen
    [body] = _OpenAIStub.requests
    assert body["messages"][-1] == {"role": "user", "content": "Hi there"}
    assert body["temperature"] == 0.4
    assert "model" not in body
    assert "context 12/4096 tokens" in run.session.toolbar()  # the server counted it
    assert [m.content for m in load_chat(chat_file).messages] == ["Hi there", "Hello from afar."]
    # --model picks one of the server's models; an unknown one is refused
    launch = launch_for(["--server", stub_server, "--model", "nope"])
    with pytest.raises(CliError, match="has no model 'nope'; it serves stub-model"):
        make_backend(launch, locate_model(launch), on_close=lambda _: None)


def test_a_server_that_does_not_answer_is_a_clear_error(unused_port: int) -> None:
    launch = launch_for(["--server", f"http://127.0.0.1:{unused_port}"])
    with pytest.raises(CliError, match=r"does not answer.*is it running"):
        make_backend(launch, locate_model(launch), on_close=lambda _: None)


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
