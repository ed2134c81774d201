"""Build the demo model once per machine and reuse it: atomic, locked, keyed by its recipe.

`ensure_demo_model()` returns `<home>/models/mlx-harmony-demo`, building it first when it is
missing or was built from another recipe, package version or seed. A build goes into a hidden
temporary folder next to it and is renamed into place only after it passed its self-check, so a
killed build never leaves a folder that looks finished; a lock file keeps two processes from
building at once (the second waits, then reuses the first one's model).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from rich.console import Console

from .check import CheckResult, run_self_check
from .data import make_examples
from .paths import mlx_harmony_home
from .progress import make_progress
from .random_model import save_model
from .train import DEMO_RECIPE, DemoRecipe, train_demo_model, widen_vocab

__all__ = [
    "BUILD_RECORD",
    "DEMO_MODEL_NAME",
    "DEMO_SEED",
    "DemoBuildReport",
    "build_demo_model",
    "demo_model_path",
    "ensure_demo_model",
    "read_build_record",
]

DEMO_MODEL_NAME = "mlx-harmony-demo"
DEMO_SEED = 0
BUILD_RECORD = "mlx_harmony_demo.json"
"""Written last into a built folder: how it was built. A folder without it is not a model."""

_MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _package_version() -> str:
    from . import __version__

    return __version__


@dataclass(frozen=True)
class DemoBuildReport:
    """What a build did: where, from which seed, how long, and the self-check's generations."""

    folder: Path
    seed: int
    steps: int
    final_loss: float
    seconds: float
    checks: tuple[CheckResult, ...]


def build_demo_model(
    folder: Path,
    *,
    seed: int = DEMO_SEED,
    progress: bool = True,
    recipe: DemoRecipe = DEMO_RECIPE,
    cache_dir: Path | None = None,
) -> DemoBuildReport:
    """Train, self-check and write the demo model into `folder` (created; should be empty).

    Nothing is written before the self-check passes; `SelfCheckError` says what failed.
    `cache_dir` keeps the tokenizer.json made from the vocab (default: `<home>/tokenizers`).
    """
    start = time.perf_counter()
    folder = Path(folder)
    cache_dir = cache_dir if cache_dir is not None else mlx_harmony_home() / "tokenizers"
    with make_progress(progress) as bar:
        data = bar.add_task("Writing conversations", total=recipe.examples, note="")
        examples = make_examples(seed, recipe.examples, no_system_rate=recipe.no_system_rate)
        bar.update(data, completed=recipe.examples)

        train = bar.add_task("Training", total=recipe.steps, note="")

        def on_step(step: int, loss: float) -> None:
            bar.update(train, completed=step, note=f"loss {loss:.3f}")

        result = train_demo_model(recipe, seed=seed, on_step=on_step, examples=examples)

        steps = ["widen vocab", "self-check", "write weights", "write tokenizer"]
        save = bar.add_task("Saving", total=len(steps), note=steps[0])
        model, config = widen_vocab(result, recipe)
        bar.update(save, advance=1, note=steps[1])
        checks: tuple[CheckResult, ...] = ()
        if recipe.self_check:
            checks = run_self_check(model, result.token_ids)
        bar.update(save, advance=1, note=steps[2])
        save_model(model, config, folder, cache_dir=cache_dir)
        bar.update(save, advance=2, note="done")

    final_loss = sum(result.losses[-20:]) / len(result.losses[-20:])
    report = DemoBuildReport(
        folder, seed, recipe.steps, final_loss, time.perf_counter() - start, checks
    )
    record = {
        "name": DEMO_MODEL_NAME,
        "package_version": _package_version(),
        "recipe_fingerprint": recipe.fingerprint(),
        "recipe": dict(vars(recipe)),
        "seed": seed,
        "steps": recipe.steps,
        "final_loss": round(final_loss, 5),
        "seconds": round(report.seconds, 1),
        "mlx_version": mx.__version__,  # pyright: ignore[reportAttributeAccessIssue]  # not in the stubs
        "self_check": [{"name": c.name, "text": c.text} for c in checks],
        "trained_token_ids": list(result.token_ids),
    }
    (folder / BUILD_RECORD).write_text(json.dumps(record, indent=1))
    return report


def demo_model_path(home: Path | None = None) -> Path:
    """Where the demo model lives (built or not)."""
    return (home if home is not None else mlx_harmony_home()) / "models" / DEMO_MODEL_NAME


def read_build_record(folder: Path) -> dict[str, Any] | None:
    """The build record of a finished demo-model folder; None if there is none."""
    try:
        return json.loads((Path(folder) / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return None


def _is_current(folder: Path, seed: int, recipe: DemoRecipe) -> bool:
    record = read_build_record(folder)
    return (
        record is not None
        and record.get("recipe_fingerprint") == recipe.fingerprint()
        and record.get("package_version") == _package_version()
        and record.get("seed") == seed
        and all((folder / name).is_file() for name in _MODEL_FILES)
    )


@contextlib.contextmanager
def _build_lock(models: Path, *, progress: bool) -> Iterator[None]:
    """An exclusive lock on `<models>/.<name>.lock`, released when the process dies."""
    models.mkdir(parents=True, exist_ok=True)
    with open(models / f".{DEMO_MODEL_NAME}.lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                Console(stderr=True).print(
                    f"Another process is building the demo model in {models}; waiting for it."
                )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_demo_model(
    *,
    home: Path | None = None,
    progress: bool = True,
    seed: int = DEMO_SEED,
    recipe: DemoRecipe = DEMO_RECIPE,
    force: bool = False,
) -> Path:
    """The demo model's folder, built first if it is missing or stale (or `force`)."""
    home = Path(home).expanduser() if home is not None else mlx_harmony_home()
    final = demo_model_path(home)
    if not force and _is_current(final, seed, recipe):
        return final
    models = final.parent
    with _build_lock(models, progress=progress):
        if not force and _is_current(final, seed, recipe):
            return final  # another process built it while we waited
        for stale in models.glob(f".{DEMO_MODEL_NAME}.*-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by killed builds
        temp = models / f".{DEMO_MODEL_NAME}.build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temp.mkdir()
        try:
            build_demo_model(
                temp, seed=seed, progress=progress, recipe=recipe, cache_dir=home / "tokenizers"
            )
            if final.exists():
                old = models / f".{DEMO_MODEL_NAME}.old-{uuid.uuid4().hex[:8]}"
                final.rename(old)
                temp.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                temp.rename(final)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return final
