"""A tiny gpt-oss-architecture demo model built locally, and random-weight models."""

from importlib.metadata import version as _version

__version__ = _version("mlx-harmony-demo-model")

__all__ = ["__version__"]
