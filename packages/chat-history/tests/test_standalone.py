"""The built wheel works alone: only pydantic and filelock (and what they need) beside it, no
MLX, no other member of the workspace."""

import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]


def _closure(name: str) -> set[str]:
    """The distributions ``name`` needs at run time in this environment (extras left out)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        try:
            requires = distribution(current).requires or []
        except PackageNotFoundError:
            continue
        seen.add(current)
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            match = re.match(r"[A-Za-z0-9._-]+", requirement)
            if match:
                todo.append(match.group(0))
    return seen


@pytest.mark.slow
def test_the_wheel_needs_only_pydantic_and_filelock(tmp_path: Path) -> None:
    uv = shutil.which("uv")
    assert uv, "uv builds the wheel; install it with `pip install uv`"
    dist = tmp_path / "dist"
    subprocess.run(
        [uv, "build", "--wheel", "--package", "mlx-harmony-chat-history", "--out-dir", str(dist)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith("METADATA"))).decode()
        scripts = zf.read(next(n for n in zf.namelist() if n.endswith("entry_points.txt")))
        zf.extractall(site)  # a pure-Python wheel unpacked is an installed package
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert requires == ["Requires-Dist: filelock>=3.12", "Requires-Dist: pydantic>=2.7"]
    assert b"mlx-harmony-migrate-chat = mlx_harmony.chat_history.cli:main" in scripts
    assert not (site / "mlx_harmony" / "__init__.py").exists()  # a namespace package

    needed = _closure("pydantic") | _closure("filelock")
    assert "pydantic-core" in needed or "pydantic_core" in needed
    for name in needed:
        for file in distribution(name).files or []:
            if ".." in file.parts:
                continue  # scripts installed outside site-packages
            source = Path(str(file.locate()))
            if source.is_file():
                (site / file).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, site / file)

    code = (
        "import importlib.util, sys\n"
        "import mlx_harmony.chat_history as ch\n"
        "log = ch.load_chat(sys.argv[1])\n"
        "log.append_user('resumed without MLX')\n"
        "assert ch.check_chat(log) == [], ch.check_chat(log)\n"
        "for name in ('mlx', 'mlx_lm', 'mlx_harmony.controller', 'mlx_harmony.harmony_format'):\n"
        "    assert importlib.util.find_spec(name) is None, name\n"
        "print(ch.__version__, len(log.messages))\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    example = ROOT / "configs" / "conversation.example.json"
    # -S: no site-packages at all, so only the unpacked wheel and pydantic can be imported
    run = subprocess.run(
        [sys.executable, "-S", "-c", code, str(example)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0.1.0", "8"]
    cli = subprocess.run(
        [sys.executable, "-S", "-m", "mlx_harmony.chat_history.cli", "--check", str(example)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"{example}: ok (v1, 7 messages)" in cli.stdout
