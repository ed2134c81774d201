"""The server's settings: what the command-line flags set, as one frozen value."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from pydantic import ValidationError

from mlx_harmony.controller import ConfigError, Profiles, PromptConfig, format_validation_error

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
    prompt_config_dir: str | None = None
    """A folder whose JSON prompt configs a request's ``prompt_config`` may name (by a path
    relative to it); None: only the configs the server was started with."""
    models_dir: str | None = None
    """Folder of model folders clients may name; default: the prompt config's `models_dir`."""
    host: str = "127.0.0.1"
    port: int = 8000
    preload: bool = False
    """Load the model at start-up instead of on the first request."""
    api_key: str | None = None
    """When set, every route but the health check needs ``Authorization: Bearer <key>``."""
    api_keys: tuple[str, ...] = ()
    """More keys besides `api_key`; each key has its own queue line and stored responses."""
    allowed_hosts: tuple[str, ...] | None = None
    """``Host`` names answered (``"*"``: any); None: the loopback names when bound to
    loopback, else any."""
    max_tokens_cap: int | None = None
    """The most tokens one reply may generate, whatever the request asks."""
    log_file: str | None = None
    """Where the request log goes (appended); default: stderr."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_queue: int = 64
    """Requests waiting for the model (beyond the running ones); more get a 503."""
    max_queue_per_client: int | None = None
    """Requests one client (API key, else address) may have waiting; None: half of max_queue."""
    max_concurrency: int = 8
    """Requests that decode together in one batch; 1 runs them one at a time."""
    prompt_concurrency: int | None = None
    """Newcomers whose prompts the batch engine prefills in one forward pass (mlx-lm's
    ``--prompt-concurrency``); None: the engine's default (8). Needs ``max_concurrency`` of 2
    or more."""
    header_timeout_s: float = 10.0
    """Seconds a client has to send a request's headers (also between keep-alive requests)."""
    body_timeout_s: float = 30.0
    """Seconds a request body may go without sending a byte."""
    max_connections: int = 1000
    """Open connections at most; a newcomer beyond it closes the longest-idle one (or gets a
    503 when none is idle)."""
    prompt_cache_size: int = 16
    """Prompt-prefix caches kept across requests and conversations (LRU)."""
    prompt_cache_bytes: int | None = None
    """The most bytes those caches may hold; None: bounded by the count only."""
    response_store_size: int = 256
    """Responses kept in memory for ``previous_response_id`` (least recently used out)."""
    reasoning_key_file: str | None = None
    """The key that seals reasoning (``encrypted_content``); default: ``MLX_HARMONY_REASONING_KEY``,
    else a key made at start."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins CORS allows (``"*"``: any); empty: no CORS headers at all."""
    max_n: int = 8
    """The most choices (``n``) one chat request may ask for."""
    keepalive_s: float = 5.0
    """Seconds a stream may stay silent (waiting in the queue, prefilling) before the server
    sends an SSE comment, so that clients with read timeouts keep waiting."""

    kv_bits: int | None = None
    """Quantize the default model's KV cache to 4 or 8 bits (its prompt config's
    ``kv_bits``); such a model serves one request at a time (the batch engine has no quantized
    cache)."""
    kv_group_size: int | None = None
    quantized_kv_start: int | None = None
    adapter_path: str | None = None
    """An mlx-lm adapter folder applied to the default model."""
    chat_template: str | None = None
    """A Jinja chat template file replacing the default model's own (not gpt-oss)."""
    chat_template_args: dict[str, object] | None = None
    """Default chat-template keywords (mlx-lm's ``--chat-template-args``); a request's
    ``chat_template_kwargs`` update them key by key."""
    prompt_cache_file: str | None = None
    """A prompt cache file (``mlx-harmony-cache-prompt``) the default model starts from."""
    prompt_cache_dir: str | None = None
    """Folder where the shared prompt caches are loaded from at start and saved to at
    shutdown (one subfolder per model)."""
    draft_model: str | None = None
    """Speculative decoding for the default model with this draft model (a folder or a
    Hugging Face repo id with the same tokenizer); such a model serves one request at a time
    (the batch engine does not speculate)."""
    num_draft_tokens: int | None = None
    """Guesses the default model verifies per pass (default 3)."""
    prompt_lookup: int | None = None
    """Speculative decoding for the default model by prompt lookup with this n-gram length;
    one request at a time, as with `draft_model`."""

    MODEL_KEYS: ClassVar[tuple[str, ...]] = (
        "kv_bits",
        "kv_group_size",
        "quantized_kv_start",
        "adapter_path",
        "chat_template",
        "chat_template_args",
        "prompt_cache_file",
        "draft_model",
        "num_draft_tokens",
        "prompt_lookup",
    )
    """Settings that go into the default model's prompt config (same names there)."""

    def __post_init__(self) -> None:
        if self.max_n < 1:
            raise ValueError(f"max_n must be >= 1, got {self.max_n}")
        if not self.keepalive_s > 0:
            raise ValueError(f"keepalive_s must be > 0, got {self.keepalive_s}")
        if self.max_tokens_cap is not None and self.max_tokens_cap < 1:
            raise ValueError(f"max_tokens_cap must be >= 1, got {self.max_tokens_cap}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.max_queue_per_client is not None and not (
            1 <= self.max_queue_per_client <= self.max_queue
        ):
            raise ValueError(
                f"max_queue_per_client must be in [1, max_queue={self.max_queue}], got "
                f"{self.max_queue_per_client}"
            )
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")
        if not (self.header_timeout_s > 0 and self.body_timeout_s > 0):
            raise ValueError(
                f"header_timeout_s and body_timeout_s must be > 0, got {self.header_timeout_s} "
                f"and {self.body_timeout_s}"
            )
        if any(not key for key in self.api_keys):
            raise ValueError("an API key must not be empty")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.prompt_concurrency is not None and self.prompt_concurrency < 1:
            raise ValueError(f"prompt_concurrency must be >= 1, got {self.prompt_concurrency}")
        if self.prompt_concurrency is not None and self.max_concurrency == 1:
            raise ValueError(
                "--prompt-concurrency prefills the batch engine's newcomers together; it needs "
                "--max-concurrency 2 or more (one request at a time prefills alone)"
            )
        if self.prompt_cache_size < 0:
            raise ValueError(f"prompt_cache_size must be >= 0, got {self.prompt_cache_size}")
        if self.prompt_cache_bytes is not None and self.prompt_cache_bytes < 0:
            raise ValueError(f"prompt_cache_bytes must be >= 0, got {self.prompt_cache_bytes}")
        if self.response_store_size < 1:
            raise ValueError(f"response_store_size must be >= 1, got {self.response_store_size}")
        if self.model and self.profile:
            raise ValueError("give either a model or a profile, not both")
        if self.prompt_cache_dir is not None and self.max_concurrency == 1:
            raise ValueError(
                "--prompt-cache-dir keeps the batch engine's shared prompt caches; it needs "
                "--max-concurrency 2 or more (with one request at a time, use "
                "--prompt-cache-file)"
            )
        if self.prompt_cache_dir is not None and self.kv_bits is not None:
            raise ValueError(
                "--prompt-cache-dir needs the batch engine, which --kv-bits turns off; give one "
                "of them"
            )
        if self.draft_model is not None and self.prompt_lookup is not None:
            raise ValueError(
                "--draft-model and --prompt-lookup cannot be combined (each is a way to draft); "
                "give one of them"
            )
        for name in ("num_draft_tokens", "prompt_lookup"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.prompt_cache_dir is not None and (
            self.draft_model is not None or self.prompt_lookup is not None
        ):
            raise ValueError(
                "--prompt-cache-dir needs the batch engine, which --draft-model and "
                "--prompt-lookup turn off; give one of them"
            )
        if self.prompt_config_dir is not None and not Path(self.prompt_config_dir).is_dir():
            raise ValueError(
                f"--prompt-config-dir {self.prompt_config_dir} is not a folder; give the folder "
                "that holds the prompt configs clients may name"
            )

    @property
    def keys(self) -> tuple[str, ...]:
        """Every API key (`api_key` first); empty: no key needed."""
        return ((self.api_key,) if self.api_key else ()) + self.api_keys

    @property
    def hosts(self) -> tuple[str, ...] | None:
        """The ``Host`` names answered, or None for any."""
        from .middleware import default_allowed_hosts

        if self.allowed_hosts is None:
            return default_allowed_hosts(self.host)
        return None if "*" in self.allowed_hosts else self.allowed_hosts

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
        overrides = self.model_overrides()
        if overrides:
            try:
                config = default.prompt_config.updated(**overrides)
            except ValidationError as error:
                raise ConfigError(format_validation_error(error, source="the flags")) from None
            default = replace(default, prompt_config=config)
        models_dir = self.models_dir or default.prompt_config.models_dir
        return ModelRegistry(
            default,
            models_dir=Path(models_dir).expanduser() if models_dir else None,
            profiles=profiles,
        )

    def model_overrides(self) -> dict[str, object]:
        """The model flags given (`MODEL_KEYS`), as prompt-config values; paths absolute."""
        values: dict[str, object] = {}
        for name in self.MODEL_KEYS:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "draft_model":
                assert isinstance(value, str)
                local = Path(value).expanduser()  # a folder, else a Hugging Face repo id
                value = str(local.resolve()) if local.exists() else value
            elif isinstance(value, str):
                value = Path(value).expanduser().resolve()
            values[name] = value
        return values

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
