"""Shared fixtures: synthetic records, a fake OpenAI-style streaming server, the demo model."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlx_harmony.bench import ServerProcess, free_port

FAKE_SERVER = Path(__file__).with_name("fake_openai_server.py")


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds and caches go to a temporary home, never the user's."""
    monkeypatch.setenv("MLX_HARMONY_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.delenv("MLX_HARMONY_PROFILES", raising=False)


@pytest.fixture
def fake_server(tmp_path: Path) -> Callable[..., ServerProcess]:
    """Start `fake_openai_server.py` (a real subprocess on 127.0.0.1) with the given flags."""

    def start(
        *flags: str, startup_timeout: float = 30.0, stop_timeout: float = 5.0
    ) -> ServerProcess:
        port = free_port()
        server = ServerProcess(
            [sys.executable, str(FAKE_SERVER), "--port", str(port), *flags],
            port=port,
            name="fake-server",
            ready_path="/health",
            log_path=tmp_path / "fake-server.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            startup_timeout=startup_timeout,
            stop_timeout=stop_timeout,
        )
        return server

    return start


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_harmony.demo_model.testing import demo_model_for_tests

    return demo_model_for_tests(tmp_path_factory)
