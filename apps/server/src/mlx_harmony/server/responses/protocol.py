"""The OpenAI Responses API wire format: ``POST /v1/responses`` requests and the response object.

Input items and tools are discriminated by their ``type``; a type this server does not serve
(``item_reference``, ``computer_call``, a ``web_search`` tool, an ``input_image`` part) parses
as an ``Other*`` model, so that planning refuses it with a 400 that names it (a hosted tool:
leaves it out with a warning) instead of a
schema error that lists every union branch. Fields of a known item with the wrong shape (a
``function_call_output`` without ``call_id``) are a 422 naming the field (``input[2].call_id``).

The shapes follow the official ``openai`` package (``openai.types.responses``). The response
object, its output items and the stream's events are the models below, serialised with
``model_dump_json``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from ..protocol import CachedTokens, FunctionFields, ReasoningTokens

__all__ = [
    "ContentPartEvent",
    "FunctionCallArgumentsDeltaEvent",
    "FunctionCallArgumentsDoneEvent",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionToolSpec",
    "IncompleteDetails",
    "InputItem",
    "InputItemModel",
    "InputTokensDetails",
    "ItemStatus",
    "MessageItem",
    "NamespaceToolSpec",
    "OtherContent",
    "OtherItem",
    "OtherTool",
    "OutputFunctionCall",
    "OutputItem",
    "OutputItemEvent",
    "OutputMessage",
    "OutputReasoning",
    "OutputText",
    "OutputTextDeltaEvent",
    "OutputTextDoneEvent",
    "OutputTokensDetails",
    "ReasoningItem",
    "ReasoningOptions",
    "ReasoningSummaryPartEvent",
    "ReasoningSummaryTextDeltaEvent",
    "ReasoningSummaryTextDoneEvent",
    "ReasoningText",
    "ReasoningTextDeltaEvent",
    "ReasoningTextDoneEvent",
    "ResponseCreateRequest",
    "ResponseDeleted",
    "ResponseError",
    "ResponseEvent",
    "ResponseObject",
    "ResponseSettings",
    "ResponseStateEvent",
    "ResponseUsage",
    "SummaryText",
    "TextContent",
    "TextOptions",
    "ToolSpec",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


# Lists come before strings in unions so that a schema error names the list's field, not the
# string branch.


def _type_of(value: Any) -> Any:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


# -- input ------------------------------------------------------------------------------------
# Tags are capitalised so that the error handler leaves them out of a field's path.


class TextContent(_Model):
    """Text in a message: ``input_text`` (user, system, developer) or ``output_text``
    (an assistant message sent back)."""

    type: Literal["input_text", "output_text"]
    text: str


class OtherContent(_Model):
    """Any other part (``input_image``, ``input_file``, ``refusal``, ...): refused with a 400
    that names it, since the served models read text only."""

    type: str


def _content_tag(value: Any) -> str:
    return "Text" if _type_of(value) in ("input_text", "output_text") else "Other"


ContentPart = Annotated[
    Annotated[TextContent, Tag("Text")] | Annotated[OtherContent, Tag("Other")],
    Discriminator(_content_tag),
]


class MessageItem(_Model):
    """A message. ``system`` and ``developer`` messages join the developer instructions."""

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: list[ContentPart] | str
    phase: Literal["commentary", "final_answer"] | None = Field(
        None,
        description="An assistant message's kind: a preamble before tool calls (commentary) or "
        "the answer.",
    )
    id: str | None = None
    status: str | None = None


class FunctionCallItem(_Model):
    """A call the model made, sent back with its result (`FunctionCallOutputItem`)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str = Field(
        "", description="The arguments as the model wrote them: usually JSON, not always."
    )
    namespace: str | None = Field(
        None, description="The namespace tool the function belongs to (None: a plain function)."
    )
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Model):
    """The result of the call with the same ``call_id``."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: list[ContentPart] | str
    id: str | None = None
    status: str | None = None


class ReasoningText(_Model):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class SummaryText(_Model):
    type: Literal["summary_text"] = "summary_text"
    text: str


class ReasoningItem(_Model):
    """The model's reasoning (Harmony's analysis channel), sent back as the output gave it.

    Kept in the prompt while its turn is in progress (a tool round) and dropped from earlier
    turns, as gpt-oss expects. Its text is ``content``, else the analysis sealed in
    ``encrypted_content``, else ``summary``."""

    type: Literal["reasoning"]
    id: str | None = None
    content: list[ReasoningText] | None = None
    summary: list[SummaryText] = Field(default_factory=list)
    encrypted_content: str | None = None
    status: str | None = None


class OtherItem(_Model):
    """An item type this server does not serve: refused with a 400 that names it."""

    type: str


_ITEM_TAGS = {
    None: "Message",
    "message": "Message",
    "function_call": "FunctionCall",
    "function_call_output": "FunctionCallOutput",
    "reasoning": "Reasoning",
}


def _item_tag(value: Any) -> str:
    kind = _type_of(value)
    return _ITEM_TAGS.get(kind, "Other") if isinstance(kind, str | None) else "Other"


InputItemModel = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | OtherItem
"""An input item once parsed (`InputItem` is the union with its discriminator)."""

InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")]
    | Annotated[OtherItem, Tag("Other")],
    Discriminator(_item_tag),
]


class FunctionToolSpec(FunctionFields):
    """A function tool, declared to gpt-oss as a Harmony function."""

    type: Literal["function"]


class NamespaceToolSpec(_Model):
    """Function tools grouped under a namespace, declared to gpt-oss as a Harmony tool
    namespace (``namespace <name> { ... }``); the model calls ``<name>.<function>``."""

    type: Literal["namespace"]
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    tools: list[FunctionToolSpec] = Field(default_factory=list)


class OtherTool(_Model):
    """A hosted tool (``web_search``, ``file_search``, ``mcp``, ...): this server runs none, so
    it is left out of the prompt and the response carries a warning."""

    type: str


_TOOL_TAGS = {"function": "Function", "namespace": "Namespace"}


def _tool_tag(value: Any) -> str:
    kind = _type_of(value)
    return _TOOL_TAGS.get(kind, "Other") if isinstance(kind, str) else "Other"


ToolSpec = Annotated[
    Annotated[FunctionToolSpec, Tag("Function")]
    | Annotated[NamespaceToolSpec, Tag("Namespace")]
    | Annotated[OtherTool, Tag("Other")],
    Discriminator(_tool_tag),
]


class ReasoningOptions(_Model):
    effort: str | None = Field(None, description="gpt-oss's reasoning level: low, medium or high.")
    summary: str | None = Field(
        None,
        description="auto or detailed: reasoning items' summary is the analysis text; concise: "
        "its first sentences.",
    )
    generate_summary: str | None = Field(None, description="The older name of summary.")


class TextOptions(_Model):
    format: dict[str, Any] | None = Field(
        None,
        description="text, json_object, or json_schema ({'type': 'json_schema', 'name', "
        "'schema'}): the JSON kinds constrain the final answer to JSON (for the schema) and add "
        "an instruction to answer in JSON.",
    )


class ResponseCreateRequest(_Model):
    """``POST /v1/responses``. Unknown fields are kept (``extra="allow"``) so that the service
    can refuse them by name: a field that asks for a behaviour is never silently dropped."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(
        None, description="A name from GET /v1/models; empty or absent: the default model."
    )
    input: list[InputItem] | str | None = Field(
        None, description="A user message as a string, or a list of input items."
    )
    instructions: str | None = Field(
        None,
        description="Developer instructions for this response (not carried over by "
        "previous_response_id).",
    )
    previous_response_id: str | None = Field(
        None,
        description="Continue a stored response's conversation (kept in memory, bounded by "
        "--response-store-size).",
    )
    reasoning: ReasoningOptions | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = Field(
        None, description="auto, none, required, or {'type': 'function', 'name': ...}."
    )
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    text: TextOptions | None = None
    store: bool = Field(True, description="Keep the response for previous_response_id and GET.")
    metadata: dict[str, str] | None = None
    stream: bool = False
    background: bool | None = Field(None, description="Only false: no background responses.")
    conversation: Any = Field(None, description="Not supported: use previous_response_id.")
    user: str | None = None
    include: list[str] | None = Field(
        None,
        description="reasoning.encrypted_content: reasoning items carry the analysis sealed "
        "with the server's key; other values are ignored with a warning.",
    )
    prompt_cache_key: str | None = Field(
        None,
        description="Accepted; the prompt cache is shared by prefix, so no key is needed.",
    )
    client_metadata: dict[str, Any] | None = Field(
        None, description="Accepted and not used (Codex CLI sends it)."
    )
    service_tier: str | None = Field(None, description="Accepted; one tier here.")
    safety_identifier: str | None = Field(None, description="Accepted and not used.")


# -- output (documentation) -------------------------------------------------------------------


class InputTokensDetails(CachedTokens):
    """``usage.input_tokens_details``."""


class OutputTokensDetails(ReasoningTokens):
    """``usage.output_tokens_details``."""


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]
    phase: Literal["commentary", "final_answer"] | None = None


class OutputReasoning(BaseModel):
    id: str
    type: Literal["reasoning"] = "reasoning"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[ReasoningText]
    summary: list[SummaryText]
    encrypted_content: str | None = None


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    status: Literal["in_progress", "completed", "incomplete"]
    call_id: str
    name: str
    arguments: str
    namespace: str | None = None


OutputItem = Annotated[
    OutputReasoning | OutputMessage | OutputFunctionCall, Field(discriminator="type")
]
ItemStatus = Literal["in_progress", "completed", "incomplete"]


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseObject(BaseModel):
    """A response: ``POST /v1/responses`` (whole, or in ``response.completed`` when streamed)
    and ``GET /v1/responses/{id}``."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    completed_at: int | None = None
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    instructions: str | None = None
    output: list[OutputItem]
    usage: ResponseUsage | None = None
    previous_response_id: str | None = None
    reasoning: dict[str, Any]
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    text: dict[str, Any]
    store: bool
    metadata: dict[str, str]
    truncation: Literal["disabled"] = "disabled"
    background: bool = False
    user: str | None = None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool


class ResponseSettings(BaseModel):
    """The request's settings, as the response object repeats them."""

    instructions: str | None
    previous_response_id: str | None
    reasoning: dict[str, Any]
    tools: list[dict[str, Any]]
    tool_choice: str | dict[str, Any]
    parallel_tool_calls: bool
    max_output_tokens: int | None
    temperature: float | None
    top_p: float | None
    text: dict[str, Any]
    store: bool
    metadata: dict[str, str]
    truncation: Literal["disabled"] = "disabled"
    background: bool = False
    user: str | None


# -- stream events ------------------------------------------------------------------------------


class _Event(BaseModel):
    sequence_number: int


class ResponseStateEvent(_Event):
    """``response.created`` ... ``response.completed``: the whole response object."""

    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    response: ResponseObject


class OutputItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int
    part: OutputText | ReasoningText


class OutputTextDeltaEvent(_Event):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    item_id: str
    output_index: int
    content_index: int
    logprobs: list[Any]
    delta: str


class ReasoningTextDeltaEvent(_Event):
    type: Literal["response.reasoning_text.delta"] = "response.reasoning_text.delta"
    item_id: str
    output_index: int
    content_index: int
    delta: str


class OutputTextDoneEvent(_Event):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any]


class ReasoningTextDoneEvent(_Event):
    type: Literal["response.reasoning_text.done"] = "response.reasoning_text.done"
    item_id: str
    output_index: int
    content_index: int
    text: str


class ReasoningSummaryPartEvent(_Event):
    type: Literal["response.reasoning_summary_part.added", "response.reasoning_summary_part.done"]
    item_id: str
    output_index: int
    summary_index: int
    part: SummaryText


class ReasoningSummaryTextDeltaEvent(_Event):
    type: Literal["response.reasoning_summary_text.delta"] = "response.reasoning_summary_text.delta"
    item_id: str
    output_index: int
    summary_index: int
    delta: str


class ReasoningSummaryTextDoneEvent(_Event):
    type: Literal["response.reasoning_summary_text.done"] = "response.reasoning_summary_text.done"
    item_id: str
    output_index: int
    summary_index: int
    text: str


class FunctionCallArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    name: str
    arguments: str


ResponseEvent = (
    ResponseStateEvent
    | OutputItemEvent
    | ContentPartEvent
    | OutputTextDeltaEvent
    | ReasoningTextDeltaEvent
    | OutputTextDoneEvent
    | ReasoningTextDoneEvent
    | ReasoningSummaryPartEvent
    | ReasoningSummaryTextDeltaEvent
    | ReasoningSummaryTextDoneEvent
    | FunctionCallArgumentsDeltaEvent
    | FunctionCallArgumentsDoneEvent
)
"""One server-sent event of a streamed response (``event: <type>``)."""
