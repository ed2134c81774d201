"""The original mlx-harmony (0.4) server's request fields, and the rule for fields this server
does not know.

Clients written for the original send ``return_analysis``, ``profile``, ``prompt_config``,
``xtc_probability``, ``xtc_threshold``, ``repetition_context_size``, ``loop_detection`` and
``reseed_each_turn``; they work here too. Any other field the server does not know is a 400
that names it, so a client never believes a behaviour it asked for took effect; OpenAI's own
fields that carry no behaviour for a local server (`NOOP_FIELDS`) are accepted.

``prompt_config`` never reads a path on a client's word: it names a config the server was
started with (``--prompt-config``, a profile's), or a file under ``--prompt-config-dir``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field, ValidationError

from mlx_harmony.controller import ConfigError, PromptConfig

from .errors import APIError
from .models import ModelEntry, ModelRegistry
from .worker import TurnPlan

__all__ = [
    "LOAD_TIME_KEYS",
    "NOOP_FIELDS",
    "AppliedFields",
    "OriginalFields",
    "OriginalFieldsService",
    "PromptConfigs",
    "SeedChains",
    "chain_seed",
    "check_unknown_fields",
]

NOOP_FIELDS: tuple[str, ...] = (
    "store",
    "metadata",
    "service_tier",
    "user",
    "prompt_cache_key",
    "safety_identifier",
)
"""OpenAI request fields accepted with no effect: they ask for nothing a local server does
(storage on OpenAI's side, billing tiers, abuse monitoring, OpenAI's cache routing)."""

SAMPLING_KEYS: tuple[str, ...] = ("xtc_probability", "xtc_threshold", "repetition_context_size")
LOAD_TIME_KEYS: tuple[str, ...] = (
    "max_kv_size",
    "mlock",
    "lazy",
    "clear_cache",
    "clear_cache_interval",
    "clear_cache_generation",
    "log_memory_stats",
    "draft_model",
    "num_draft_tokens",
    "prompt_lookup",
)
"""Prompt-config keys that set the model up when it loads: a request's ``prompt_config``
cannot change them for one request."""


class OriginalFields(BaseModel):
    """The original server's request fields, and OpenAI's no-op ones (a mixin of the chat
    request model)."""

    return_analysis: bool = Field(
        False,
        description="mlx-harmony 0.4: also return the analysis channel as `message.analysis` "
        "(`delta.analysis` when streaming), beside `reasoning` / `reasoning_content`.",
    )
    profile: str | None = Field(
        None,
        description="mlx-harmony 0.4: a profile of the server's --profiles by name (its model "
        "and prompt config); wins over `model`.",
    )
    prompt_config: str | None = Field(
        None,
        description="mlx-harmony 0.4: a prompt config the server was started with, or a file "
        "under its --prompt-config-dir (a relative path).",
    )
    xtc_probability: float | None = Field(None, description="XTC: chance to cut top tokens.")
    xtc_threshold: float | None = Field(None, description="XTC: probability threshold.")
    repetition_context_size: int | None = Field(
        None, description="Tokens the repetition penalty looks back over."
    )
    loop_detection: str | None = Field(
        None, description="off, cheap or full: stop a reply stuck repeating itself."
    )
    reseed_each_turn: bool | None = Field(
        None,
        description="With a seed: true starts every request from it (the same request, the same "
        "answer); false continues one chain of draws per seed across requests.",
    )
    store: bool | None = Field(None, description="Accepted; nothing is stored on this server.")
    metadata: dict[str, str] | None = Field(None, description="Accepted; not used.")
    service_tier: str | None = Field(None, description="Accepted; not used.")
    prompt_cache_key: str | None = Field(
        None, description="Accepted; the prompt cache here matches prompts by their tokens."
    )
    safety_identifier: str | None = Field(None, description="Accepted; not used.")


def check_unknown_fields(body: BaseModel) -> None:
    """A 400 naming the first field of `body` its model does not declare (it needs
    ``extra="allow"`` to keep them)."""
    extra = body.model_extra or {}
    if not extra:
        return
    name = next(iter(extra))
    more = f" (also: {', '.join(sorted(extra)[:5])})" if len(extra) > 1 else ""
    raise APIError(
        400,
        f"unknown field {name!r}{more}: this server does not support it, so it cannot do what it "
        f"asks; leave it out. Accepted without effect: {', '.join(NOOP_FIELDS)}",
        param=name,
        code="unknown_parameter",
    )


def _config_error(field: str, error: ValidationError) -> APIError:
    first = error.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "sampling"]
    param = loc[0] if loc else field
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return APIError(400, f"{param}: {message}", param=param, code="invalid_value")


class PromptConfigs:
    """The prompt configs a request may name: those the server was started with (by the path
    as given, its resolved path, or its file name), and the JSON files under `folder`. Loaded
    files are cached by path, size and modification time."""

    def __init__(
        self,
        known: Mapping[str, PromptConfig],
        *,
        folder: str | os.PathLike[str] | None = None,
        cache_size: int = 32,
    ) -> None:
        self._known: dict[str, PromptConfig] = {}
        for path, config in known.items():
            resolved = Path(path).expanduser().resolve()
            for key in (path, os.fspath(resolved), resolved.name):
                self._known.setdefault(key, config)
        self.folder = Path(folder).expanduser().resolve() if folder is not None else None
        self._cache: OrderedDict[tuple[str, int, int], PromptConfig] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def of_registry(
        cls,
        registry: ModelRegistry,
        *,
        folder: str | os.PathLike[str] | None = None,
        given: str | None = None,
    ) -> PromptConfigs:
        """The default model's config (also by `given`, the ``--prompt-config`` as typed) and
        each profile's config file (profiles that cannot be resolved are left out: naming
        them gives their own error)."""
        known: dict[str, PromptConfig] = {}
        if given and registry.default.prompt_config_path:
            known[given] = registry.default.prompt_config
        if registry.default.prompt_config_path:
            known[registry.default.prompt_config_path] = registry.default.prompt_config
        if registry.profiles is not None:
            for name in registry.profiles.names:
                try:
                    resolved = registry.profiles.resolve(name)
                except ConfigError:
                    continue
                if resolved.prompt_config_path is not None:
                    path = os.fspath(resolved.prompt_config_path)
                    known.setdefault(path, resolved.prompt_config)
                    raw = registry.profiles.get(name).prompt_config
                    if isinstance(raw, str):
                        known.setdefault(raw, resolved.prompt_config)
        return cls(known, folder=folder)

    def load(self, name: str) -> PromptConfig:
        """The config `name` names; a 400 naming ``prompt_config`` for anything else."""
        if name in self._known:
            return self._known[name]
        if self.folder is None:
            raise APIError(
                400,
                f"prompt_config {name!r} is not one this server was started with, and the "
                "server allows no folder of prompt configs (its operator can start it with "
                "--prompt-config-dir DIR)",
                param="prompt_config",
                code="prompt_config_not_allowed",
            )
        path = self._under_folder(name, self.folder)
        try:
            stat = path.stat()
        except OSError:
            raise APIError(
                400,
                f"prompt_config {name!r} does not exist in the server's prompt config folder",
                param="prompt_config",
                code="prompt_config_not_found",
            ) from None
        key = (os.fspath(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        try:
            config = PromptConfig.from_file(path)
        except ConfigError as error:
            message = str(error).replace(os.fspath(self.folder) + os.sep, "")
            raise APIError(
                400,
                f"prompt_config {name!r} cannot be used: {message}",
                param="prompt_config",
                code="invalid_prompt_config",
            ) from None
        with self._lock:
            self._cache[key] = config
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return config

    @staticmethod
    def _under_folder(name: str, folder: Path) -> Path:
        """`name` as a file inside `folder`: no absolute path, no ``..``, and a symlink may
        not lead out of it."""
        pure = PurePosixPath(name.replace("\\", "/"))
        if not name or pure.is_absolute() or ".." in pure.parts or Path(name).is_absolute():
            raise APIError(
                400,
                f"prompt_config {name!r} must be a path relative to the server's prompt config "
                "folder, without '..'",
                param="prompt_config",
                code="prompt_config_not_allowed",
            )
        path = (folder / Path(*pure.parts)).resolve()
        if not path.is_relative_to(folder):
            raise APIError(
                400,
                f"prompt_config {name!r} leads out of the server's prompt config folder (a "
                "symbolic link); only files inside it may be named",
                param="prompt_config",
                code="prompt_config_not_allowed",
            )
        if not path.is_file():
            raise APIError(
                400,
                f"prompt_config {name!r} is not a file in the server's prompt config folder",
                param="prompt_config",
                code="prompt_config_not_found",
            )
        return path


def chain_seed(seed: int, step: int) -> int:
    """The seed of the `step`-th request (from 0) of a seed's chain: the seed itself first,
    so the first request agrees with ``reseed_each_turn: true``, then a hash of both."""
    if step == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}#{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class SeedChains:
    """How many requests each (model, seed) has drawn with ``reseed_each_turn: false``: the
    n-th such request is reproducible from a freshly started server. The least recently used
    seeds are forgotten beyond `size`."""

    def __init__(self, size: int = 4096) -> None:
        self._steps: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def next(self, model: str, seed: int) -> int:
        with self._lock:
            key = (model, seed)
            step = self._steps.pop(key, 0)
            self._steps[key] = step + 1
            while len(self._steps) > self._size:
                self._steps.popitem(last=False)
        return chain_seed(seed, step)


@dataclass(frozen=True, slots=True)
class AppliedFields:
    """What the original fields make of a request: the entry whose config the turn starts
    from, the entry the model is loaded as, and the seed policy it asked for."""

    entry: ModelEntry
    load_entry: ModelEntry
    reseed_each_turn: bool | None = None


def _generator_chains(entry: ModelEntry) -> bool:
    """Whether `entry`'s generator continues one key chain per seed (its config sets
    ``reseed_each_turn: false``; the server's default reseeds, see `load_generator`)."""
    config = entry.prompt_config
    return "reseed_each_turn" in config.model_fields_set and not config.reseed_each_turn


class OriginalFieldsService:
    """Applies the original fields to a request: the model entry and config it runs with,
    and the seed of each turn."""

    def __init__(self, registry: ModelRegistry, prompt_configs: PromptConfigs) -> None:
        self.registry = registry
        self.prompt_configs = prompt_configs
        self.chains = SeedChains()

    def entry(self, body: OriginalFields, model: str | None) -> AppliedFields:
        """The entry `body` runs with: its ``profile`` (else `model`), its ``prompt_config``,
        then its sampling and loop-detection fields; 400 naming the field when one is wrong."""
        load_entry = self._profile(body.profile) if body.profile else self.registry.resolve(model)
        entry = load_entry
        reseed = body.reseed_each_turn
        if body.prompt_config is not None:
            config = self.prompt_configs.load(body.prompt_config)
            _check_load_time_keys(config, load_entry.prompt_config, body.prompt_config)
            entry = replace(entry, prompt_config=config, prompt_config_path=body.prompt_config)
            if reseed is None and "reseed_each_turn" in config.model_fields_set:
                reseed = config.reseed_each_turn
        changes: dict[str, object] = {
            name: getattr(body, name) for name in SAMPLING_KEYS if getattr(body, name) is not None
        }
        if body.loop_detection is not None:
            changes["loop_detection"] = body.loop_detection
        if changes:
            try:
                config = entry.prompt_config.updated(**changes)
            except ValidationError as error:
                raise _config_error(next(iter(changes)), error) from None
            entry = replace(entry, prompt_config=config)
        if reseed is True and _generator_chains(load_entry):
            raise APIError(
                400,
                f"reseed_each_turn: true cannot be honoured: the prompt config of "
                f"{load_entry.id!r} sets reseed_each_turn: false, so its generator continues "
                "one chain of draws per seed; leave the field out, or serve the model with a "
                "config that does not set it",
                param="reseed_each_turn",
                code="unsupported_value",
            )
        return AppliedFields(entry, load_entry, reseed)

    def _profile(self, name: str) -> ModelEntry:
        profiles = self.registry.profiles
        if profiles is None or name not in profiles:
            known = ", ".join(profiles.names) if profiles is not None and len(profiles) else None
            hint = (
                f"known profiles: {known}"
                if known
                else "this server was started without profiles (--profiles FILE)"
            )
            raise APIError(
                400, f"unknown profile {name!r}; {hint}", param="profile", code="unknown_profile"
            )
        return self.registry.resolve(name)

    def turn_plan(self, plan: TurnPlan, applied: AppliedFields, *, advance: bool) -> TurnPlan:
        """`plan` loaded as the served entry (a request's config never sets up the model),
        with its seed taken from its seed's chain when the request asked for
        ``reseed_each_turn: false`` (`advance`: count this request in the chain)."""
        plan = replace(plan, entry=applied.load_entry)
        seed = plan.config.sampling.seed
        if (
            applied.reseed_each_turn is False
            and seed is not None
            and advance
            and not _generator_chains(applied.load_entry)
        ):
            chained = self.chains.next(applied.load_entry.model, seed)
            plan = replace(plan, config=plan.config.updated(seed=chained))
        return plan


def _check_load_time_keys(config: PromptConfig, served: PromptConfig, name: str) -> None:
    """A 400 when a requested config differs from the served one in keys that only apply
    when the model loads (they would be silently ignored)."""
    differ: Iterable[str] = (
        key for key in LOAD_TIME_KEYS if getattr(config, key) != getattr(served, key)
    )
    keys = list(differ)
    if keys:
        raise APIError(
            400,
            f"prompt_config {name!r} sets {', '.join(keys)}, which set the model up when it loads "
            "and cannot change for one request; remove them from that config (or give it the "
            "served model's values)",
            param="prompt_config",
            code="unsupported_value",
        )
