"""PromptConfig: the JSON file that sets up a chat (prompt text, sampling, limits, memory).

Loading checks everything once and says what to fix: a missing file, invalid JSON (with line
and column), an unknown key (with the closest valid key), a value out of range (naming the
field and its range). Placeholders are expanded at load, see `mlx_harmony.controller.placeholders`.

Sampling is `sampling`, a `mlx_harmony.sampling.SamplingParams` checked by itself; a key left
out means its default. Older files write the sampling keys at the top level: they are moved
into `sampling` once, at load.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mlx_harmony.sampling import SamplingParams

from ._suggest import closest
from .placeholders import NAME_RE, expand_placeholders, parse_deterministic_time

if TYPE_CHECKING:
    from mlx_harmony.generate import GeneratorOptions

__all__ = [
    "SETTING_NAMES",
    "ConfigError",
    "ConfigWarning",
    "DialogueMessage",
    "LoopDetection",
    "PromptConfig",
    "ReasoningEffort",
    "format_validation_error",
    "render_config_reference",
    "render_prompt_config_schema",
]

ReasoningEffort = Literal["low", "medium", "high"]
LoopDetection = Literal["off", "cheap", "full"]

DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"


class ConfigError(ValueError):
    """A config or profiles file that cannot be used; the message names the file and the fix."""


class ConfigWarning(UserWarning):
    """A key that loads but does nothing here (the CLI shows it as a note at start-up)."""


OBSOLETE_KEYS: Mapping[str, str] = {
    "prewarm_cache": "prewarm_cache has no job here: the OS page cache keeps the weights warm "
    "between runs; remove the key",
}
"""Keys of mlx-harmony 0.4 that load with a warning and are then dropped."""


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


CLEAR_CACHE_EVERY_TOKENS = 256
RESERVED_TEMPLATE_ARGS = frozenset(
    {
        "conversation",
        "tools",
        "tokenize",
        "add_generation_prompt",
        "continue_final_message",
        "return_dict",
        "return_tensors",
        "chat_template",
    }
)
"""Arguments of ``apply_chat_template`` the controller sets itself (the messages, the
tools, the generation prompt): refused in ``chat_template_args``."""
"""What ``clear_cache_generation: true`` means: mlx-lm's interval."""


def _tokens_from_flag(value: object) -> object:
    """The original tool's ``clear_cache_generation`` was a flag: true is every 256 tokens."""
    if isinstance(value, bool):
        return CLEAR_CACHE_EVERY_TOKENS if value else 0
    return value


def _off_when_false(value: object) -> object:
    """mlx-harmony 0.4 wrote ``false`` for "off" in numeric keys: read it as null."""
    return None if value is False else value


def _json(value: object) -> str:
    return json.dumps(list(value) if isinstance(value, tuple) else value)


class DialogueMessage(BaseModel):
    """One message of an example dialogue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["user", "assistant"]
    content: str


class PromptConfig(BaseModel):
    """Everything a chat session reads from its prompt config file.

    Frozen: change it with `updated(...)` (validates again) or read the values that apply now
    with `effective()` (performance-mode overrides applied).
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="PromptConfig",
        json_schema_extra=lambda schema: _schema_extra(schema),
    )

    PLACEHOLDER_FIELDS: ClassVar[tuple[str, ...]] = (
        "system_model_identity",
        "developer_instructions",
        "assistant_greeting",
        "conversation_start_date",
        "example_dialogues",
    )
    SAMPLING_FIELDS: ClassVar[tuple[str, ...]] = tuple(SamplingParams.model_fields)
    PERFORMANCE_OVERRIDES: ClassVar[Mapping[str, str]] = {
        "perf_max_tokens": "max_tokens",
        "perf_max_context_tokens": "max_context_tokens",
        "perf_max_kv_size": "max_kv_size",
        "perf_reasoning_effort": "reasoning_effort",
        "perf_loop_detection": "loop_detection",
    }

    # -- the prompt ---------------------------------------------------------------------------
    system_model_identity: str = Field(
        default=DEFAULT_MODEL_IDENTITY,
        description="First line of the system message: who the model is. Placeholders expand.",
    )
    reasoning_effort: Annotated[ReasoningEffort, BeforeValidator(_lower)] = Field(
        default="medium",
        description="gpt-oss reasoning effort in the system message: low, medium, high.",
    )
    conversation_start_date: str | None = Field(
        default=None,
        description="Date shown in the system message, e.g. '<|DATE|>'; null leaves it out. "
        "Placeholders expand.",
    )
    knowledge_cutoff: str = Field(
        default="2024-06", description="Knowledge cutoff in the system message."
    )
    developer_instructions: str | None = Field(
        default=None,
        description="Developer message instructions (the 'system prompt'). Placeholders expand.",
    )
    assistant_greeting: str | None = Field(
        default=None,
        description="Shown at the start and kept as the first assistant message. Placeholders "
        "expand.",
    )
    example_dialogues: list[list[DialogueMessage]] = Field(
        default_factory=list,
        description="Example conversations placed after the developer message, each a list of "
        "{role: user|assistant, content}. Placeholders expand in content.",
    )
    placeholders: dict[str, str] = Field(
        default_factory=dict,
        description="Values for {name} placeholders in the text fields, expanded once at load.",
    )

    # -- sampling ---------------------------------------------------------------------------
    sampling: SamplingParams = Field(
        default_factory=SamplingParams,
        description="How each token is picked: mlx-sampling's SamplingParams (temperature, "
        "top_p, top_k, min_p, penalties, logit_bias, seed, ...); a key left out keeps its "
        "default. Older files write these keys at the top level: they load the same.",
    )

    # -- generation limits --------------------------------------------------------------------
    max_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Most tokens one reply may generate; null: until the context is full.",
    )
    max_context_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Context window to use; null: the model's own limit. Older turns are "
        "dropped to stay inside it.",
    )
    max_context_tokens_margin: int = Field(
        default=512,
        ge=0,
        description="Tokens kept free for the reply when dropping old turns: the prompt may use "
        "at most max_context_tokens - max_context_tokens_margin.",
    )
    max_kv_size: int | None = Field(
        default=None,
        ge=1,
        description="Rotating KV cache size in tokens; null: the cache grows as needed.",
    )
    reseed_each_turn: bool = Field(
        default=False,
        description="With a seed: reseed before every turn (each turn reproducible on its own) "
        "instead of once per session.",
    )
    end_token_strings: list[str] = Field(
        default_factory=list,
        description="Extra strings that end a reply, on top of the Harmony stop tokens.",
    )
    loop_detection: Annotated[LoopDetection, BeforeValidator(_lower)] = Field(
        default="cheap",
        description="Stop a reply stuck repeating itself. off: never check; cheap: look for a "
        "repeated tail of token ids now and then; full: check every token, longer periods too.",
    )

    # -- performance mode ---------------------------------------------------------------------
    performance_mode: bool = Field(
        default=False,
        description="Use the perf_* values instead of the normal ones (see effective()).",
    )
    perf_max_tokens: int | None = Field(
        default=None, ge=1, description="max_tokens in performance mode; null keeps max_tokens."
    )
    perf_max_context_tokens: int | None = Field(
        default=None, ge=1, description="max_context_tokens in performance mode; null keeps it."
    )
    perf_max_kv_size: int | None = Field(
        default=None, ge=1, description="max_kv_size in performance mode; null keeps it."
    )
    perf_reasoning_effort: Annotated[ReasoningEffort | None, BeforeValidator(_lower)] = Field(
        default=None, description="reasoning_effort in performance mode; null keeps it."
    )
    perf_loop_detection: Annotated[LoopDetection | None, BeforeValidator(_lower)] = Field(
        default=None, description="loop_detection in performance mode; null keeps it."
    )

    perf_prompt_token_budget: Annotated[int | None, BeforeValidator(_off_when_false)] = Field(
        default=None,
        ge=0,
        description="In performance mode, the most tokens the prompt may use: the oldest turns "
        "are left out to fit (as with max_context_tokens, whichever is smaller); null or 0: no "
        "budget of its own.",
    )

    # -- memory -------------------------------------------------------------------------------
    mlock: bool = Field(
        default=False,
        description="Keep the model's weights wired in memory (Metal's wired limit) so the OS "
        "does not page them out.",
    )
    clear_cache: bool = Field(
        default=False,
        description="Free MLX's buffer cache after generations, every clear_cache_interval-th "
        "one (a turn with tool calls or retries runs several).",
    )
    clear_cache_interval: int = Field(
        default=1, ge=1, description="Generations between cache clears when clear_cache is on."
    )
    clear_cache_generation: Annotated[int, BeforeValidator(_tokens_from_flag)] = Field(
        default=0,
        ge=0,
        description="Also free MLX's buffer cache every this many generated tokens, inside a "
        "generation; 0: never; true (the original's flag) means 256, as mlx-lm. Works whether "
        "or not clear_cache is on.",
    )
    log_memory_stats: bool = Field(
        default=False,
        description="Log MLX's active, cache and peak memory after each generation (logger "
        "mlx_harmony.generate, INFO).",
    )
    lazy: bool = Field(
        default=False,
        description="Load the weights lazily: map them at start and read each on first use "
        "(a faster start, a slower first reply).",
    )
    # -- model and KV cache (fixed when the model loads) --------------------------------------
    kv_bits: Literal[4, 8] | None = Field(
        default=None,
        description="Quantize the full-attention layers' KV cache to 4 or 8 bits (mlx-lm's "
        "--kv-bits; gpt-oss included, its sliding-window layers stay as they are); null: "
        "unquantized. Not with max_kv_size. A batching server runs such a model one request "
        "at a time.",
    )
    kv_group_size: Literal[32, 64, 128] = Field(
        default=64, description="Values that share one scale and bias in the quantized KV cache."
    )
    quantized_kv_start: int = Field(
        default=0,
        ge=0,
        description="Quantize the KV cache once it holds this many tokens (0: from the start).",
    )
    adapter_path: Path | None = Field(
        default=None,
        description="An mlx-lm adapter folder (adapter_config.json and adapters.safetensors, "
        "as mlx_lm.lora writes it) applied to the model at load; a relative path is taken from "
        "the config file's folder.",
    )
    chat_template: Path | None = Field(
        default=None,
        description="A Jinja chat template file that replaces the model's own (models other "
        "than gpt-oss, whose prompts Harmony renders); relative to the config file's folder.",
    )
    chat_template_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the chat template (mlx-lm's --chat-template-args), "
        'e.g. {"enable_thinking": false}. For gpt-oss only the keys that are Harmony '
        "settings: reasoning_effort, model_identity (system_model_identity), "
        "knowledge_cutoff, conversation_start_date; any other key is an error.",
    )
    prompt_cache_file: Path | None = Field(
        default=None,
        description="A prompt cache file written by mlx-harmony-cache-prompt for this model: "
        "prompts that start with its tokens prefill only the rest. Relative to the config "
        "file's folder.",
    )
    draft_model: str | None = Field(
        default=None,
        min_length=1,
        description="Speculative decoding with a draft model (mlx-lm's --draft-model): a small "
        "model folder or Hugging Face repo id with the same tokenizer; a relative folder is "
        "taken from the config file's folder when it is there. Greedy output is the model's "
        "own; not with prompt_lookup nor with structured output. A batching server runs such "
        "a model one request at a time.",
    )
    num_draft_tokens: int = Field(
        default=3,
        ge=1,
        description="Speculative decoding: guesses the model verifies per pass (mlx-lm's "
        "--num-draft-tokens).",
    )
    prompt_lookup: int | None = Field(
        default=None,
        ge=1,
        description="Speculative decoding without a draft model: guess the tokens that followed "
        "the last N tokens where they occurred earlier in the context (pays off when the "
        "answer repeats its input: editing, quoting code); null: off. Not with draft_model.",
    )
    models_dir: Path | None = Field(
        default=None,
        description="Folder where model names are looked up; '~' expands, a relative path is "
        "taken from the config file's folder.",
    )

    chats_dir: Path | None = Field(
        default=None,
        description="Folder for chat logs: a bare file name given to --chat, \\save or \\load is "
        "taken from here, and \\save without a name writes a new file here. '~' expands, a "
        "relative path is taken from the config file's folder.",
    )
    logs_dir: Path | None = Field(
        default=None,
        description="Folder for debug logs when --debug or --debug-tokens is on and "
        "--debug-file is not given. '~' expands, a relative path is taken from the config "
        "file's folder.",
    )

    # -- display ------------------------------------------------------------------------------
    log_timing_stats: bool = Field(
        default=False,
        description="Show a timing line after each turn (tokens, speed, time to first token) and "
        "write it to the debug log.",
    )
    truncate_thinking: Annotated[int | None, BeforeValidator(_off_when_false)] = Field(
        default=None,
        ge=0,
        description="Show at most this many characters of the thinking, then [truncated]; null "
        "or 0: all of it. Display only: the chat log keeps the whole text.",
    )
    truncate_response: Annotated[int | None, BeforeValidator(_off_when_false)] = Field(
        default=None,
        ge=0,
        description="Show at most this many characters of the answer, then [truncated]; null "
        "or 0: all of it. Display only: the chat log keeps the whole text.",
    )

    # -- time ---------------------------------------------------------------------------------
    deterministic_time_enabled: bool = Field(
        default=False,
        description="Expand time placeholders from deterministic_time_iso instead of the clock "
        "(stable prompts for tests and caches).",
    )
    deterministic_time_iso: str | None = Field(
        default=None,
        description="ISO 8601 date-time used when deterministic_time_enabled, e.g. "
        "'2025-01-31T14:05:09+01:00'; without an offset it is UTC.",
    )

    # -- validation ---------------------------------------------------------------------------
    @model_validator(mode="before")
    @classmethod
    def _nest_sampling_and_reject_unknown_keys(cls, data: Any) -> Any:
        """Top-level sampling keys (older files) move into ``sampling`` here, once; a null
        one means the default. Any other unknown key is refused with the closest valid one."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if k != "$schema"}
        data = _drop_original_keys(data)
        flat = {k: data.pop(k) for k in list(data) if k in cls.SAMPLING_FIELDS}
        if flat:
            nested = data.get("sampling") or {}
            if isinstance(nested, SamplingParams):
                nested = nested.model_dump(exclude_unset=True)
            if not isinstance(nested, dict):
                return data  # the field's own validation says what is wrong
            twice = sorted(set(flat) & set(nested))
            if twice:
                raise PydanticCustomError(
                    "sampling_twice",
                    "{keys} given both at the top level and inside sampling; keep one",
                    {"keys": ", ".join(twice)},
                )
            data["sampling"] = {**nested, **{k: v for k, v in flat.items() if v is not None}}
        unknown = [k for k in data if k not in cls.model_fields]
        if unknown:
            valid = [*cls.model_fields, *cls.SAMPLING_FIELDS]
            hints = "; ".join(_unknown_key_hint(str(k), valid) for k in unknown)
            raise PydanticCustomError(
                "unknown_key",
                "{hints} (the valid keys are in configs/prompt-config.schema.json)",
                {"hints": hints},
            )
        return data

    @field_validator(
        "models_dir",
        "chats_dir",
        "logs_dir",
        "adapter_path",
        "chat_template",
        "prompt_cache_file",
        mode="after",
    )
    @classmethod
    def _resolve_models_dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = value.expanduser()
        base = (info.context or {}).get("base_dir")
        if not value.is_absolute() and base is not None:
            value = Path(base) / value
        return value

    @field_validator("draft_model", mode="after")
    @classmethod
    def _resolve_draft_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A folder relative to the config file's folder when it is there; else as given (a
        folder from the current one, or a Hugging Face repo id)."""
        if value is None:
            return None
        path = Path(value).expanduser()
        base = (info.context or {}).get("base_dir")
        if not path.is_absolute() and base is not None and (Path(base) / path).exists():
            return os.fspath(Path(base) / path)
        return os.fspath(path) if value.startswith("~") else value

    @model_validator(mode="after")
    def _one_way_to_speculate(self) -> PromptConfig:
        if self.draft_model is not None and self.prompt_lookup is not None:
            raise ValueError(
                "draft_model and prompt_lookup cannot be combined (each is a way to draft); "
                "set one of them to null"
            )
        return self

    @model_validator(mode="after")
    def _kv_bits_without_rotating_cache(self) -> PromptConfig:
        if self.kv_bits is not None and self.max_kv_size is not None:
            raise ValueError(
                "kv_bits and max_kv_size cannot be combined (a rotating cache is not "
                "quantized); set one of them to null"
            )
        return self

    @field_validator("chat_template_args", mode="after")
    @classmethod
    def _check_template_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(RESERVED_TEMPLATE_ARGS.intersection(value))
        if reserved:
            raise ValueError(
                f"{reserved[0]!r} is an argument of apply_chat_template that the chat sets "
                "itself (from the messages and tools); leave it out"
            )
        return value

    @field_validator("placeholders", mode="after")
    @classmethod
    def _check_placeholders(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not name.isidentifier():
                raise ValueError(
                    f"placeholder name {name!r} must be an identifier (letters, digits, _), "
                    f"used as {{name}} in the text"
                )
            nested = [m.group(1) for m in NAME_RE.finditer(text) if m.group(1) in value]
            if nested:
                raise ValueError(
                    f"placeholder {name!r} uses {{{nested[0]}}}; placeholders do not nest, "
                    "write the text out"
                )
        return value

    @field_validator("deterministic_time_iso", mode="after")
    @classmethod
    def _check_time(cls, value: str | None) -> str | None:
        if value is not None:
            parse_deterministic_time(value)
        return value

    @model_validator(mode="after")
    def _finish(self) -> PromptConfig:
        if self.deterministic_time_enabled and self.deterministic_time_iso is None:
            raise ValueError(
                "deterministic_time_enabled is true but deterministic_time_iso is not set; "
                "give a date-time like '2025-01-31T14:05:09+01:00'"
            )
        # Expand placeholders once; the model is frozen, so write the fields directly.
        now = self.now()
        values = self.placeholders

        def expand(text: str) -> str:
            return expand_placeholders(text, values=values, now=now)

        for name in self.PLACEHOLDER_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                vars(self)[name] = expand(value)
            elif name == "example_dialogues":
                vars(self)[name] = [
                    [m.model_copy(update={"content": expand(m.content)}) for m in dialogue]
                    for dialogue in value
                ]
        return self

    # -- use ----------------------------------------------------------------------------------
    def now(self) -> datetime:
        """The time placeholders use: the deterministic time when enabled, else the clock."""
        if self.deterministic_time_enabled and self.deterministic_time_iso is not None:
            return parse_deterministic_time(self.deterministic_time_iso)
        return datetime.now().astimezone()

    def effective(self) -> PromptConfig:
        """The values that apply now: in performance mode, each perf_* that is set replaces its
        normal field. Calling it again changes nothing."""
        if not self.performance_mode:
            return self
        update = {
            target: getattr(self, source)
            for source, target in self.PERFORMANCE_OVERRIDES.items()
            if getattr(self, source) is not None
        }
        return self.model_copy(update=update) if update else self

    def sampling_params(self, **overrides: object) -> SamplingParams:
        """The sampling values, then `overrides` (e.g. CLI flags; None values there are
        ignored)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return self.sampling.updated(**changes) if changes else self.sampling

    def setting(self, name: str) -> Any:
        """The value of a setting by its flat name (a field, or a sampling key); a sampling
        key nobody set is None, meaning SamplingParams' default."""
        if name in self.SAMPLING_FIELDS:
            return getattr(self.sampling, name) if name in self.sampling.model_fields_set else None
        if name not in type(self).model_fields or name == "sampling":
            raise KeyError(name)
        return getattr(self, name)

    def settings_set(self) -> set[str]:
        """The flat names of the settings given explicitly (sampling keys by their own name)."""
        return (self.model_fields_set - {"sampling"}) | set(self.sampling.model_fields_set)

    def updated(self, **changes: object) -> PromptConfig:
        """A copy with `changes` validated like a loaded file (ValidationError when not valid).
        Sampling keys may be given flat; None puts one back to its default."""
        data = self.model_dump(exclude_unset=True)
        flat = {k: changes.pop(k) for k in list(changes) if k in self.SAMPLING_FIELDS}
        if flat:
            nested = dict(data.get("sampling") or {})
            for name, value in flat.items():
                if value is None:
                    nested.pop(name, None)
                else:
                    nested[name] = value
            data["sampling"] = nested
        return type(self).model_validate({**data, **changes})

    def generator_options(self) -> GeneratorOptions:
        """The generator's set-up values from this config (its effective values): the one
        mapping from prompt config to mlx-generate, used by the CLI, the server and the
        benchmarks alike. Imports mlx-generate (and MLX)."""
        from mlx_harmony.generate import GeneratorOptions

        cfg = self.effective()
        return GeneratorOptions(
            max_kv_size=cfg.max_kv_size,
            loop_detection=cfg.loop_detection,
            reseed_each_turn=cfg.reseed_each_turn,
            mlock=cfg.mlock,
            clear_cache_interval=cfg.clear_cache_interval if cfg.clear_cache else 0,
            clear_cache_tokens=cfg.clear_cache_generation,
            log_memory_stats=cfg.log_memory_stats,
            kv_bits=cfg.kv_bits,
            kv_group_size=cfg.kv_group_size,
            quantized_kv_start=cfg.quantized_kv_start,
            adapter_path=cfg.adapter_path,
            chat_template=cfg.chat_template_text(),
            prompt_cache_file=cfg.prompt_cache_file,
            draft_model=cfg.draft_model,
            num_draft_tokens=cfg.num_draft_tokens,
            prompt_lookup=cfg.prompt_lookup,
        )

    def chat_template_text(self) -> str | None:
        """The text of ``chat_template`` (None when unset); ConfigError when it cannot be
        read."""
        if self.chat_template is None:
            return None
        try:
            return self.chat_template.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"chat_template: cannot read {self.chat_template}: {error}; pass a Jinja "
                "template file"
            ) from None

    def prompt_token_budget(self) -> int | None:
        """The prompt's own token budget in performance mode (``perf_prompt_token_budget``),
        None when there is none."""
        if self.performance_mode and self.perf_prompt_token_budget:
            return self.perf_prompt_token_budget
        return None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PromptConfig:
        """Load and check a JSON prompt config; ConfigError says what is wrong and where."""
        data = _read_json_object(path, what="prompt config")
        return cls.from_dict(data, source=os.fspath(path), base_dir=Path(path).parent)

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        source: str = "prompt config",
        base_dir: str | os.PathLike[str] | None = None,
    ) -> PromptConfig:
        """Check `data` like a file's contents; relative `models_dir` is taken from `base_dir`."""
        try:
            return cls.model_validate(dict(data), context={"base_dir": base_dir})
        except ValidationError as error:
            raise ConfigError(format_validation_error(error, source=source)) from None


def _drop_original_keys(data: dict[str, Any]) -> dict[str, Any]:
    """mlx-harmony 0.4's keys with no job here load with a warning and are dropped."""
    for key, reason in OBSOLETE_KEYS.items():
        if key in data:
            del data[key]
            warnings.warn(reason, ConfigWarning, stacklevel=2)
    return data


def _setting_names() -> tuple[str, ...]:
    names: list[str] = []
    for name in PromptConfig.model_fields:
        names.extend(PromptConfig.SAMPLING_FIELDS if name == "sampling" else (name,))
    return tuple(names)


SETTING_NAMES: tuple[str, ...] = _setting_names()
"""Every setting by its flat name (the sampling keys in place of ``sampling``): what
``\\set`` and the chat log's hyperparameters use."""


def _unknown_key_hint(key: str, valid: Iterable[str]) -> str:
    match = closest(key, valid)
    return f"unknown key {key!r}" + (f" (did you mean {match!r}?)" if match else "")


def _read_json_object(path: str | os.PathLike[str], *, what: str) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} file {path} is a folder; give the JSON file in it") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{what} file {path} is not UTF-8 text ({error.reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"{path}:{error.lineno}:{error.colno}: invalid JSON in {what}: {error.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a {what} must be a JSON object {{...}}, got {type(data).__name__}"
        )
    return data


def format_validation_error(error: ValidationError, *, source: str) -> str:
    """One line per problem, each naming the key: ``source: top_p: top_p must be in (0, 1]...``."""
    lines = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        head = item["loc"][0] if item["loc"] else None
        if loc and not message.startswith(str(head)):
            message = f"{loc}: {message}"
            if item["type"] not in ("missing", "unknown_key") and "input" in item:
                shown = repr(item["input"])
                if len(shown) <= 60 and "got" not in message:
                    message += f" (got {shown})"
        lines.append(f"{source}: {message}")
    return "\n".join(lines)


def _schema_extra(schema: dict[str, Any]) -> None:
    schema["$schema"] = SCHEMA_URL
    schema["description"] = (
        "mlx-harmony prompt config. Generated from "
        "mlx_harmony.controller.PromptConfig; do not edit by hand."
    )
    schema["properties"] = {
        "$schema": {"type": "string", "description": "Path or URL of this schema, for editors."},
        **schema["properties"],
    }


def render_prompt_config_schema() -> str:
    """The JSON schema text committed as configs/prompt-config.schema.json."""
    return json.dumps(PromptConfig.model_json_schema(), indent=2, ensure_ascii=False) + "\n"


def render_config_reference() -> str:
    """The README's table of keys: name, type, default, description."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    rows += _reference_rows(PromptConfig, prefix="", expand={"sampling": SamplingParams})
    return "\n".join(rows) + "\n"


def _reference_rows(
    model: type[BaseModel], *, prefix: str, expand: Mapping[str, type[BaseModel]]
) -> list[str]:
    schema = model.model_json_schema()
    rows = []
    for name, info in model.model_fields.items():
        prop = schema["properties"][name]
        description = (info.description or "").replace("|", "\\|")
        if name in expand:
            rows.append(f"| `{prefix}{name}` | object | | {description} |")
            rows += _reference_rows(expand[name], prefix=f"{prefix}{name}.", expand={})
            continue
        default = info.get_default(call_default_factory=True)
        shown = "null" if default is None else json.dumps(default, default=str)
        rows.append(
            f"| `{prefix}{name}` | {_type_text(prop, schema)} | `{shown}` | {description} |"
        )
    return rows


def _type_text(prop: dict[str, Any], schema: dict[str, Any]) -> str:
    if "anyOf" in prop:
        kind = " or ".join(dict.fromkeys(_type_text(p, schema) for p in prop["anyOf"]))
    elif "enum" in prop:
        kind = " \\| ".join(json.dumps(v) for v in prop["enum"])
    elif "$ref" in prop:
        kind = "object"
    elif prop.get("type") == "array":
        kind = f"list of {_type_text(prop.get('items', {}), schema)}"
    elif prop.get("type") == "object" and isinstance(prop.get("additionalProperties"), dict):
        kind = f"map to {_type_text(prop['additionalProperties'], schema)}"
    else:
        kind = prop.get("type", "any")
    bounds = []
    for key, symbol in (
        ("exclusiveMinimum", ">"),
        ("minimum", ">="),
        ("exclusiveMaximum", "<"),
        ("maximum", "<="),
    ):
        if key in prop:
            value = prop[key]
            bounds.append(f"{symbol} {value if isinstance(value, int) else format(value, 'g')}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")
