"""An OpenAI-compatible FastAPI server for gpt-oss and other MLX models."""

from importlib.metadata import version as _version

__version__ = _version("mlx-harmony-server")

__all__ = ["__version__"]
