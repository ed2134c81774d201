"""An httpx client for the mlx-harmony server."""

from importlib.metadata import version as _version

__version__ = _version("mlx-harmony-api-client")

__all__ = ["__version__"]
