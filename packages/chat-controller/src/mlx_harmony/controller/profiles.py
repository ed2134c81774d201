"""Profiles: short names that bundle a model and a prompt config (configs/profiles.example.json).

```json
{
  "default": "gpt-oss-20b",
  "profiles": {
    "gpt-oss-20b": {"model": "mlx-community/gpt-oss-20b-MXFP4-Q8",
                    "prompt_config": "prompt-config.example.json"},
    "local": {"model": "./models/my-model", "prompt_config": {"reasoning_effort": "low"}}
  }
}
```

The flat format of mlx-harmony 0.4 loads too: ``{"gpt-oss-20b": {"model": ...,
"prompt_config": ...}}``, a file whose every key names a profile (it has no default).

`prompt_config` is a path (relative to the profiles file) or an inline object. `model` is kept
as written (a Hugging Face repo id or a name to look up in `models_dir`) unless it is a path:
one starting with ``./``, ``../``, ``~`` or ``/`` is expanded and made absolute against the
profiles file's folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ._suggest import by_closeness, closest
from .config import ConfigError, PromptConfig, _read_json_object, format_validation_error

__all__ = ["Profile", "Profiles", "ResolvedProfile"]


def _check_keys(cls: type[BaseModel], data: Any) -> Any:
    if isinstance(data, dict):
        unknown = [str(k) for k in data if k not in cls.model_fields and k != "$schema"]
        if unknown:
            hints = "; ".join(
                f"unknown key {k!r}"
                + (f" (did you mean {m!r}?)" if (m := closest(k, cls.model_fields)) else "")
                for k in unknown
            )
            raise PydanticCustomError("unknown_key", "{hints}", {"hints": hints})
        data = {k: v for k, v in data.items() if k != "$schema"}
    return data


class Profile(BaseModel):
    """One named bundle, as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="Model path, Hugging Face repo id, or name in models_dir.")
    prompt_config: str | dict[str, Any] | None = Field(
        None, description="Prompt config file (relative to the profiles file) or inline object."
    )
    description: str | None = Field(None, description="One line for listings.")
    adapter_path: str | None = Field(
        None,
        description="An mlx-lm adapter folder (relative to the profiles file) applied to the "
        "model: the profile's prompt config gets it as adapter_path.",
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _check_keys(cls, data)


class _ProfilesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = None
    profiles: dict[str, Profile]

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return _check_keys(cls, data)


def _is_flat(data: dict[str, Any]) -> bool:
    """mlx-harmony 0.4's shape: no ``profiles`` key, every value an object with a ``model``."""
    entries = [v for k, v in data.items() if k != "$schema"]
    return (
        "profiles" not in data
        and bool(entries)
        and all(isinstance(v, dict) and "model" in v for v in entries)
    )


@dataclass(frozen=True)
class ResolvedProfile:
    """A profile ready to use: the model to load and the loaded prompt config."""

    name: str
    model: str
    prompt_config: PromptConfig
    prompt_config_path: Path | None = None
    description: str | None = None


class Profiles:
    """The profiles of one file; `resolve(name)` loads a profile's prompt config."""

    def __init__(
        self,
        profiles: Mapping[str, Profile],
        *,
        default: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        source: str = "profiles",
    ) -> None:
        self._profiles = dict(profiles)
        self.base_dir = Path(base_dir) if base_dir is not None else Path.cwd()
        self.source = source
        if default is not None and default not in self._profiles:
            raise ConfigError(self._unknown_message(default, what="default profile"))
        self.default = default

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Profiles:
        data = _read_json_object(path, what="profiles")
        if _is_flat(data):
            data = {"profiles": {k: v for k, v in data.items() if k != "$schema"}}
        try:
            parsed = _ProfilesFile.model_validate(data)
        except ValidationError as error:
            raise ConfigError(format_validation_error(error, source=os.fspath(path))) from None
        return cls(
            parsed.profiles,
            default=parsed.default,
            base_dir=Path(path).resolve().parent,
            source=os.fspath(path),
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._profiles)

    def __contains__(self, name: object) -> bool:
        return name in self._profiles

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)

    def get(self, name: str) -> Profile:
        """The profile as written; ConfigError lists the known names, closest first."""
        try:
            return self._profiles[name]
        except KeyError:
            raise ConfigError(self._unknown_message(name, what="profile")) from None

    def resolve(self, name: str | None = None) -> ResolvedProfile:
        """Profile `name` (or the file's default) with paths resolved and its config loaded."""
        if name is None:
            if self.default is None:
                raise ConfigError(
                    f"{self.source}: no profile named and no 'default' in the file; pick one of "
                    f"{', '.join(self.names) or '(none)'}"
                )
            name = self.default
        profile = self.get(name)
        config_path: Path | None = None
        source = f"{self.source}: profile {name!r}: prompt_config"
        if profile.prompt_config is None:
            config = PromptConfig()
        elif isinstance(profile.prompt_config, str):
            config_path = self._path(profile.prompt_config)
            try:
                config = PromptConfig.from_file(config_path)
            except ConfigError as error:
                raise ConfigError(f"profile {name!r}: {error}") from None
        else:
            config = PromptConfig.from_dict(
                profile.prompt_config, source=source, base_dir=self.base_dir
            )
        if profile.adapter_path is not None:
            adapter = self._path(profile.adapter_path)
            if config.adapter_path is not None and config.adapter_path.resolve() != adapter:
                raise ConfigError(
                    f"{self.source}: profile {name!r} sets adapter_path {adapter} but its "
                    f"prompt config sets {config.adapter_path}; keep one of them"
                )
            config = config.updated(adapter_path=adapter)
        model = profile.model
        if model.startswith(("./", "../", "~", "/")):
            model = os.fspath(self._path(model))
        return ResolvedProfile(name, model, config, config_path, profile.description)

    def _path(self, text: str) -> Path:
        path = Path(text).expanduser()
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    def _unknown_message(self, name: str, *, what: str) -> str:
        known = by_closeness(name, self._profiles)
        listing = ", ".join(known) if known else "(none)"
        return f"{self.source}: unknown {what} {name!r}; known profiles: {listing}"
