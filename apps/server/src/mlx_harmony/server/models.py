"""Which models the server can serve, by the names clients use, and how to load one.

The default model is ``--model`` or ``--profile`` (the demo model without either); clients
may also name a model folder under ``models_dir`` or a profile from ``--profiles``. Listing
order (``GET /v1/models``): the default model, the folders, then the profiles.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from mlx_harmony.controller import ConfigError, Profiles, PromptConfig

from .errors import APIError
from .protocol import ModelCard

if TYPE_CHECKING:
    from mlx_harmony.generate import BatchTokenGenerator, GeneratorOptions, TokenGenerator

__all__ = [
    "DEMO_MODEL_ID",
    "ModelEntry",
    "ModelRegistry",
    "demo_model_folder",
    "generator_options",
    "load_generator",
]

logger = logging.getLogger("mlx_harmony.server")

DEMO_MODEL_ID = "mlx-harmony-demo"
_DEMO = "<demo>"

Kind = Literal["model", "folder", "profile"]


@dataclass(frozen=True)
class ModelEntry:
    """A servable model: the name clients use, what to load, and its prompt config."""

    id: str
    model: str
    """A model folder or a Hugging Face repo id (``<demo>``: the demo model)."""
    prompt_config: PromptConfig
    prompt_config_path: str | None = None
    kind: Kind = "model"

    @property
    def is_demo(self) -> bool:
        return self.model == _DEMO

    @classmethod
    def demo(cls, prompt_config: PromptConfig, prompt_config_path: str | None = None) -> ModelEntry:
        return cls(DEMO_MODEL_ID, _DEMO, prompt_config, prompt_config_path)


def demo_model_folder() -> Path:
    """The demo model's folder: ``MLX_HARMONY_DEMO_MODEL`` when set, else the trained demo
    model of mlx-harmony-demo-model (built on first use), else a tiny random-weight gpt-oss
    (it answers nonsense, but every code path runs)."""
    env = os.environ.get("MLX_HARMONY_DEMO_MODEL")
    if env:
        return Path(env).expanduser()
    import mlx_harmony.demo_model as demo

    ensure = getattr(demo, "ensure_demo_model", None)
    if ensure is not None:
        return Path(ensure())
    from mlx_harmony.demo_model.paths import mlx_harmony_home
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    folder = mlx_harmony_home() / "random-tiny-gpt-oss"
    if not (folder / "config.json").is_file():
        model, config = build_random_model("tiny", seed=0)
        save_model(model, config, folder, cache_dir=mlx_harmony_home() / "tokenizer-cache")
    return folder


def generator_options(entry: ModelEntry) -> GeneratorOptions:
    """The generator options the server uses for `entry`: its prompt config's, with OpenAI's
    `seed` semantics (a seeded request repeats itself, whatever other clients asked before)
    unless the config sets ``reseed_each_turn`` (false chains seeds as the CLI does)."""
    options = entry.prompt_config.generator_options()
    if "reseed_each_turn" not in entry.prompt_config.model_fields_set:
        options = replace(options, reseed_each_turn=True)
    return options


def load_generator(
    entry: ModelEntry,
    *,
    max_concurrency: int = 1,
    prompt_concurrency: int | None = None,
    prompt_cache_size: int = 16,
    prompt_cache_bytes: int | None = None,
    prompt_cache_dir: str | Path | None = None,
) -> TokenGenerator | BatchTokenGenerator:
    """The generator for `entry`, set up from its prompt config: mlx-generate's
    `BatchTokenGenerator` when requests may run together, else its `TokenGenerator`.

    A rotating KV cache (``max_kv_size``), a quantized one (``kv_bits``) and speculative
    decoding (``draft_model``, ``prompt_lookup``) do not batch, so they keep the one-at-a-time
    generator (and say so in the log). `prompt_concurrency`: newcomers the batch engine
    prefills in one forward pass (None: its default). `prompt_cache_dir`: the
    batch generator's shared caches persist in a subfolder named after the entry.
    """
    from mlx_harmony.generate import BatchTokenGenerator, TokenGenerator
    from mlx_harmony.generate.batch import DEFAULT_PREFILL_BATCH_SIZE

    options = generator_options(entry)
    path: str | Path = demo_model_folder() if entry.is_demo else entry.model
    unbatched = {
        "max_kv_size": options.max_kv_size,
        "kv_bits": options.kv_bits,
        "draft_model": options.draft_model,
        "prompt_lookup": options.prompt_lookup,
    }
    alone = {k: v for k, v in unbatched.items() if v is not None}
    if max_concurrency > 1 and not alone:
        if prompt_cache_dir is not None:
            folder = Path(prompt_cache_dir).expanduser() / _folder_name(entry.id)
            options = replace(options, prompt_cache_dir=folder)
        return BatchTokenGenerator(
            path,
            options,
            max_batch_size=max_concurrency,
            prefill_batch_size=prompt_concurrency or DEFAULT_PREFILL_BATCH_SIZE,
            prompt_cache_size=prompt_cache_size,
            prompt_cache_bytes=prompt_cache_bytes,
        )
    if max_concurrency > 1:
        key, value = next(iter(alone.items()))
        logger.warning(
            "%s=%s does not batch: serving %s one request at a time", key, value, entry.id
        )
    return TokenGenerator(path, options)


def _folder_name(model_id: str) -> str:
    """A folder name for a model id (a repo id's '/' and other odd characters become '_')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id).strip(".") or "_"


def _is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


class ModelRegistry:
    """The default model, the folders under `models_dir` and the profiles, by name."""

    def __init__(
        self,
        default: ModelEntry,
        *,
        models_dir: Path | None = None,
        profiles: Profiles | None = None,
        created: int | None = None,
    ) -> None:
        self.default = default
        self.models_dir = models_dir
        self.profiles = profiles
        self.created = created if created is not None else int(time.time())

    def folders(self) -> list[Path]:
        if self.models_dir is None or not self.models_dir.is_dir():
            return []
        try:
            return sorted(p for p in self.models_dir.iterdir() if _is_model_folder(p))
        except OSError:
            return []

    def names(self) -> list[str]:
        names = [self.default.id]
        names += [p.name for p in self.folders() if p.name not in names]
        if self.profiles is not None:
            names += [n for n in self.profiles.names if n not in names]
        return names

    def cards(self) -> list[ModelCard]:
        """``GET /v1/models`` entries."""
        cards = [self._card(self.default.id, "model")]
        seen = {self.default.id}
        for folder in self.folders():
            if folder.name not in seen:
                seen.add(folder.name)
                cards.append(self._card(folder.name, "folder"))
        if self.profiles is not None:
            for name in self.profiles.names:
                if name not in seen:
                    seen.add(name)
                    cards.append(self._card(name, "profile"))
        return cards

    def _card(self, name: str, kind: Kind) -> ModelCard:
        return ModelCard(
            id=name, object="model", created=self.created, owned_by="mlx-harmony", kind=kind
        )

    def resolve(self, name: str | None) -> ModelEntry:
        """The entry a request's ``model`` names (empty: the default); 404 for others."""
        default = self.default
        if not name or name in (default.id, default.model, "default", "default_model"):
            return default
        if self.models_dir is not None and "/" not in name and name not in (".", ".."):
            folder = self.models_dir / name
            if _is_model_folder(folder):
                return ModelEntry(
                    name,
                    os.fspath(folder),
                    # the default model's adapter, template, saved cache and draft are its own
                    default.prompt_config.updated(
                        adapter_path=None,
                        chat_template=None,
                        prompt_cache_file=None,
                        draft_model=None,
                    ),
                    default.prompt_config_path,
                    kind="folder",
                )
        if self.profiles is not None and name in self.profiles:
            try:
                profile = self.profiles.resolve(name)
            except ConfigError as error:
                raise APIError(
                    503, f"profile {name!r} cannot be used: {error}", code="profile_invalid"
                ) from None
            path = os.fspath(profile.prompt_config_path) if profile.prompt_config_path else None
            return ModelEntry(name, profile.model, profile.prompt_config, path, kind="profile")
        known = ", ".join(self.names())
        raise APIError(
            404,
            f"model {name!r} is not served here; use one of: {known} (GET /v1/models lists them)",
            param="model",
            code="model_not_found",
        )
