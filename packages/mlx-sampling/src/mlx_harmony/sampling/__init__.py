"""Samplers and logits processors on MLX arrays, with a validated SamplingParams model."""

from importlib.metadata import version as _version

__version__ = _version("mlx-harmony-sampling")

__all__ = ["__version__"]
