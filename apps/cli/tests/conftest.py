"""Keep every test out of the user's folders."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


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


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[[str, Any], Path]:
    """Write a JSON file in the test's folder."""

    def write(name: str, value: Any) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps(value), encoding="utf-8")
        return path

    return write
