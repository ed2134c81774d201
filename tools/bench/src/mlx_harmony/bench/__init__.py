"""The benchmark harness: one prompt set through every front end, records, reports, plots.

``mlx-harmony-bench run`` sends the prompts (`load_prompts`) to targets (`open_target`:
``local``, ``server``, ``mlx-lm``, ``mlx-lm-server``), one `TurnRecord` per turn;
``report`` turns run folders into markdown and PNGs (`write_report`); ``profile`` runs one
target under a profiler; ``batching`` and ``server-overhead`` sweep client counts with targets
side by side (`mlx_harmony.bench.sweep`). Servers run as `ServerProcess`es, always stopped on
the way out.
Nothing else in the workspace imports this package.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .prompts import (
    CATEGORIES,
    Prompt,
    PromptSetError,
    default_prompts_path,
    load_prompts,
    select_prompts,
)
from .records import (
    RECORD_SCHEMA,
    TARGETS,
    RunInfo,
    TurnRecord,
    read_records,
    read_run,
    write_records,
)
from .report import load_runs, render_markdown, summary_table, write_plots, write_report
from .runner import RunResult, TargetDiedError, run_interleaved, run_prompts, run_target
from .servers import ServerProcess, ServerStartError, free_port, port_is_free
from .stats import MetricSummary, TargetSummary, percentile, ratio, summarize
from .targets import BenchSettings, HttpTarget, LocalTarget, MlxLmTarget, Target, open_target

try:
    __version__ = _version("mlx-harmony-bench")
except _PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU benchmark), not installed
    __version__ = "0+unknown"

__all__ = [
    "CATEGORIES",
    "RECORD_SCHEMA",
    "TARGETS",
    "BenchSettings",
    "HttpTarget",
    "LocalTarget",
    "MetricSummary",
    "MlxLmTarget",
    "Prompt",
    "PromptSetError",
    "RunInfo",
    "RunResult",
    "ServerProcess",
    "ServerStartError",
    "Target",
    "TargetDiedError",
    "TargetSummary",
    "TurnRecord",
    "__version__",
    "default_prompts_path",
    "free_port",
    "load_prompts",
    "load_runs",
    "open_target",
    "percentile",
    "port_is_free",
    "ratio",
    "read_records",
    "read_run",
    "render_markdown",
    "run_interleaved",
    "run_prompts",
    "run_target",
    "select_prompts",
    "summarize",
    "summary_table",
    "write_plots",
    "write_records",
    "write_report",
]
