"""``mlx-harmony-client``: the chat against a running server (mlx-harmony 0.4's client).

The same as ``mlx-harmony-chat --server URL``; without ``--server`` the URL is
``$MLX_HARMONY_SERVER``, else ``http://127.0.0.1:8000`` (the server's default address).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .chat import main as chat_main

__all__ = ["DEFAULT_SERVER", "SERVER_ENV", "client_argv", "main"]

DEFAULT_SERVER = "http://127.0.0.1:8000"
SERVER_ENV = "MLX_HARMONY_SERVER"


def client_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with ``--server URL`` added when it names no server."""
    args = list(argv)
    if any(a == "--server" or a.startswith("--server=") for a in args):
        return args
    return ["--server", os.environ.get(SERVER_ENV) or DEFAULT_SERVER, *args]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chat against the server; exit status as ``mlx-harmony-chat``."""
    return chat_main(client_argv(sys.argv[1:] if argv is None else argv))
