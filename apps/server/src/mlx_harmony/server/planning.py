"""What both APIs do to turn a checked request into the worker's `TurnPlan`, and to read a
finished turn back: the prompt config with the request's sampling fields, the function tools
with safe names, the instructions for ``tool_choice`` and JSON answers, the grammar constraint
that makes those answers real (`plan_constraint`), the token counts.

Each API's translation module calls these with its own field names, so an error names the
field the client sent (``max_output_tokens`` for a response, ``max_tokens`` for a chat
completion) without mapping names back afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from mlx_harmony.controller import FinishReason, PromptConfig, RetryPolicy, TurnResult
from mlx_harmony.generate.constrain import ConstraintSpec
from mlx_harmony.generate.constrain import FunctionSpec as ConstrainedFunction
from mlx_harmony.harmony_format import (
    DeveloperConfig,
    FunctionTool,
    Message,
    Role,
    render_message,
)

from .conversation import Conversation
from .errors import APIError
from .models import ModelEntry
from .protocol import SamplingFields
from .tool_names import ToolNameMap
from .worker import Finished, TurnPlan

__all__ = [
    "REQUEST_SAMPLING_FIELDS",
    "SERVER_RETRY_POLICY",
    "STRICT_RETRY_POLICY",
    "AnswerFormat",
    "FunctionChoice",
    "FunctionSpec",
    "TokenCounts",
    "ToolChoice",
    "ToolsAndFormat",
    "build_config",
    "declare_tools",
    "developer_instructions",
    "format_instruction",
    "openai_calls",
    "plan_constraint",
    "plan_tools_and_format",
    "plan_turn",
    "request_sampling",
    "retry_policy",
    "was_cut",
]

SERVER_RETRY_POLICY = RetryPolicy(
    max_retries=1, length_retries=0, no_final_retries=1, loop_retries=0
)
"""What the server recovers from: a model that only thought gets one more attempt that starts
the final answer (its reasoning kept). No length retries (``max_tokens`` is the client's hard
limit) and no loop retries (streamed text cannot be taken back)."""
STRICT_RETRY_POLICY = RetryPolicy(max_retries=0)
"""With an explicit ``max_tokens`` (or ``--max-tokens-cap``): no retries at all, so a reply
never generates more than that."""

_CUT = (FinishReason.LENGTH, FinishReason.LOOP)


@dataclass(frozen=True, slots=True)
class FunctionChoice:
    """``tool_choice`` naming one function (the client's name)."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | FunctionChoice | None


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """A function tool as the client declared it, and where it sits in the request."""

    name: str
    description: str | None
    parameters: Mapping[str, object] | None
    name_param: str
    """The field that holds the name (``tools[0].function.name``, ``tools[0].name``)."""
    param: str
    """The tool itself (``tools[0]``)."""
    strict: bool = False
    """``strict: true``: a call's arguments must match `parameters` (a grammar constraint)."""


REQUEST_SAMPLING_FIELDS = tuple(SamplingFields.model_fields)
"""The sampling fields chat and raw completions requests share (the extras come separately)."""


def request_sampling(body: SamplingFields) -> dict[str, object]:
    """A chat or completions request's sampling fields, for `build_config`."""
    return {name: getattr(body, name) for name in REQUEST_SAMPLING_FIELDS}


def retry_policy(*, explicit_limit: bool) -> RetryPolicy:
    """`STRICT_RETRY_POLICY` when the client (or the server) set a token limit."""
    return STRICT_RETRY_POLICY if explicit_limit else SERVER_RETRY_POLICY


def plan_turn(
    entry: ModelEntry,
    conversation: Conversation,
    config: PromptConfig,
    function_tools: tuple[FunctionTool, ...],
    *,
    explicit_limit: bool,
    top_logprobs: int | None = None,
    conversation_param: str = "messages",
    constraint: tuple[ConstraintSpec, str] | None = None,
) -> TurnPlan:
    """The worker's plan for a checked request's conversation (`retry_policy` says why the
    token limit matters). A `constraint` (the spec and the field it came from, from
    `plan_constraint`) turns retries off: a retry that starts the final answer for the model
    would not match the grammar, which already guarantees the answer's shape."""
    policy = retry_policy(explicit_limit=explicit_limit or constraint is not None)
    return TurnPlan(
        entry=entry,
        turn=conversation.turn,
        history=conversation.history,
        config=config,
        function_tools=function_tools,
        top_logprobs=top_logprobs,
        policy=policy,
        conversation_param=conversation_param,
        constraint=constraint[0] if constraint is not None else None,
        constraint_param=constraint[1] if constraint is not None else None,
    )


def plan_constraint(
    specs: Sequence[FunctionSpec],
    names: ToolNameMap,
    choice: ToolChoice,
    *,
    format_kind: object,
    schema: object,
    format_param: str,
    schema_param: str,
) -> tuple[ConstraintSpec, str] | None:
    """The grammar constraint a request asks for, and the field a compile error names.

    ``tool_choice: "required"`` forces a call to one of the tools, a named function a call to
    that one, with arguments matching its parameters; strict tools under ``"auto"`` let the
    model answer or call, a call's arguments constrained. Otherwise a ``json_schema`` or
    ``json_object`` format constrains the final answer. A strict tool under ``"auto"`` together
    with a JSON format is refused: one turn cannot be held to both."""
    json_format = format_kind in ("json_schema", "json_object")
    if choice != "none" and specs:
        forced: Sequence[FunctionSpec] = ()
        if choice == "required":
            forced = specs
        elif isinstance(choice, FunctionChoice):
            forced = [s for s in specs if s.name == choice.name]
        functions = forced or [s for s in specs if s.strict]
        if functions:
            if not forced and json_format:
                raise APIError(
                    400,
                    f"{format_param.removesuffix('.type')} with strict tools and tool_choice "
                    "'auto' cannot both be enforced; drop 'strict' from the tools, or ask for "
                    "the tool call with tool_choice 'required'",
                    param=format_param,
                    code="unsupported_value",
                )
            declared = specs if not forced else functions
            tools = tuple(
                ConstrainedFunction(
                    names.to_harmony(s.name),
                    dict(s.parameters) if s.parameters is not None else {"type": "object"},
                    strict=s.strict,
                )
                for s in declared
            )
            return ConstraintSpec("tool_call", functions=tools, required=bool(forced)), "tools"
    if format_kind == "json_object":
        return ConstraintSpec("json_object"), format_param
    if format_kind == "json_schema":
        if not isinstance(schema, Mapping):
            raise APIError(
                400,
                f"{schema_param} must be a JSON schema (an object)",
                param=schema_param,
                code="invalid_value",
            )
        return ConstraintSpec("json_schema", schema=dict(schema)), schema_param
    return None


def build_config(
    base: PromptConfig,
    *,
    sampling: Mapping[str, object],
    reasoning_effort: str | None,
    instructions: str | None,
    max_tokens: int | None,
    max_tokens_cap: int | None,
    stops: Sequence[str] = (),
    params: Mapping[str, str] | None = None,
) -> PromptConfig:
    """`base` (its effective values) with the request's values; a value out of range is a 400
    naming the request's field (`params` maps config fields to the request's names)."""
    changes: dict[str, object] = {"performance_mode": False}
    changes.update({name: value for name, value in sampling.items() if value is not None})
    if reasoning_effort is not None:
        changes["reasoning_effort"] = reasoning_effort
    if instructions is not None:
        changes["developer_instructions"] = instructions
    effective = base.effective()
    if max_tokens is None:
        max_tokens = effective.max_tokens
    if max_tokens_cap is not None:
        max_tokens = min(max_tokens or max_tokens_cap, max_tokens_cap)
    changes["max_tokens"] = max_tokens
    stops = [s for s in stops if s]
    if stops:
        changes["end_token_strings"] = [*effective.end_token_strings, *stops]
    try:
        # effective(): a performance-mode config's perf_* values are the base the request
        # overrides.
        return effective.updated(**changes)
    except ValidationError as error:
        first = error.errors()[0]
        loc = first.get("loc", ())
        if len(loc) > 1 and loc[0] == "sampling":
            loc = loc[1:]
        field = str(loc[0]) if loc else None
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        if field == "logit_bias":
            message = f"logit_bias keys must be token ids (integers as strings): {message}"
        param = (params or {}).get(field, field) if field is not None else None
        raise APIError(400, message, param=param, code="invalid_value") from None


def declare_tools(
    specs: Sequence[FunctionSpec], names: ToolNameMap, choice: ToolChoice
) -> tuple[tuple[FunctionTool, ...], str | None]:
    """The tools with Harmony names, and an instruction for `choice`."""
    seen: set[str] = set()
    out: list[FunctionTool] = []
    for spec in specs:
        if spec.name in seen:
            raise APIError(
                400,
                f"{spec.param}: a tool named {spec.name!r} is already declared; tool names must "
                "be unique",
                param=spec.name_param,
                code="duplicate_tool",
            )
        seen.add(spec.name)
        try:
            parameters = dict(spec.parameters) if spec.parameters is not None else None
            out.append(
                FunctionTool(names.to_harmony(spec.name), spec.description or "", parameters)
            )
        except (TypeError, ValueError) as error:
            raise APIError(
                400, f"{spec.param}: {error}", param=spec.param, code="invalid_tool"
            ) from None
    if out:
        try:  # a schema openai-harmony cannot render is the client's mistake, not a 500
            render_message(Message(Role.DEVELOPER, DeveloperConfig(None, tuple(out))))
        except Exception as error:
            raise APIError(
                400,
                f"tools: the parameters cannot be rendered as a Harmony declaration: {error}",
                param="tools",
                code="invalid_tool",
            ) from None
    if choice == "none":
        return (), None
    instruction: str | None = None
    if choice == "required":
        if not out:
            raise APIError(
                400, "tool_choice is 'required' but no tools are given", param="tool_choice"
            )
        instruction = "You must call one of the functions before answering."
    elif isinstance(choice, FunctionChoice):
        if choice.name not in seen:
            raise APIError(
                400,
                f"tool_choice names {choice.name!r}, which is not in tools",
                param="tool_choice",
                code="unknown_tool",
            )
        instruction = f"You must call the function functions.{names.to_harmony(choice.name)} now."
    return tuple(out), instruction


@dataclass(frozen=True, slots=True)
class AnswerFormat:
    """A request's answer format (``kind``: text, json_object or json_schema) and the names of
    the fields that gave it, for errors."""

    kind: object = None
    schema: object = None
    kind_param: str = "response_format.type"
    schema_param: str = "response_format.json_schema.schema"


@dataclass(frozen=True, slots=True)
class ToolsAndFormat:
    """What a request's tools, tool choice and answer format make of its turn."""

    function_tools: tuple[FunctionTool, ...]
    instructions: str | None
    """The developer instructions: the request's own (else the config's), then the tool
    choice's and the answer format's."""
    constraint: tuple[ConstraintSpec, str] | None


def plan_tools_and_format(
    specs: Sequence[FunctionSpec],
    names: ToolNameMap,
    choice: ToolChoice,
    own_instructions: str | None,
    entry: ModelEntry,
    answer: AnswerFormat,
    extra_tools: Sequence[FunctionTool] = (),
) -> ToolsAndFormat:
    """Declare the tools (`extra_tools` after the functions, unless the choice is none), and
    plan the answer format's instruction and grammar constraint (`plan_constraint`), for either
    API: only the fields' names differ."""
    function_tools, tool_instruction = declare_tools(specs, names, choice)
    if choice != "none":
        function_tools += tuple(extra_tools)
    instruction = format_instruction(answer.kind, answer.schema, param=answer.kind_param)
    constraint = plan_constraint(
        specs,
        names,
        choice,
        format_kind=answer.kind,
        schema=answer.schema,
        format_param=answer.kind_param,
        schema_param=answer.schema_param,
    )
    instructions = developer_instructions(own_instructions, (tool_instruction, instruction), entry)
    return ToolsAndFormat(function_tools, instructions, constraint)


def format_instruction(kind: object, schema: object, *, param: str) -> str | None:
    """The instruction for a JSON answer format (`kind`: text, json_object, json_schema)."""
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "Answer with a single JSON object and nothing else."
    if kind == "json_schema":
        text = json.dumps(schema) if schema is not None else "{}"
        return (
            "Answer with a single JSON value that follows this JSON schema, and nothing "
            f"else: {text}"
        )
    raise APIError(
        400,
        f"{param.removesuffix('.type')} type {kind!r} is not supported; use text, json_object or "
        "json_schema",
        param=param,
        code="unsupported_value",
    )


def developer_instructions(
    own: str | None, extra: Sequence[str | None], entry: ModelEntry
) -> str | None:
    """The request's instructions (else the config's), then the `extra` ones it implies."""
    added = [text for text in extra if text]
    if not added:
        return own
    base = own if own is not None else entry.prompt_config.developer_instructions
    return "\n\n".join([*([base] if base else []), *added])


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """A finished turn's tokens, over every generation it ran (retries included)."""

    prompt: int
    completion: int
    cached: int
    reasoning: int
    drafted: int = 0
    """Speculative decoding: tokens proposed (a draft model or prompt lookup)."""
    accepted: int = 0
    """Speculative decoding: proposed tokens the model kept."""

    @classmethod
    def of(cls, finished: Finished) -> TokenCounts:
        generations = finished.result.generations
        completion = sum(g.completion_tokens for g in generations)
        return cls(
            prompt=sum(g.prompt_tokens for g in generations),
            completion=completion,
            cached=sum(g.reused_prompt_tokens for g in generations),
            reasoning=min(finished.reasoning_tokens, completion),
            drafted=sum(g.draft_tokens for g in generations),
            accepted=sum(g.accepted_draft_tokens for g in generations),
        )

    def prediction_details(self) -> dict[str, int]:
        """OpenAI's ``accepted_prediction_tokens`` / ``rejected_prediction_tokens`` of the
        speculative guesses (empty without speculation, so the usage leaves them out)."""
        if not self.drafted:
            return {}
        return {
            "accepted_prediction_tokens": self.accepted,
            "rejected_prediction_tokens": self.drafted - self.accepted,
        }


def openai_calls(result: TurnResult, names: ToolNameMap) -> list[tuple[str, str]]:
    """The turn's calls as (client's name, arguments); the arguments are the raw text, valid
    JSON or not: the client decides what to do with it."""
    return [
        (
            names.to_openai(call.name) if call.namespace == "functions" else call.recipient,
            call.arguments,
        )
        for call in result.tool_calls
    ]


def was_cut(result: TurnResult) -> bool:
    """Whether the turn ended on the token limit (or the loop detector)."""
    return result.finish_reason in _CUT
