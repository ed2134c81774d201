"""The wire models every route shares: errors, models, health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CachedTokens",
    "ErrorDetail",
    "ErrorResponse",
    "FunctionFields",
    "Health",
    "ModelCard",
    "ModelList",
    "ReasoningTokens",
    "SamplingFields",
]


class FunctionFields(BaseModel):
    """A function tool's fields, the same in Chat Completions (``function``) and Responses."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = Field(
        None,
        description="true: a call's arguments are constrained to match parameters (also with "
        "tool_choice auto); unset or false: constrained only when the call is forced.",
    )


class SamplingFields(BaseModel):
    """The sampling fields chat and raw completions requests share (the extras come apart)."""

    model_config = ConfigDict(extra="ignore")

    temperature: float | None = Field(None, ge=0, le=2, description="0 to 2, as OpenAI's.")
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    logit_bias: dict[str, float] | None = Field(
        None, description="Token id (as a string) to a bias added to its logit."
    )


class CachedTokens(BaseModel):
    """The prompt's share of a usage: both APIs' ``*_tokens_details`` of the prompt."""

    cached_tokens: int = Field(description="Prompt tokens served from the prompt cache.")


class ReasoningTokens(BaseModel):
    """The completion's share of a usage: both APIs' ``*_tokens_details`` of the output."""

    reasoning_tokens: int = Field(description="Tokens of the analysis channel.")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: Literal["model", "folder", "profile"] = Field(
        description="The default model, a folder under models_dir, or a profile."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    model_loaded: bool
    model_path: str | None
    prompt_config_path: str | None
    loaded_at_unix: float | None
    queued_requests: int
    """Waiting and running requests."""
    running_requests: int = 0
    waiting_requests: int = 0
    max_concurrency: int = 1
    prompt_cache: dict[str, int] | None = None
    """The shared prompt cache: entries, bytes, hits, misses, evictions (batching only)."""
    load_error: str | None = None
