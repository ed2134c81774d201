"""Model loading, the generation loop, KV and prompt cache for MLX models."""

from importlib.metadata import version as _version

__version__ = _version("mlx-harmony-generate")

__all__ = ["__version__"]
