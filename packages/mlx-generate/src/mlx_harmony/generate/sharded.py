"""Load one rank's shard of a model, and check that every rank loaded the same thing.

Launched by `mlx.launch` (ring, JACCL, MPI or NCCL), each rank builds the model lazily with
mlx-lm's classes, cuts it with the model's own `shard(group)` (tensor parallel, mlx-lm's
default) or `model.model.pipeline(group)` (pipeline parallel), and only then reads the weights:
a rank materialises its part of the model, never the whole of it. This is mlx-lm's
`sharded_load` with our folder checks, error messages, CPU float32 widening and result type.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn

from .loading import (
    HARMONY_MODEL_TYPES,
    LoadedModel,
    ModelLoadError,
    _cast_for_cpu,
    _check_folder,
    resolve_model_path,
)

__all__ = [
    "FINGERPRINT_PARTS",
    "ModelMismatchError",
    "check_same_model",
    "load_sharded",
    "model_fingerprint",
]

FINGERPRINT_PARTS = ("config", "weights", "options", "versions")
"""What `check_same_model` compares across ranks, in this order."""


class ModelMismatchError(RuntimeError):
    """Ranks loaded different models or settings; the message names the ranks and the part."""


def _check_divisible(config: dict[str, Any], n: int, folder: Path) -> None:
    """gpt-oss splits attention heads, KV heads and expert widths over the ranks."""
    if config.get("model_type") != "gpt_oss":
        return
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = config.get(key)
        if isinstance(value, int) and value % n:
            raise ModelLoadError(
                f"{folder}: {key}={value} does not split over {n} ranks for tensor "
                f"parallelism; run on a number of ranks that divides it"
            )


def load_sharded(
    path_or_repo: str | Path,
    group: mx.distributed.Group | None = None,
    *,
    pipeline: bool = False,
    revision: str | None = None,
    tokenizer_config: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
) -> LoadedModel:
    """This rank's shard of a model folder or Hugging Face repo, as a `LoadedModel`.

    Tensor parallel (``model.shard(group)``) by default; ``pipeline=True`` gives each rank a
    run of layers (``model.model.pipeline(group)``; gpt-oss has no pipeline in mlx-lm). With
    a group of one rank this is `load_model`. Every rank must call it: it ends with a
    collective so that no rank starts serving before the others have loaded.
    """
    from mlx_lm.utils import load_model as _mlx_load_model
    from mlx_lm.utils import load_tokenizer

    group = group if group is not None else mx.distributed.init()
    folder = resolve_model_path(path_or_repo, revision=revision)
    config, model_type = _check_folder(folder)
    try:
        model, config = _mlx_load_model(folder, lazy=True, model_config=model_config)
    except (ValueError, FileNotFoundError) as e:
        raise ModelLoadError(f"mlx-lm could not build the model in {folder}: {e}") from e
    n = group.size()
    if n > 1 and pipeline:
        inner = getattr(model, "model", None)
        if not hasattr(inner, "pipeline"):
            raise ModelLoadError(
                f"model type {model_type!r} ({folder}) has no pipeline parallelism in the "
                "installed mlx-lm; drop --pipeline to shard it tensor parallel"
            )
        inner.pipeline(group)  # type: ignore[union-attr]
    elif n > 1:
        shard = getattr(model, "shard", None)
        if shard is None:
            raise ModelLoadError(
                f"model type {model_type!r} ({folder}) has no tensor parallelism in the "
                "installed mlx-lm (no Model.shard); try --pipeline"
            )
        _check_divisible(config, n, folder)
        shard(group)
    if model_type in HARMONY_MODEL_TYPES and mx.default_device() == mx.cpu:
        _cast_for_cpu(model)
    _materialize(model)
    try:
        tokenizer = load_tokenizer(
            folder, tokenizer_config, eos_token_ids=config.get("eos_token_id")
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load the tokenizer in {folder}: {e}") from e
    if n > 1:  # every rank has its weights before any starts the first step
        mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))
    return LoadedModel(
        model=model, tokenizer=tokenizer, config=config, model_type=model_type, path=folder
    )


def _materialize(model: nn.Module) -> None:
    """Evaluate the parameters and the private arrays too (gpt-oss's YaRN frequencies): an
    array left lazy here belongs to this thread's stream, and an engine thread that evaluates
    it later fails with "There is no Stream(cpu, 0) in current thread"."""
    arrays: list[mx.array] = [
        value
        for module in model.modules()
        for value in module.values()
        if isinstance(value, mx.array)
    ]
    mx.eval(model.parameters(), arrays)


def _safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file: names, dtypes, shapes and offsets of every
    tensor, read in microseconds where hashing the data would read the whole model."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        return f.read(size)


def model_fingerprint(loaded: LoadedModel, options: Mapping[str, object]) -> dict[str, str]:
    """Digests of what must match on every rank: the config, the weight files' headers, the
    engine options and the mlx / mlx-lm versions (`FINGERPRINT_PARTS`)."""

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    weights = hashlib.sha256()
    for file in sorted(loaded.path.glob("model*.safetensors")):
        weights.update(file.name.encode() + b"\0" + _safetensors_header(file))
    versions = {name: version(name) for name in ("mlx", "mlx-lm")}
    return {
        "config": digest(json.dumps(loaded.config, sort_keys=True, default=str).encode()),
        "weights": weights.hexdigest()[:16],
        "options": digest(json.dumps(dict(options), sort_keys=True, default=str).encode()),
        "versions": digest(json.dumps(versions, sort_keys=True).encode()),
    }


def check_same_model(
    loaded: LoadedModel,
    options: Mapping[str, object],
    group: mx.distributed.Group | None = None,
) -> None:
    """Every rank calls this after loading; raises `ModelMismatchError` on every rank when a
    rank's `model_fingerprint` differs from rank 0's, naming the rank and the part."""
    group = group if group is not None else mx.distributed.init()
    if group.size() == 1:
        return
    mine = model_fingerprint(loaded, options)
    row = bytes.fromhex("".join(mine[part] for part in FINGERPRINT_PARTS))
    gathered = mx.distributed.all_gather(
        mx.array(list(row), dtype=mx.uint8)[None], group=group, stream=mx.cpu
    )
    table = [bytes(r) for r in cast(list[list[int]], gathered.tolist())]
    width = len(row) // len(FINGERPRINT_PARTS)
    problems = []
    for rank, other in enumerate(table[1:], start=1):
        parts = [
            part
            for i, part in enumerate(FINGERPRINT_PARTS)
            if other[i * width : (i + 1) * width] != table[0][i * width : (i + 1) * width]
        ]
        if parts:
            problems.append(f"rank {rank} differs from rank 0 in {', '.join(parts)}")
    if problems:
        raise ModelMismatchError(
            "; ".join(problems) + ". Every rank must load the same model folder (same config "
            "and weight files), with the same options and the same mlx and mlx-lm versions "
            f"(this is rank {group.rank()}, model {loaded.path})"
        )
