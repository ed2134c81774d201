"""Refuse to run under ``mlx.launch`` with several ranks: the chat and the one-shot command
load the whole model in one process. A model sharded over several machines is served by
``mlx-harmony-server`` under ``mlx.launch``; chat with it through ``--server``."""

from __future__ import annotations

import os

__all__ = ["several_ranks_error"]

_LAUNCHER_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def several_ranks_error(prog: str) -> str | None:
    """The error for `prog` started as one of several ranks, else None (no MLX import when no
    launcher started this process)."""
    if not any(name in os.environ for name in _LAUNCHER_VARIABLES):
        return None
    import mlx.core as mx

    size = mx.distributed.init().size()
    if size < 2:
        return None
    return (
        f"{prog} runs in one process and cannot shard a model over {size} ranks; serve it "
        "sharded with `mlx.launch ... -- mlx-harmony-server --model ...` and chat with it "
        f"through `{prog} --server http://HOST:8000`"
    )
