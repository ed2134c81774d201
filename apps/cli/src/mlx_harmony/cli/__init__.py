"""The mlx-harmony chat CLI and one-shot tools."""

from importlib.metadata import version as _version

__version__ = _version("mlx-harmony-cli")

__all__ = ["__version__"]
