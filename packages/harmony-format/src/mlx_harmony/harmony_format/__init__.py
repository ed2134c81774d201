"""Harmony prompt rendering and parsing over openai-harmony, offline."""

from importlib.metadata import version as _version

__version__ = _version("mlx-harmony-format")

__all__ = ["__version__"]
