"""For test suites: one demo model per pytest session, or a prebuilt one named in the env.

    @pytest.fixture(scope="session")
    def demo_model(tmp_path_factory):
        return demo_model_for_tests(tmp_path_factory)

Set `MLX_HARMONY_DEMO_MODEL` to a built folder (`mlx-harmony-demo-model` prints one) to skip the
build. Otherwise every fixture written like the above, in any member's tests, shares the one
build in the session's base temp folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

__all__ = ["ENV_VAR", "demo_model_for_tests"]

ENV_VAR = "MLX_HARMONY_DEMO_MODEL"


def demo_model_for_tests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model's folder: `$MLX_HARMONY_DEMO_MODEL`, else built once per session."""
    from .build import ensure_demo_model, read_build_record

    given = os.environ.get(ENV_VAR)
    if given:
        folder = Path(given).expanduser()
        if read_build_record(folder) is None:
            raise FileNotFoundError(
                f"{ENV_VAR}={given!r} is not a built demo model (no build record there); "
                "run `mlx-harmony-demo-model` and point the variable at the folder it prints, "
                "or unset it"
            )
        return folder
    home = Path(tmp_path_factory.getbasetemp()) / "mlx-harmony-home"
    return ensure_demo_model(home=home, progress=False)
