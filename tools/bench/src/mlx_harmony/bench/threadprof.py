"""Run a module with every thread under cProfile; one merged ``.prof`` at exit.

    python -m mlx_harmony.bench.threadprof OUT.prof -m mlx_harmony.server --model ...

``python -m cProfile`` sees only the main thread, but a server does its model work on a worker
thread (and uvicorn serves on the main one): this profiles each thread started after it
begins, and on exit (SIGINT, SIGTERM or a normal end) merges the main thread's profile with
those of the threads that finished (a thread still running cannot be read safely).
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import signal
import sys
import threading
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "-m":
        print("usage: python -m mlx_harmony.bench.threadprof OUT.prof -m MODULE [ARGS...]")
        return 2
    out, module, rest = args[0], args[2], args[3:]
    finished: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:
        profile = cProfile.Profile()
        profile.enable()
        try:
            original_run(self)
        finally:
            profile.disable()
            with lock:
                finished.append(profile)

    threading.Thread.run = profiled_run  # type: ignore[method-assign]

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    main_profile = cProfile.Profile()
    sys.argv = [module, *rest]
    main_profile.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        main_profile.disable()
        stats = pstats.Stats(main_profile)
        with lock:
            for profile in finished:
                stats.add(profile)
        stats.dump_stats(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
