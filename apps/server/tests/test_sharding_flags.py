"""The sharding flags of a server that runs alone are refused, naming the flag and the fix."""

from __future__ import annotations

import pytest

from mlx_harmony.server.cli import main


@pytest.mark.parametrize("flags", [["--pipeline"], ["--step-timeout", "30"]])
def test_sharding_flags_need_mlx_launch(
    flags: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert f"{flags[0]} apply to a model sharded over the ranks of mlx.launch" in err
    assert "mlx.launch -n 2 -- mlx-harmony-server" in err
