"""The package's two small commands: build the demo model, write a random-weight model."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["demo_model_main", "random_model_main"]

_DTYPES = ("float32", "bfloat16", "float16")


def demo_model_main(argv: list[str] | None = None) -> int:
    """`mlx-harmony-demo-model`: build the demo model if needed and print its folder."""
    from .build import DEMO_SEED, demo_model_path, ensure_demo_model, read_build_record
    from .check import SelfCheckError

    parser = argparse.ArgumentParser(
        prog="mlx-harmony-demo-model",
        description="Build (once) the tiny trained gpt-oss demo model and print its folder.",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a copy is cached")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="training seed (default 0)")
    parser.add_argument(
        "--home", type=Path, help="cache folder (default $MLX_HARMONY_HOME or ~/.cache/mlx-harmony)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--path-only", action="store_true", help="print where the model lives and build nothing"
    )
    args = parser.parse_args(argv)
    if args.path_only:
        print(demo_model_path(args.home))
        return 0
    try:
        folder = ensure_demo_model(
            home=args.home, progress=not args.quiet, seed=args.seed, force=args.force
        )
    except SelfCheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record = read_build_record(folder) or {}
    if not args.quiet and record:
        print(
            f"demo model (seed {record.get('seed')}, {record.get('steps')} steps, "
            f"final loss {record.get('final_loss')}, built in {record.get('seconds')} s):",
            file=sys.stderr,
        )
    print(folder)
    return 0


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def random_model_main(argv: list[str] | None = None) -> int:
    """`mlx-harmony-random-model OUT --shape ...`: a random-weight gpt-oss folder."""
    from .random_model import PRESETS

    parser = argparse.ArgumentParser(
        prog="mlx-harmony-random-model",
        description=(
            "Write a gpt-oss model with seeded random weights and the o200k_harmony tokenizer, "
            "for speed measurements: it loads with mlx_lm.load but says nothing sensible."
        ),
    )
    parser.add_argument("out", type=Path, help="folder to write (must not hold a model yet)")
    parser.add_argument("--shape", default="tiny", help=f"one of {', '.join(sorted(PRESETS))}")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config.json field, e.g. --set num_hidden_layers=4 (JSON values)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=_DTYPES, help="default: bfloat16 on a GPU, else float32")
    parser.add_argument("--bits", type=int, choices=(4, 8), help="quantize the linear layers")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--home", type=Path, help="cache folder for the tokenizer files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    if args.shape not in PRESETS:
        parser.error(f"unknown shape {args.shape!r}; use one of {', '.join(sorted(PRESETS))}")
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = _parse_value(value)
    if (args.out / "model.safetensors").exists():
        parser.error(f"{args.out} already holds a model; pick an empty folder")
    write_random_model(
        args.out,
        shape=args.shape,
        overrides=overrides,
        seed=args.seed,
        dtype=args.dtype,
        bits=args.bits,
        group_size=args.group_size,
        home=args.home,
        progress=not args.quiet,
    )
    print(args.out)
    return 0


def write_random_model(
    out: Path,
    *,
    shape: str,
    overrides: dict[str, Any],
    seed: int,
    dtype: str | None,
    bits: int | None,
    group_size: int,
    home: Path | None,
    progress: bool,
) -> Path:
    """Build, (quantize) and save a random-weight model with a progress bar."""
    import mlx.core as mx

    from .paths import mlx_harmony_home
    from .progress import make_progress
    from .random_model import build_random_model, save_model

    home = home if home is not None else mlx_harmony_home()
    start = time.perf_counter()
    with make_progress(progress) as bar:
        task = bar.add_task(f"Random {shape}", total=2, note="building weights")
        model, config = build_random_model(
            shape,
            seed=seed,
            dtype=None if dtype is None else getattr(mx, dtype),
            quantize_bits=bits,
            group_size=group_size,
            **overrides,
        )
        bar.update(task, advance=1, note="writing")
        save_model(model, config, out, cache_dir=home / "tokenizers")
        bar.update(task, advance=1, note=f"done in {time.perf_counter() - start:.1f} s")
    return out
