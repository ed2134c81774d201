import subprocess
import tomllib
import zipfile
from pathlib import Path

import pytest

import mlx_harmony.bench as pkg

ROOT = Path(__file__).parents[1]


def test_version_comes_from_the_distribution_metadata() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "mlx-harmony-bench"
    assert pkg.__version__ == pyproject["project"]["version"]
    assert pyproject["project"]["scripts"]["mlx-harmony-bench"] == "mlx_harmony.bench.cli:main"


def test_the_public_api_is_listed() -> None:
    for name in pkg.__all__:
        assert hasattr(pkg, name), name


@pytest.mark.slow
def test_the_wheel_ships_the_prompt_set_and_no_namespace_init(tmp_path: Path) -> None:
    done = subprocess.run(
        ["uv", "build", "--package", "mlx-harmony-bench", "--wheel", "--out-dir", str(tmp_path)],
        cwd=ROOT.parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mlx_harmony/bench/data/prompts.jsonl" in names
    assert "mlx_harmony/bench/py.typed" in names
    assert "mlx_harmony/__init__.py" not in names
    shipped = zipfile.ZipFile(wheel).read("mlx_harmony/bench/data/prompts.jsonl")
    assert shipped == (ROOT / "prompts.jsonl").read_bytes()
