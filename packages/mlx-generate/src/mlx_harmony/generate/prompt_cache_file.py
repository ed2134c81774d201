"""Prompt caches saved to files: compute a long prompt once, reuse it across runs.

A file is mlx-lm's `save_prompt_cache` format (a safetensors file of the layers' states, loadable
by `mlx_lm.models.cache.load_prompt_cache`), with our metadata: the format version, who it is
for (a fingerprint of the model and one of the tokenizer), the prompt tokens the caches hold,
whether the last write was a single token, the KV quantization, and the sliding-window
checkpoints (snapshots of the rotating layers at message boundaries, stored after the layers).
A file made for another model, tokenizer or adapter is refused before anything is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

from .cache import PromptCache
from .loading import LoadedModel
from .prefill import Snapshots, prefill

__all__ = [
    "FORMAT_VERSION",
    "ModelIdentity",
    "PromptCacheFileError",
    "SavedPromptCache",
    "compute_prompt_cache",
    "load_prompt_cache_file",
    "model_identity",
    "read_prompt_cache",
    "save_prompt_cache_file",
    "write_prompt_cache",
]

FORMAT_VERSION = 1
_FORMAT_KEY = "mlx_harmony_prompt_cache"
_SAMPLE = 1 << 20  # bytes hashed from each end of each weight file


class _Digest(Protocol):
    """What `_file_sample` needs of a hashlib object."""

    def update(self, data: bytes, /) -> None: ...


_identities: weakref.WeakKeyDictionary[LoadedModel, ModelIdentity] = weakref.WeakKeyDictionary()


class PromptCacheFileError(ValueError):
    """A prompt-cache file cannot be used: the message names the file and why."""


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What a cache depends on. `model` hashes config.json, the weight files' names, sizes and
    first and last MiB, and the adapter weights; `tokenizer` hashes the vocabulary."""

    model_type: str
    model: str
    tokenizer: str
    vocab_size: int


def _file_sample(path: Path, digest: _Digest) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        digest.update(f.read(_SAMPLE))
        if size > _SAMPLE:
            f.seek(max(_SAMPLE, size - _SAMPLE))
            digest.update(f.read())


def model_identity(loaded: LoadedModel) -> ModelIdentity:
    """The fingerprints a saved cache is checked against (computed once per `LoadedModel`)."""
    cached = _identities.get(loaded)
    if cached is not None:
        return cached
    digest = hashlib.sha256(json.dumps(loaded.config, sort_keys=True, default=str).encode())
    for weights in sorted(loaded.path.glob("model*.safetensors")):
        _file_sample(weights, digest)
    if loaded.adapter_path is not None:
        digest.update((loaded.adapter_path / "adapter_config.json").read_bytes())
        digest.update(
            hashlib.sha256((loaded.adapter_path / "adapters.safetensors").read_bytes()).digest()
        )
    tokenizer = loaded.tokenizer
    vocab: dict[str, int] = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    tok_digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode())
    identity = ModelIdentity(
        model_type=loaded.model_type,
        model=digest.hexdigest(),
        tokenizer=tok_digest.hexdigest(),
        vocab_size=len(vocab),
    )
    _identities[loaded] = identity
    return identity


@dataclass(slots=True)
class SavedPromptCache:
    """A prompt cache read from a file: `caches` hold exactly `tokens`."""

    tokens: list[int]
    caches: list[Any]
    single_tail: bool
    kv_bits: int | None = None
    kv_group_size: int = 64
    checkpoints: Snapshots = field(default_factory=dict)
    """Rotating-layer snapshots at message boundaries: length -> {layer index: cache}."""


def save_prompt_cache_file(
    path: str | Path,
    *,
    loaded: LoadedModel,
    tokens: Sequence[int],
    caches: Sequence[Any],
    single_tail: bool,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    checkpoints: Snapshots | None = None,
) -> Path:
    """Write `caches` (holding exactly `tokens`) to `path`, atomically (a temporary file in the
    same folder, then a rename). The name must end in .safetensors (mlx-lm's format)."""
    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise PromptCacheFileError(
            f"prompt cache file {str(path)!r} must end in .safetensors (mlx-lm's format)"
        )
    if not path.parent.is_dir():
        raise PromptCacheFileError(f"folder {str(path.parent)!r} for {path.name} does not exist")
    identity = model_identity(loaded)
    layers = list(caches)
    layout: list[list[Any]] = []
    for length, snaps in sorted((checkpoints or {}).items()):
        if not 0 < length <= len(tokens):
            raise ValueError(f"checkpoint at {length} is outside the {len(tokens)} tokens")
        indices = sorted(snaps)
        layout.append([length, indices, len(layers)])
        layers += [snaps[i] for i in indices]
    metadata = {
        _FORMAT_KEY: str(FORMAT_VERSION),
        "model_type": identity.model_type,
        "model_fingerprint": identity.model,
        "tokenizer_fingerprint": identity.tokenizer,
        "vocab_size": str(identity.vocab_size),
        "tokens": json.dumps([int(t) for t in tokens]),
        "num_layers": str(len(caches)),
        "single_tail": "1" if single_tail else "0",
        "kv_bits": "" if kv_bits is None else str(kv_bits),
        "kv_group_size": str(kv_group_size),
        "checkpoints": json.dumps(layout),
    }
    temp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp.safetensors")
    try:
        save_prompt_cache(str(temp), layers, metadata)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def _refuse(path: Path, why: str) -> PromptCacheFileError:
    return PromptCacheFileError(f"prompt cache file {path} {why}")


def load_prompt_cache_file(path: str | Path, *, loaded: LoadedModel) -> SavedPromptCache:
    """Read a file written by `save_prompt_cache_file`, refusing one made for another model,
    tokenizer or format version (a `PromptCacheFileError` that says which)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise _refuse(
            path, "does not exist; write it first (compute_prompt_cache / write_prompt_cache)"
        )
    try:
        layers, metadata = load_prompt_cache(str(path), return_metadata=True)
    except Exception as e:  # a truncated or foreign file: mlx and mlx-lm raise many kinds
        raise _refuse(path, f"is not a readable mlx-lm prompt cache: {e}") from e
    version = metadata.get(_FORMAT_KEY)
    if version is None:
        raise _refuse(
            path,
            "has no mlx-harmony metadata (written by mlx_lm.cache_prompt?); it does not say which "
            "model and tokens it holds, so recompute it with this package",
        )
    if version != str(FORMAT_VERSION):
        raise _refuse(path, f"has format version {version}; this package reads {FORMAT_VERSION}")
    identity = model_identity(loaded)
    if (
        metadata.get("model_type") != identity.model_type
        or metadata.get("model_fingerprint") != identity.model
    ):
        raise _refuse(
            path,
            f"was made for another model (type {metadata.get('model_type')!r}, fingerprint "
            f"{metadata.get('model_fingerprint', '')[:12]}; this is {identity.model_type!r}, "
            f"{identity.model[:12]} at {loaded.path}); recompute it for this model",
        )
    if metadata.get("tokenizer_fingerprint") != identity.tokenizer:
        raise _refuse(
            path,
            f"was made with another tokenizer (vocabulary of {metadata.get('vocab_size')} "
            f"tokens, fingerprint {metadata.get('tokenizer_fingerprint', '')[:12]}; this one has "
            f"{identity.vocab_size}, {identity.tokenizer[:12]}); recompute it",
        )
    try:
        tokens = [int(t) for t in json.loads(metadata["tokens"])]
        num_layers = int(metadata["num_layers"])
        layout = json.loads(metadata["checkpoints"])
        kv_bits = int(metadata["kv_bits"]) if metadata["kv_bits"] else None
        kv_group_size = int(metadata["kv_group_size"])
        single_tail = metadata["single_tail"] == "1"
    except (KeyError, ValueError, TypeError) as e:
        raise _refuse(path, f"has damaged metadata ({e!r}); recompute it") from e
    checkpoints: Snapshots = {
        int(length): {int(i): layers[first + k] for k, i in enumerate(indices)}
        for length, indices, first in layout
    }
    return SavedPromptCache(
        tokens=tokens,
        caches=layers[:num_layers],
        single_tail=single_tail,
        kv_bits=kv_bits,
        kv_group_size=kv_group_size,
        checkpoints=checkpoints,
    )


def compute_prompt_cache(
    loaded: LoadedModel,
    prompt: Sequence[int],
    *,
    prefill_step_size: int = 2048,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    quantized_kv_start: int = 0,
    checkpoints: Sequence[int] = (),
) -> tuple[PromptCache, Snapshots]:
    """The caches of `prompt`, prefilled as the generation loop prefills (chunks, then the last
    token alone), and the sliding-window snapshots at `checkpoints` (token offsets, e.g.
    `harmony_message_boundaries(prompt)`)."""
    if len(prompt) < 1:
        raise ValueError("prompt must hold at least one token")
    cache = PromptCache(
        loaded.model,
        kv_bits=kv_bits,
        kv_group_size=kv_group_size,
        quantized_kv_start=quantized_kv_start,
    )
    options: dict[str, Any] = {
        "prefill_step_size": prefill_step_size,
        "kv_bits": kv_bits,
        "kv_group_size": kv_group_size,
        "quantized_kv_start": quantized_kv_start,
    }
    head = list(prompt[:-1])
    snapshots = prefill(loaded.model, cache.caches, head, checkpoints=checkpoints, **options)
    prefill(loaded.model, cache.caches, list(prompt[-1:]), start=len(head), **options)
    cache.restore(list(prompt), cache.caches, single_tail=True)
    return cache, snapshots


def write_prompt_cache(
    path: str | Path,
    loaded: LoadedModel,
    prompt: Sequence[int],
    *,
    prefill_step_size: int = 2048,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    quantized_kv_start: int = 0,
    checkpoints: Sequence[int] = (),
) -> Path:
    """Compute `prompt`'s cache and save it to `path` (what `mlx-harmony-cache-prompt` runs)."""
    cache, snapshots = compute_prompt_cache(
        loaded,
        prompt,
        prefill_step_size=prefill_step_size,
        kv_bits=kv_bits,
        kv_group_size=kv_group_size,
        quantized_kv_start=quantized_kv_start,
        checkpoints=checkpoints,
    )
    return save_prompt_cache_file(
        path,
        loaded=loaded,
        tokens=cache.tokens,
        caches=cache.caches,
        single_tail=True,
        kv_bits=kv_bits,
        kv_group_size=kv_group_size,
        checkpoints=snapshots,
    )


def read_prompt_cache(
    path: str | Path,
    loaded: LoadedModel,
    *,
    max_kv_size: int | None = None,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    quantized_kv_start: int = 0,
) -> PromptCache:
    """A `PromptCache` holding a saved prompt (what `--prompt-cache-file` loads): a generation
    whose prompt extends the saved tokens prefills only the rest. The cache options must be
    the file's (`kv_bits`, `kv_group_size`)."""
    saved = load_prompt_cache_file(path, loaded=loaded)
    if (saved.kv_bits, saved.kv_group_size if saved.kv_bits else None) != (
        kv_bits,
        kv_group_size if kv_bits else None,
    ):
        made = f"kv_bits={saved.kv_bits}" + (
            f", kv_group_size={saved.kv_group_size}" if saved.kv_bits else ""
        )
        raise PromptCacheFileError(
            f"prompt cache file {Path(path).expanduser()} was made with {made}; "
            "generate with the same KV quantization or recompute the file"
        )
    cache = PromptCache(
        loaded.model,
        max_kv_size=max_kv_size,
        kv_bits=kv_bits,
        kv_group_size=kv_group_size,
        quantized_kv_start=quantized_kv_start,
    )
    try:
        cache.restore(
            saved.tokens,
            saved.caches,
            single_tail=saved.single_tail,
            checkpoints=saved.checkpoints,
        )
    except ValueError as e:
        raise PromptCacheFileError(f"prompt cache file {Path(path).expanduser()}: {e}") from e
    return cache
