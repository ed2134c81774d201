"""Where mlx-harmony keeps what it builds: `MLX_HARMONY_HOME`, else ~/.cache/mlx-harmony."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["mlx_harmony_home"]


def mlx_harmony_home() -> Path:
    """The cache folder, read at call time so tests can point it elsewhere."""
    env = os.environ.get("MLX_HARMONY_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mlx-harmony"
