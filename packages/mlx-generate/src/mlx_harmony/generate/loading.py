"""Load an MLX model folder or a Hugging Face repo with mlx-lm's model classes.

We check the folder ourselves before mlx-lm reads it, so a wrong path, a half-copied folder, an
architecture mlx-lm lacks or a hub id on an offline machine each get an error that says what is
wrong and what to do, instead of a KeyError from deep inside a loader.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

__all__ = [
    "HARMONY_MODEL_TYPES",
    "LoadedModel",
    "ModelLoadError",
    "is_supported_model_type",
    "load_model",
    "resolve_model_path",
]

HARMONY_MODEL_TYPES = frozenset({"gpt_oss"})
"""Model types that speak Harmony; every other type uses its tokenizer's chat template."""

# What mlx-lm fetches for a model (mlx_lm.utils.DEFAULT_ALLOW_PATTERNS).
_ALLOW_PATTERNS = [
    "*.json",
    "model*.safetensors",
    "*.py",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
]
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelLoadError(Exception):
    """A model could not be loaded; the message names the path or repo and the fix."""


@dataclass(eq=False)
class LoadedModel:
    """A model with its tokenizer and config, and what kind of prompts it needs."""

    model: nn.Module
    tokenizer: Any
    """mlx-lm's `TokenizerWrapper`: encode, decode, `eos_token_ids`, `apply_chat_template`."""
    config: dict[str, Any]
    model_type: str
    path: Path
    adapter_path: Path | None = None
    """The mlx-lm adapter folder applied on top of the weights, if any."""
    is_harmony: bool = field(init=False)
    _token_bytes: list[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.is_harmony = self.model_type in HARMONY_MODEL_TYPES

    def apply_chat_template(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True, **kwargs: Any
    ) -> list[int]:
        """Prompt tokens from the tokenizer's own chat template (the path for non-Harmony
        models; Harmony prompts come from mlx_harmony.harmony_format)."""
        if not getattr(self.tokenizer, "has_chat_template", True):
            raise ValueError(
                f"the tokenizer of {self.path} has no chat template; pass prompt tokens instead"
            )
        return list(
            self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=True, **kwargs
            )
        )

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The tokenizer's end-of-sequence ids (from generation_config.json when present)."""
        if self.tokenizer is None:
            return frozenset()
        return frozenset(self.tokenizer.eos_token_ids)


def _remapped_model_type(config: dict[str, Any]) -> str:
    from mlx_lm.utils import MODEL_ARCHITECTURE_REMAPPING, MODEL_REMAPPING

    model_type: str = config["model_type"]
    architectures = config.get("architectures") or ()
    if isinstance(architectures, str):
        architectures = (architectures,)
    for architecture in architectures:
        remapped = MODEL_ARCHITECTURE_REMAPPING.get((model_type, architecture))
        if remapped is not None:
            return remapped
    return MODEL_REMAPPING.get(model_type, model_type)


def is_supported_model_type(model_type: str) -> bool:
    """Whether the installed mlx-lm has a model module for `model_type`."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", model_type):
        return False
    resolved = _remapped_model_type({"model_type": model_type})
    return importlib.util.find_spec(f"mlx_lm.models.{resolved}") is not None


def _download(repo_id: str, *, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_ALLOW_PATTERNS))
    except GatedRepoError as e:
        raise ModelLoadError(
            f"Hugging Face repo {repo_id!r} is gated: accept its license on huggingface.co and "
            "log in with `hf auth login`, or pass a local model folder"
        ) from e
    except RevisionNotFoundError as e:
        raise ModelLoadError(
            f"Hugging Face repo {repo_id!r} has no revision {revision!r}; "
            "pass an existing branch, tag or commit"
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelLoadError(
            f"Hugging Face repo {repo_id!r} does not exist (or is private); check the id, "
            "or pass a local model folder"
        ) from e
    except LocalEntryNotFoundError as e:
        raise ModelLoadError(
            f"cannot download Hugging Face repo {repo_id!r}: this machine is offline (or "
            "HF_HUB_OFFLINE is set) and the repo is not in the local Hugging Face cache. "
            "Pass a local model folder, or download it once while online and then set "
            "HF_HUB_OFFLINE=1 to use the cached copy"
        ) from e


def resolve_model_path(path_or_repo: str | Path, *, revision: str | None = None) -> Path:
    """A local folder as is, or the local snapshot of a hub repo (downloaded with its progress
    bar when it is not cached yet)."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{path} is a file; pass the model folder that holds config.json and the weights"
            )
        return path
    text = str(path_or_repo)
    if isinstance(path_or_repo, str) and _HUB_ID.fullmatch(text) and not text.startswith("."):
        return _download(text, revision=revision)
    raise ModelLoadError(
        f"model folder {text!r} does not exist; pass an existing MLX model folder or a Hugging "
        "Face repo id such as 'mlx-community/gpt-oss-20b-MXFP4-Q8'"
    )


def _read_config(folder: Path) -> dict[str, Any]:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"{folder} is not an MLX model folder: config.json is missing. Pass the folder that "
            "holds config.json, model*.safetensors and the tokenizer files"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{config_file} is not valid JSON: {e}") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelLoadError(
            f"{config_file} has no model_type; it is not a Hugging Face model config"
        )
    return config


def _check_folder(folder: Path) -> tuple[dict[str, Any], str]:
    config = _read_config(folder)
    model_type = config["model_type"]
    if not is_supported_model_type(model_type):
        from mlx_lm import __version__ as mlx_lm_version

        raise ModelLoadError(
            f"model type {model_type!r} ({folder}) is not supported by the installed mlx-lm "
            f"{mlx_lm_version}: mlx_lm.models has no module for it. Upgrade mlx-lm "
            "(`pip install -U mlx-lm`) or pick a model of a supported type"
        )
    if not any(folder.glob("model*.safetensors")):
        raise ModelLoadError(
            f"{folder} has no weights: model*.safetensors is missing (found config.json). "
            "Finish the download or conversion (mlx_lm.convert) and try again"
        )
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"{folder} has no tokenizer: tokenizer.json is missing (nor tokenizer.model). "
            "Copy the tokenizer files of the original model into the folder"
        )
    return config, model_type


def _cast_for_cpu(model: nn.Module) -> None:
    """MLX's CPU GatherMM (gpt-oss' experts) runs only in float32: widen half-precision."""

    def widen(x: object) -> object:
        if isinstance(x, mx.array) and x.dtype in (mx.bfloat16, mx.float16):
            return x.astype(mx.float32)
        return x

    model.update(tree_map(widen, model.parameters()))


_ADAPTER_TYPES = ("lora", "dora", "full")


def _check_adapter_folder(adapter_path: str | Path) -> Path:
    """An mlx-lm adapter folder (what `mlx_lm.lora` writes): adapter_config.json and
    adapters.safetensors, checked before mlx-lm reads them."""
    folder = Path(adapter_path).expanduser()
    if not folder.exists():
        raise ModelLoadError(
            f"adapter folder {str(adapter_path)!r} does not exist; pass the folder that "
            "mlx_lm.lora wrote (adapter_config.json and adapters.safetensors)"
        )
    if not folder.is_dir():
        raise ModelLoadError(
            f"adapter path {folder} is a file; pass its folder, which holds adapter_config.json "
            "and adapters.safetensors"
        )
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"{folder} is not an mlx-lm adapter folder: adapter_config.json is missing"
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{config_file} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_file} must hold a JSON object, got {type(config).__name__}")
    kind = config.get("fine_tune_type", "lora")
    if kind not in _ADAPTER_TYPES:
        raise ModelLoadError(
            f"{config_file}: fine_tune_type {kind!r} is not one of {list(_ADAPTER_TYPES)}"
        )
    if kind != "full":
        missing = [key for key in ("num_layers", "lora_parameters") if key not in config]
        params = config.get("lora_parameters")
        if isinstance(params, dict):
            missing += [
                f"lora_parameters.{k}" for k in ("rank", "scale", "dropout") if k not in params
            ]
        elif "lora_parameters" not in missing:
            missing.append("lora_parameters (an object)")
        if missing:
            raise ModelLoadError(
                f"{config_file} is missing {', '.join(missing)}; it is not a {kind} adapter "
                "config as mlx_lm.lora writes it"
            )
    if not (folder / "adapters.safetensors").is_file():
        raise ModelLoadError(f"{folder} has no adapter weights: adapters.safetensors is missing")
    return folder


def _apply_adapters(model: nn.Module, folder: Path) -> None:
    from mlx_lm.tuner.utils import load_adapters

    try:
        load_adapters(model, str(folder))
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise ModelLoadError(f"could not apply the adapters in {folder} to the model: {e}") from e
    model.eval()


def _materialize(model: nn.Module, *, weights: bool) -> None:
    """Evaluate the model's private arrays (gpt-oss's YaRN rope frequencies, made lazily in
    ``__init__``) and, with `weights`, its parameters. An array left lazy belongs to the
    loading thread's stream: an engine thread that runs the model first would fail with
    "There is no Stream(cpu, 0) in current thread"."""
    private = [
        value
        for module in model.modules()
        for key, value in module.items()
        if key.startswith("_") and isinstance(value, mx.array)
    ]
    mx.eval(model.parameters() if weights else [], private)


def load_model(
    path_or_repo: str | Path,
    *,
    lazy: bool = False,
    revision: str | None = None,
    tokenizer_config: dict[str, Any] | None = None,
    model_config: dict[str, Any] | None = None,
    adapter_path: str | Path | None = None,
) -> LoadedModel:
    """Load a model folder or a Hugging Face repo id with mlx-lm's classes and weights.

    ``lazy=True`` maps the weights without reading them (they load on first use); the default
    reads them now so the first token is not slowed by disk reads. Lazy weights belong to the
    loading thread's stream: load lazily in the thread that runs the model. ``adapter_path``
    is a local mlx-lm adapter folder (LoRA, DoRA or full fine-tune, as `mlx_lm.lora` writes
    it), applied with mlx-lm's `load_adapters`, as `mlx_lm.load(adapter_path=...)` does.
    """
    from mlx_lm.utils import load_model as _mlx_load_model
    from mlx_lm.utils import load_tokenizer

    folder = resolve_model_path(path_or_repo, revision=revision)
    _, model_type = _check_folder(folder)
    adapters = _check_adapter_folder(adapter_path) if adapter_path is not None else None
    try:
        model, config = _mlx_load_model(folder, lazy=True, model_config=model_config)
    except (ValueError, FileNotFoundError) as e:
        raise ModelLoadError(f"mlx-lm could not build the model in {folder}: {e}") from e
    if adapters is not None:
        _apply_adapters(model, adapters)
    if model_type in HARMONY_MODEL_TYPES and mx.default_device() == mx.cpu:
        _cast_for_cpu(model)
    _materialize(model, weights=not lazy)
    try:
        tokenizer = load_tokenizer(
            folder, tokenizer_config, eos_token_ids=config.get("eos_token_id")
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load the tokenizer in {folder}: {e}") from e
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        config=config,
        model_type=model_type,
        path=folder,
        adapter_path=adapters,
    )
