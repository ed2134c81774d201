"""The server's settings: what the command-line flags set, as one frozen value."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mlx_harmony.controller import ConfigError, Profiles, PromptConfig

from .models import ModelEntry, ModelRegistry

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ServerSettings"]

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    """Everything `create_app` needs. Without `model` and `profile` the demo model is served."""

    model: str | None = None
    """A model folder, a name under `models_dir`, or a Hugging Face repo id."""
    profile: str | None = None
    """A profile name from `profiles` (its model and prompt config)."""
    profiles: str | None = None
    """A profiles JSON file."""
    prompt_config: str | None = None
    """A prompt config JSON file; it wins over a profile's."""
    models_dir: str | None = None
    """Folder of model folders clients may name; default: the prompt config's `models_dir`."""
    host: str = "127.0.0.1"
    port: int = 8000
    preload: bool = False
    """Load the model at start-up instead of on the first request."""
    api_key: str | None = None
    """When set, every /v1 route but the health check needs ``Authorization: Bearer <key>``."""
    max_tokens_cap: int | None = None
    """The most tokens one reply may generate, whatever the request asks."""
    log_file: str | None = None
    """Where the request log goes (appended); default: stderr."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_queue: int = 64
    """Requests waiting for the model (beyond the running ones); more get a 503."""
    max_concurrency: int = 8
    """Requests that decode together in one batch; 1 runs them one at a time."""
    prompt_cache_size: int = 16
    """Prompt-prefix caches kept across requests and conversations (LRU)."""
    prompt_cache_bytes: int | None = None
    """The most bytes those caches may hold; None: bounded by the count only."""
    response_store_size: int = 256
    """Responses kept in memory for ``previous_response_id`` (least recently used out)."""

    def __post_init__(self) -> None:
        if self.max_tokens_cap is not None and self.max_tokens_cap < 1:
            raise ValueError(f"max_tokens_cap must be >= 1, got {self.max_tokens_cap}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.prompt_cache_size < 0:
            raise ValueError(f"prompt_cache_size must be >= 0, got {self.prompt_cache_size}")
        if self.prompt_cache_bytes is not None and self.prompt_cache_bytes < 0:
            raise ValueError(f"prompt_cache_bytes must be >= 0, got {self.prompt_cache_bytes}")
        if self.response_store_size < 1:
            raise ValueError(f"response_store_size must be >= 1, got {self.response_store_size}")
        if self.model and self.profile:
            raise ValueError("give either a model or a profile, not both")

    @property
    def serves_demo(self) -> bool:
        return not self.model and not self.profile

    def registry(self) -> ModelRegistry:
        """The models to serve; `ConfigError` for a bad prompt config, profile or path."""
        config = PromptConfig.from_file(self.prompt_config) if self.prompt_config else None
        config_path = os.fspath(Path(self.prompt_config).resolve()) if self.prompt_config else None
        profiles = Profiles.from_file(self.profiles) if self.profiles else None
        if self.profile:
            if profiles is None:
                raise ConfigError(
                    f"--profile {self.profile} needs a profiles file; pass --profiles FILE"
                )
            resolved = profiles.resolve(self.profile)
            if config is None:
                config = resolved.prompt_config
                path = resolved.prompt_config_path
                config_path = os.fspath(path) if path is not None else None
            default = ModelEntry(self.profile, resolved.model, config, config_path, "profile")
        else:
            config = config if config is not None else PromptConfig.model_validate({})
            if self.model:
                default = self._model_entry(self.model, config, config_path)
            else:
                default = ModelEntry.demo(config, config_path)
        models_dir = self.models_dir or default.prompt_config.models_dir
        return ModelRegistry(
            default,
            models_dir=Path(models_dir).expanduser() if models_dir else None,
            profiles=profiles,
        )

    def _model_entry(self, model: str, config: PromptConfig, config_path: str | None) -> ModelEntry:
        path = Path(model).expanduser()
        if path.exists():
            if not path.is_dir():
                raise ConfigError(f"--model {model} is a file; pass the model folder")
            return ModelEntry(path.resolve().name, os.fspath(path.resolve()), config, config_path)
        models_dir = self.models_dir or config.models_dir
        if models_dir is not None:
            candidate = Path(models_dir).expanduser() / model
            if candidate.is_dir():
                return ModelEntry(model, os.fspath(candidate.resolve()), config, config_path)
        return ModelEntry(model, model, config, config_path)  # a Hugging Face repo id
