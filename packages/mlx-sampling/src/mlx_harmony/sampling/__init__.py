"""Samplers and logits processors on MLX arrays, with a validated SamplingParams model."""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from mlx_harmony.sampling.params import SamplingParams
from mlx_harmony.sampling.processors import (
    LogitsProcessor,
    make_frequency_penalty,
    make_logit_bias,
    make_logits_processors,
    make_presence_penalty,
    make_repetition_penalty,
)
from mlx_harmony.sampling.samplers import (
    Sampler,
    apply_min_p,
    apply_top_k,
    apply_top_p,
    apply_xtc,
    greedy_sampler,
    make_sampler,
)

try:
    __version__ = _version("mlx-harmony-sampling")
except _PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU runs), not installed
    __version__ = "0+unknown"

__all__ = [
    "LogitsProcessor",
    "Sampler",
    "SamplingParams",
    "__version__",
    "apply_min_p",
    "apply_top_k",
    "apply_top_p",
    "apply_xtc",
    "greedy_sampler",
    "make_frequency_penalty",
    "make_logit_bias",
    "make_logits_processors",
    "make_presence_penalty",
    "make_repetition_penalty",
    "make_sampler",
]
