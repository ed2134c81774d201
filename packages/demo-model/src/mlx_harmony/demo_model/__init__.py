"""A tiny gpt-oss-architecture demo model built locally, and random-weight models.

`ensure_demo_model()` returns the folder of a small model with the real o200k_harmony vocabulary
that answers anything with an analysis message, a final message and `<|return|>`, and calls
`functions.get_current_time` when asked for the time. It is built once (about a minute on two
CPU cores) into `~/.cache/mlx-harmony/` (or `$MLX_HARMONY_HOME`) and loads with `mlx_lm.load`.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("mlx-harmony-demo-model")
except _PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU runs), not installed
    __version__ = "0+unknown"

from .build import (
    BUILD_RECORD,
    DEMO_MODEL_NAME,
    DEMO_SEED,
    DemoBuildReport,
    build_demo_model,
    demo_model_path,
    ensure_demo_model,
    read_build_record,
)
from .check import CHECK_CASES, CheckCase, CheckResult, SelfCheckError, check_structure
from .data import TIME_TOOL
from .paths import mlx_harmony_home
from .random_model import (
    PRESETS,
    build_random_model,
    default_dtype,
    gpt_oss_config,
    save_model,
)
from .testing import demo_model_for_tests
from .train import DEMO_RECIPE, DemoRecipe

__all__ = [
    "BUILD_RECORD",
    "CHECK_CASES",
    "DEMO_MODEL_NAME",
    "DEMO_RECIPE",
    "DEMO_SEED",
    "PRESETS",
    "TIME_TOOL",
    "CheckCase",
    "CheckResult",
    "DemoBuildReport",
    "DemoRecipe",
    "SelfCheckError",
    "__version__",
    "build_demo_model",
    "build_random_model",
    "check_structure",
    "default_dtype",
    "demo_model_for_tests",
    "demo_model_path",
    "ensure_demo_model",
    "gpt_oss_config",
    "mlx_harmony_home",
    "read_build_record",
    "save_model",
]
