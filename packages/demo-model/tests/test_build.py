"""The build machinery with a recipe that trains in seconds: cache, atomicity, lock, seeds."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony.demo_model import (
    BUILD_RECORD,
    DemoRecipe,
    SelfCheckError,
    build_demo_model,
    demo_model_path,
    ensure_demo_model,
    read_build_record,
)
from mlx_harmony.demo_model import build as build_module
from mlx_harmony.demo_model.cli import demo_model_main

from .conftest import QUICK_RECIPE

pytestmark = pytest.mark.slow  # each build writes a 100 MB model


def _weights(folder: Path) -> dict[str, mx.array]:
    return mx.load(str(folder / "model.safetensors"))


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path, home: Path) -> None:
    cache = home / "tokenizers"
    reports = [
        build_demo_model(
            tmp_path / name, seed=seed, progress=False, recipe=QUICK_RECIPE, cache_dir=cache
        )
        for name, seed in [("a", 5), ("b", 5), ("c", 6)]
    ]
    a, b, c = (_weights(r.folder) for r in reports)
    assert a.keys() == b.keys()
    assert all(mx.array_equal(a[k], b[k]).item() for k in a)
    assert not mx.array_equal(a["lm_head.weight"], c["lm_head.weight"]).item()
    assert reports[0].steps == QUICK_RECIPE.steps
    assert reports[0].final_loss == reports[1].final_loss


def test_second_ensure_reuses_the_cached_model(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = ensure_demo_model(home=home, progress=False, recipe=QUICK_RECIPE)
    assert folder == demo_model_path(home)
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("the cached demo model was rebuilt")

    monkeypatch.setattr(build_module, "build_demo_model", no_training)
    assert ensure_demo_model(home=home, progress=False, recipe=QUICK_RECIPE) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_other_seed_or_recipe_rebuilds(home: Path) -> None:
    folder = ensure_demo_model(home=home, progress=False, recipe=QUICK_RECIPE, seed=1)
    first = read_build_record(folder)
    ensure_demo_model(home=home, progress=False, recipe=QUICK_RECIPE, seed=2)
    assert read_build_record(folder)["seed"] == 2
    other = DemoRecipe(steps=QUICK_RECIPE.steps + 1, examples=16, batch_size=2, self_check=False)
    ensure_demo_model(home=home, progress=False, recipe=other, seed=2)
    record = read_build_record(folder)
    assert record["recipe_fingerprint"] == other.fingerprint() != first["recipe_fingerprint"]
    assert not list(folder.parent.glob(".mlx-harmony-demo.*-*"))  # no temp or old folders left


def test_a_killed_build_leaves_nothing_that_is_reused(home: Path) -> None:
    slow = "DemoRecipe(steps=100_000, examples=16, batch_size=2, self_check=False)"
    code = (
        "from pathlib import Path; "
        "from mlx_harmony.demo_model import DemoRecipe, ensure_demo_model;"
        f"ensure_demo_model(home=Path({str(home)!r}), progress=False, recipe={slow})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    models = home / "models"
    try:
        deadline = time.monotonic() + 120
        while not list(models.glob(".mlx-harmony-demo.build-*")):
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.2)
        time.sleep(1.0)
        assert proc.poll() is None, "the build ended before it could be killed"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    final = demo_model_path(home)
    assert not final.exists()
    assert list(models.glob(".mlx-harmony-demo.build-*"))  # the half-built folder is still there
    folder = ensure_demo_model(home=home, progress=False, recipe=QUICK_RECIPE)
    assert read_build_record(folder)["steps"] == QUICK_RECIPE.steps
    assert not list(models.glob(".mlx-harmony-demo.build-*"))  # cleaned by the next build


def test_a_failing_self_check_caches_nothing(home: Path) -> None:
    untrained = DemoRecipe(steps=2, examples=16, batch_size=2, self_check=True)
    with pytest.raises(SelfCheckError, match="self-checks"):
        ensure_demo_model(home=home, progress=False, recipe=untrained)
    models = home / "models"
    assert not demo_model_path(home).exists()
    assert not list(models.glob(".mlx-harmony-demo.*-*"))


def test_a_second_builder_waits_for_the_lock(home: Path) -> None:
    models = home / "models"
    done = threading.Event()
    result: list[Path] = []

    def build() -> None:
        result.append(ensure_demo_model(home=home, progress=False, recipe=QUICK_RECIPE))
        done.set()

    with build_module._build_lock(models, progress=False):
        thread = threading.Thread(target=build)
        thread.start()
        assert not done.wait(1.5), "ensure_demo_model built while another builder held the lock"
    thread.join(timeout=120)
    assert done.is_set()
    assert (result[0] / BUILD_RECORD).is_file()


def test_command_prints_the_folder(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo_model_main(["--home", str(home), "--path-only"]) == 0
    assert capsys.readouterr().out.strip() == str(demo_model_path(home))
