"""The chat completions wire format: ``POST /v1/chat/completions`` requests, answers, chunks.

Requests are checked here for shape, types and OpenAI's ranges; value ranges of the other
sampling fields are checked by `SamplingParams` when the service builds the turn's config.
Either way a bad value is a 400 naming the field, as OpenAI answers. The request also takes
mlx-harmony 0.4's fields (`OriginalFields`); any other top-level field is a 400 naming it
(``extras.check_unknown_fields``), except OpenAI's no-op ones (``user``, ``store``, ...).

Answers and stream chunks are these models, serialised with ``model_dump_json``
(``exclude_unset``: a field is on the wire when the server set it, ``null`` included).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..extras import OriginalFields
from ..protocol import CachedTokens, FunctionFields, ReasoningTokens, SamplingFields

__all__ = [
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChoiceLogprobs",
    "ChunkChoice",
    "ChunkDelta",
    "ChunkToolCall",
    "CompletionTokensDetails",
    "Content",
    "ContentPart",
    "DeveloperMessage",
    "FunctionCall",
    "FunctionDefinition",
    "FunctionMessage",
    "NamedToolChoice",
    "OtherPart",
    "PromptTokensDetails",
    "ResponseMessage",
    "StreamOptions",
    "SystemMessage",
    "TextPart",
    "TokenCountResponse",
    "TokenLogprob",
    "Tool",
    "ToolCall",
    "ToolMessage",
    "Usage",
    "UserMessage",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- request ------------------------------------------------------------------------------------


class TextPart(_Model):
    type: Literal["text"]
    text: str


class OtherPart(_Model):
    """Any other content part (``image_url``, ``input_audio``, ``file``): refused with a 400
    that names it, since the served models read text only."""

    type: str


ContentPart = TextPart | OtherPart
Content = str | list[ContentPart]


class FunctionCall(_Model):
    name: str
    arguments: str = Field(
        "", description="The arguments as the model wrote them: usually JSON, not always."
    )


class ToolCall(_Model):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Model):
    role: Literal["system"]
    content: Content
    name: str | None = None


class DeveloperMessage(_Model):
    role: Literal["developer"]
    content: Content
    name: str | None = None


class UserMessage(_Model):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Model):
    role: Literal["assistant"]
    content: Content | None = None
    reasoning: str | None = Field(None, description="The model's reasoning (analysis channel).")
    reasoning_content: str | None = Field(
        None, description="The same as `reasoning`, under the name llama.cpp and DeepSeek use."
    )
    tool_calls: list[ToolCall] | None = None
    name: str | None = None


class ToolMessage(_Model):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


class FunctionMessage(_Model):
    """The legacy ``function`` role: a tool result named by the function instead of a call id."""

    role: Literal["function"]
    name: str
    content: str | None = None


ChatMessage = Annotated[
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage,
    Field(discriminator="role"),
]


class FunctionDefinition(FunctionFields):
    """``tools[].function``."""


class Tool(_Model):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class _ToolChoiceFunction(_Model):
    name: str


class NamedToolChoice(_Model):
    type: Literal["function"] = "function"
    function: _ToolChoiceFunction


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(OriginalFields, SamplingFields):
    """``POST /v1/chat/completions``. Unknown fields are kept (``extra="allow"``) so that the
    service can refuse them by name; OpenAI's fields without effect here are declared."""

    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = Field(
        None, description="A name from GET /v1/models; empty or absent: the default model."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(
        None, ge=1, description="Choices to generate, up to the server's --max-n (default 1)."
    )
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(
        None,
        description="Keyword arguments for the model's chat template, over the server's "
        "--chat-template-args (vLLM's and mlx-lm's field). gpt-oss has no template: only "
        "reasoning_effort, model_identity, knowledge_cutoff and conversation_start_date, which "
        "set those Harmony settings; any other key is a 400.",
    )
    include_reasoning: bool = Field(
        True, description="false leaves `reasoning` and `reasoning_content` out."
    )
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


# -- responses ----------------------------------------------------------------------------------


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning: str | None = None
    reasoning_content: str | None = None
    analysis: str | None = Field(
        default=None,
        description="The reasoning again, with `return_analysis` (mlx-harmony 0.4's name).",
    )
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class Choice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"]


class PromptTokensDetails(CachedTokens):
    """``usage.prompt_tokens_details``."""


class CompletionTokensDetails(ReasoningTokens):
    """``usage.completion_tokens_details``; the prediction counts only while speculating."""

    accepted_prediction_tokens: int | None = Field(
        default=None,
        description="Speculative decoding (--draft-model, --prompt-lookup): guessed tokens the "
        "model kept.",
    )
    rejected_prediction_tokens: int | None = Field(
        default=None,
        description="Speculative decoding: guessed tokens the model rejected.",
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage


class ChunkToolCall(ToolCall):
    """A tool call in a chunk: the whole call at once, at its index among the calls."""

    index: int


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    analysis: str | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion (``data: {...}``); ``data: [DONE]`` ends
    the stream. The usage chunk (with ``stream_options.include_usage``) has no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class TokenCountResponse(BaseModel):
    """``POST /v1/tokenize``: how much of the context window a conversation's prompt uses."""

    prompt_tokens: int
    max_context_tokens: int | None
    margin: int
