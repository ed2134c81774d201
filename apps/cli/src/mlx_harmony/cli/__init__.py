"""The mlx-harmony chat CLI and one-shot tools.

Console scripts: ``mlx-harmony-chat`` (`mlx_harmony.cli.chat.main`), ``mlx-harmony-generate``
(`mlx_harmony.cli.generate.main`) and ``mlx-harmony-convert-dialogue``
(`mlx_harmony.cli.dialogue.main`). Importing this package is cheap: the commands import what
they need when they run.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("mlx-harmony-cli")
except _PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU runs), not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
