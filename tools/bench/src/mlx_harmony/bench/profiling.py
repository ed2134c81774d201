"""One target under a profiler, to find host-side overhead (Python work between tokens).

In-process targets (``local``, ``mlx-lm``) are profiled here, after loading and a warm-up,
around the prompts only, with cProfile or pyinstrument. Server targets run their server under
`mlx_harmony.bench.threadprof` (cProfile in every thread, merged: the model works on a worker
thread); the harness stops it with SIGINT, which lets it write its file. A server's profile
includes its start-up (imports, model load).
"""

from __future__ import annotations

import cProfile
import importlib.util
import io
import pstats
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .prompts import Prompt
from .runner import run_prompts
from .targets import WARMUP_PROMPT, BenchSettings, open_target

__all__ = ["PROFILERS", "has_pyinstrument", "profile_target", "render_top"]

PROFILERS = ("cprofile", "pyinstrument")


def has_pyinstrument() -> bool:
    return importlib.util.find_spec("pyinstrument") is not None


def render_top(prof_file: str | Path, *, top: int = 40) -> str:
    """The `top` functions by cumulative time, then by own time, from a ``.prof`` file."""
    text = io.StringIO()
    stats = pstats.Stats(str(prof_file), stream=text)
    stats.strip_dirs()
    text.write(f"== by cumulative time (top {top})\n")
    stats.sort_stats("cumulative").print_stats(top)
    text.write(f"\n== by own time (top {top})\n")
    stats.sort_stats("tottime").print_stats(top)
    return text.getvalue()


def profile_target(
    name: str,
    prompts: Sequence[Prompt],
    settings: BenchSettings,
    *,
    out: str | Path,
    tool: str = "cprofile",
    top: int = 40,
) -> list[Path]:
    """Run `prompts` on target `name` under `tool`; returns the files written into `out`
    (``<target>.prof`` and ``<target>-top.txt`` for cProfile, ``<target>.html`` and
    ``<target>.txt`` for pyinstrument)."""
    if tool not in PROFILERS:
        raise ValueError(f"tool must be one of {', '.join(PROFILERS)}, got {tool!r}")
    if tool == "pyinstrument" and not has_pyinstrument():
        raise ValueError(
            "pyinstrument is not installed; install mlx-harmony-bench[pyinstrument] or use "
            "--tool cprofile"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = replace(settings, out=out)
    stem = out / name
    written: list[Path] = []
    if name in ("server", "mlx-lm-server"):
        if tool != "cprofile":
            raise ValueError(
                f"{name} is profiled with cProfile in every thread (the model runs on a "
                "worker thread, which pyinstrument would miss); use --tool cprofile"
            )
        wrap = ("-m", "mlx_harmony.bench.threadprof", f"{stem}.prof")
        settings = replace(settings, server_wrap=wrap)
        with open_target(name, settings) as target:
            target.run_conversation(WARMUP_PROMPT, max_tokens=32)
            run_prompts(target, prompts, settings)
        prof = Path(f"{stem}.prof")
        if not prof.is_file():
            raise RuntimeError(
                f"the {name} process wrote no profile at {prof}; see {out / (name + '.log')}"
            )
        written.append(prof)
    else:
        with open_target(name, settings) as target:
            target.run_conversation(WARMUP_PROMPT, max_tokens=32)
            if tool == "cprofile":
                profiler = cProfile.Profile()
                profiler.enable()
                try:
                    run_prompts(target, prompts, settings)
                finally:
                    profiler.disable()
                profiler.dump_stats(f"{stem}.prof")
                written.append(Path(f"{stem}.prof"))
            else:
                # the optional `pyinstrument` extra, absent from the default environment
                from pyinstrument import Profiler  # pyright: ignore[reportMissingImports]

                pyi = Profiler()
                pyi.start()
                try:
                    run_prompts(target, prompts, settings)
                finally:
                    pyi.stop()
                Path(f"{stem}.html").write_text(pyi.output_html(), encoding="utf-8")
                Path(f"{stem}.txt").write_text(pyi.output_text(), encoding="utf-8")
                written += [Path(f"{stem}.html"), Path(f"{stem}.txt")]
    if tool == "cprofile":
        summary = Path(f"{stem}-top.txt")
        summary.write_text(render_top(f"{stem}.prof", top=top), encoding="utf-8")
        written.append(summary)
    return written
