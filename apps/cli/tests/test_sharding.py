"""The chat and the one-shot command know when a launcher started them as one of several
ranks; started alone they go on without importing MLX for it."""

from __future__ import annotations

import sys

import pytest

from mlx_harmony.cli.sharding import several_ranks_error


def test_no_launcher_no_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert several_ranks_error("mlx-harmony-chat") is None


def test_one_rank_under_a_launcher_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # a group of one: nothing to shard
    assert several_ranks_error("mlx-harmony-generate") is None
    assert "mlx.core" in sys.modules
