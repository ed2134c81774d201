import tomllib
from pathlib import Path

import mlx_harmony.tools as pkg


def test_version_comes_from_the_distribution_metadata() -> None:
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "mlx-harmony-chat-tools"
    assert pkg.__version__ == pyproject["project"]["version"]
