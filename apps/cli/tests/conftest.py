"""Keep every test out of the user's folders."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PREBUILT_DEMO = os.environ.get("MLX_HARMONY_DEMO_MODEL")  # read before the autouse stand-in


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the input history and any build out of the user's folders, and let "no model"
    find a stand-in demo model folder (fast tests never load it: they use a fake backend)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("MLX_HARMONY_HOME", str(home))
    monkeypatch.delenv("MLX_HARMONY_PROFILES", raising=False)
    if not os.environ.get("MLX_HARMONY_DEMO_MODEL"):
        demo = tmp_path_factory.mktemp("demo")
        (demo / "config.json").write_text(json.dumps({"model_type": "gpt_oss"}))
        monkeypatch.setenv("MLX_HARMONY_DEMO_MODEL", str(demo))


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained demo model for the real-model tests: $MLX_HARMONY_DEMO_MODEL as it was
    before the stand-in, else the one build every member's tests share."""
    from mlx_harmony.demo_model import demo_model_for_tests

    with pytest.MonkeyPatch.context() as patch:  # not the fast tests' stand-in folder
        if PREBUILT_DEMO:
            patch.setenv("MLX_HARMONY_DEMO_MODEL", PREBUILT_DEMO)
        else:
            patch.delenv("MLX_HARMONY_DEMO_MODEL", raising=False)
        return Path(demo_model_for_tests(tmp_path_factory))


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str, Any], Path]:
    """Write a JSON file in the test's folder."""

    def write(name: str, value: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(value), encoding="utf-8")
        return path

    return write
