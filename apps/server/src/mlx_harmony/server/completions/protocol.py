"""The legacy completions wire format: ``POST /v1/completions`` requests, answers, chunks.

A request is checked here for shape, types and OpenAI's ranges (a 400 naming the field);
fields a local model cannot honour (``suffix``, ``best_of`` > 1, ``n`` > 1) are refused by
the service with a 400 that says so. Answers and chunks are these models, serialised with
``model_dump_json``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..protocol import SamplingFields

__all__ = [
    "Completion",
    "CompletionChoice",
    "CompletionLogprobs",
    "CompletionRequest",
    "CompletionUsage",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _StreamOptions(_Model):
    include_usage: bool = False


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``. Unknown fields are kept (``extra="allow"``) so that the plan
    can refuse them by name."""

    model_config = ConfigDict(extra="allow")

    prompt: str | list[str] | list[int] = Field(
        description="The raw prompt: text, one text in a list, or token ids. No template."
    )
    model: str | None = Field(
        None, description="A name from GET /v1/models; empty or absent: the default model."
    )
    max_tokens: int | None = Field(16, ge=1, description="Tokens to generate (OpenAI: 16).")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    echo: bool = Field(False, description="Put the prompt in front of the completion's text.")
    logprobs: int | None = Field(
        None, ge=0, le=5, description="Also return the logprobs of the most likely tokens."
    )
    n: int | None = Field(None, ge=1, description="Only 1.")
    best_of: int | None = Field(None, ge=1, description="Only 1.")
    suffix: str | None = Field(None, description="Not supported: must be absent.")
    user: str | None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs: one entry per generated token in each list."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int = 0
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    """The answer, and each ``data:`` event of a stream (then ``choices`` hold deltas and
    ``usage`` comes in a last chunk with no choices, with ``stream_options.include_usage``)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
