"""The standalone packages build into wheels that install and work with no other member."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

CHECKS = {
    "mlx-harmony-sampling": (
        "import mlx.core as mx\n"
        "from mlx_harmony.sampling import SamplingParams, make_sampler\n"
        "sampler = make_sampler(temperature=0.0)\n"
        "assert sampler(mx.array([[0.1, 3.0, 0.2]])).item() == 1\n"
        "SamplingParams(temperature=0.7, top_p=0.9)\n"
    ),
    "mlx-harmony-format": (
        "from mlx_harmony.harmony_format import render_prompt, parse_completion, Message\n"
        "tokens = render_prompt([Message.user('Hi')])\n"
        "assert len(tokens) > 5\n"
        "r = parse_completion([200005, 17196, 200008, 12194, 200002])\n"  # final, "Hi"
        "assert (r.final, r.parse_path, r.truncated) == ('Hi', 'strict', False), r\n"
    ),
    "mlx-harmony-chat-tools": (
        "from mlx_harmony.tools import ToolRegistry\n"
        "with ToolRegistry.from_flags(python=True) as tools:\n"
        "    assert tools.handles('python') and not tools.handles('functions.f')\n"
        "    assert tools.declarations().system\n"
    ),
}


def _uv(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["uv", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"uv {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("dist", sorted(CHECKS))
def test_wheel_installs_and_works_alone(dist: str, tmp_path: Path) -> None:
    out = tmp_path / "dist"
    _uv("build", "--package", dist, "--wheel", "--out-dir", str(out))
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp_path / "venv"
    _uv("venv", "--python", sys.executable, str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    _uv("pip", "install", "--python", str(python), str(wheels[0]), cwd=tmp_path)

    installed = _uv("pip", "list", "--python", str(python), cwd=tmp_path)
    members = {line.split()[0] for line in installed.splitlines() if line.startswith("mlx-harmony")}
    assert members == {dist}, f"other workspace members leaked into the venv: {members}"

    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_ENCODINGS_BASE"}
    done = subprocess.run(
        [str(python), "-c", CHECKS[dist]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
