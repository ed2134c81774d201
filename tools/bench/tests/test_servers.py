"""Server processes are always stopped: on errors, on Ctrl-C, when they ignore signals, with
their children; a server that cannot start raises a clear error and leaves nothing behind."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from mlx_harmony.bench import (
    BenchSettings,
    HttpTarget,
    Prompt,
    ServerProcess,
    ServerStartError,
    TargetDiedError,
    free_port,
    open_target,
    port_is_free,
    run_prompts,
)


def running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait for a reaper that never comes)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_gone(server: ServerProcess, port: int) -> None:
    assert server.process is not None
    assert server.process.poll() is not None, "the server process is still running"
    assert not running(server.process.pid)
    assert port_is_free(port), f"port {port} is still taken"


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_the_server_is_stopped_when_the_block_raises(
    fake_server: Callable[..., ServerProcess], exc: BaseException
) -> None:
    server = fake_server()

    def use_then_fail() -> None:
        with server:
            assert server.alive()
            assert httpx.get(server.base_url + "/health").status_code == 200
            raise exc

    with pytest.raises(type(exc)):
        use_then_fail()
    assert_gone(server, server.port)


def test_a_server_that_exits_while_starting_raises_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"],
        port=port,
        name="broken",
        log_path=tmp_path / "broken.log",
    )
    with pytest.raises(ServerStartError, match="exited with status 3") as info, server:
        pytest.fail("the block must not run")
    assert "no model here" in str(info.value), "the error shows the end of the log"
    assert str(tmp_path / "broken.log") in str(info.value)
    assert_gone(server, port)


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_server_that_never_answers_times_out_and_is_killed(tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        port=port,
        name="silent",
        log_path=tmp_path / "silent.log",
        startup_timeout=1.0,
        stop_timeout=2.0,
    )
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=r"did not answer .* within 1 s"):
        server.start()
    assert time.monotonic() - started < 15
    assert_gone(server, port)


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_server_that_ignores_sigint_and_sigterm_is_killed(
    fake_server: Callable[..., ServerProcess],
) -> None:
    server = fake_server("--ignore-signals", stop_timeout=1.0)
    started = time.monotonic()
    with server:
        assert server.alive()
    assert server.process is not None
    assert server.process.returncode == -9, "only SIGKILL could stop it"
    assert time.monotonic() - started < 8
    assert_gone(server, server.port)


def test_the_servers_children_are_stopped_too(
    fake_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = fake_server("--spawn-child")
    with server:
        log = (tmp_path / "fake-server.log").read_text()
        child = int(log.split("child ")[1].split()[0])
        assert running(child)
    assert not running(child)
    assert_gone(server, server.port)


def test_stop_twice_and_after_the_process_died_is_harmless(
    fake_server: Callable[..., ServerProcess],
) -> None:
    server = fake_server()
    server.start()
    assert server.process is not None
    server.process.kill()
    server.process.wait(10)
    assert server.stop() == -9
    assert server.stop() == -9


def test_http_target_reads_the_stream_and_the_usage(
    fake_server: Callable[..., ServerProcess],
) -> None:
    prompt = Prompt(id="m-1", category="multi-turn", turns=("first", "second"))
    with fake_server("--chunks", "6", "--delay", "0.02") as server:
        target = HttpTarget("server", server.base_url, server=server)
        records = target.run_conversation(prompt, max_tokens=16, client=2)
        target.close()
    assert [r.turn for r in records] == [0, 1]
    first, second = records
    assert first.error is None
    assert second.error is None
    # usage: 10 prompt tokens per message; cached = 10 x (messages - 1); completion = 6 + 2
    assert (first.prompt_tokens, first.reused_prompt_tokens) == (10, 0)
    assert (second.prompt_tokens, second.reused_prompt_tokens) == (30, 20)
    assert second.context_tokens == 30
    assert first.completion_tokens == 8
    assert first.reasoning_tokens == 2
    assert first.stop_reason == "length"
    assert first.client == 2
    assert first.retries is None
    assert first.peak_memory_gb is None
    assert first.process_peak_rss_gb is not None
    assert first.process_peak_rss_gb > 0
    # 6 chunks 20 ms apart: first chunk after >= 20 ms, about 100 ms between first and last
    assert first.ttft_s is not None
    assert first.wall_s is not None
    assert 0.015 < first.ttft_s < first.wall_s
    span = 7 / first.decode_tokens_per_s  # type: ignore[operator]
    assert 0.08 < span < 1.0, span
    assert first.prefill_tokens_per_s == pytest.approx(10 / first.ttft_s)


def test_unknown_usage_details_are_null_not_zero(
    fake_server: Callable[..., ServerProcess],
) -> None:
    with fake_server("--no-details") as server:
        target = HttpTarget("mlx-lm-server", server.base_url, server=server)
        (record,) = target.run_conversation(
            Prompt(id="q", category="question", turns=("hi",)), max_tokens=8
        )
    assert record.error is None
    assert record.reused_prompt_tokens is None
    assert record.reasoning_tokens is None
    assert record.prefill_tokens_per_s is None, "unknown reuse: prefill rate unknown"
    assert record.completion_tokens == 7


def test_a_server_that_dies_mid_run_stops_the_run_and_is_cleaned_up(
    fake_server: Callable[..., ServerProcess],
) -> None:
    prompts = [Prompt(id=f"q{i}", category="question", turns=("hi",)) for i in range(6)]
    server = fake_server("--exit-after", "2")

    def run() -> None:
        with server:
            target = HttpTarget("server", server.base_url, server=server)
            run_prompts(target, prompts, BenchSettings(max_tokens=8))

    with pytest.raises(TargetDiedError, match="exited"):
        run()
    assert_gone(server, server.port)


def test_concurrent_clients_share_the_prompts(fake_server: Callable[..., ServerProcess]) -> None:
    prompts = [Prompt(id=f"q{i}", category="question", turns=("hi",)) for i in range(8)]
    with fake_server("--delay", "0.02") as server:
        target = HttpTarget("server", server.base_url, server=server)
        result = run_prompts(target, prompts, BenchSettings(max_tokens=8), concurrency=4)
        target.close()
    assert sorted(r.prompt_id for r in result.records) == sorted(p.id for p in prompts)
    assert {r.client for r in result.records} <= {0, 1, 2, 3}
    assert len({r.client for r in result.records}) > 1
    assert result.completion_tokens == 8 * 7
    assert result.aggregate_tokens_per_s == pytest.approx(56 / result.measured_s)


@pytest.mark.slow
def test_our_server_with_a_bad_model_folder_fails_cleanly(tmp_path: Path) -> None:
    (tmp_path / "not-a-model").mkdir()
    settings = BenchSettings(model=str(tmp_path / "not-a-model"), out=tmp_path, startup_timeout=180)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with (
        pytest.raises(ServerStartError, match="mlx-harmony-server exited"),
        open_target("server", settings),
    ):
        pytest.fail("the block must not run")
    after = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert [p for p in after if running(p.pid)] == []
    assert (tmp_path / "server.log").is_file()
