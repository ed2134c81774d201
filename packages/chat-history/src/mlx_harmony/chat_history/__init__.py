"""The chat-log schema, its versions, migrations and the migration utility."""

from importlib.metadata import version as _version

__version__ = _version("mlx-harmony-chat-history")

__all__ = ["__version__"]
