"""Prompt config, chat turns with retries, tools and chat commands."""

from importlib.metadata import version as _version

__version__ = _version("mlx-harmony-chat-controller")

__all__ = ["__version__"]
