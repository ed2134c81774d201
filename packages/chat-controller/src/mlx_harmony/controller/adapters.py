"""Adapters: the one place that knows how a model wants its prompt and writes its answer.

`HarmonyAdapter` (gpt-oss) renders through harmony-format and parses channels and tool calls;
`NativeAdapter` (any other model) uses the tokenizer's chat template and reads plain text. The
turn logic talks to both through `ChatAdapter` and never asks which model it has;
`adapter_for(generator)` is the only switch on the model type.

Both render a list of `Turn`s (``user``: a harmony-format `Message`, ``replies``: the messages
that answered it). The last turn is the one in progress; earlier turns are complete, and the
Harmony adapter leaves their reasoning (``analysis`` messages) out, as gpt-oss expects
(openai-harmony itself drops only the analysis before the first final message).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import openai_harmony as oh

from mlx_harmony.harmony_format import (
    CALL,
    END,
    STOP_TOKENS,
    DeveloperConfig,
    FunctionTool,
    Message,
    ParsedCompletion,
    PromptRenderer,
    Role,
    StreamParser,
    SystemConfig,
    ToolCall,
    get_encoding,
    parse_completion,
)
from mlx_harmony.harmony_format import (
    ReasoningEffort as HarmonyReasoningEffort,
)
from mlx_harmony.tools import ToolDeclarations, ToolResult

from .config import PromptConfig
from .events import AnswerDelta, CommentaryDelta, ThinkingDelta
from .turns import Turn

__all__ = [
    "ChatAdapter",
    "HarmonyAdapter",
    "NativeAdapter",
    "OutputParser",
    "TextDelta",
    "TurnOutput",
    "adapter_for",
]

TextDelta = ThinkingDelta | CommentaryDelta | AnswerDelta
_NO_DELTAS: tuple[TextDelta, ...] = ()
_NO_TOOLS = ToolDeclarations()


@dataclass(frozen=True, slots=True)
class TurnOutput:
    """What one generation said, whatever the model: the common result of every adapter.

    ``messages`` are ready to append to the turn's replies. ``truncated``: no stop token came
    (max_tokens, a loop, cancellation). ``final_closed``: the answer message was finished
    (its end token came), even if generation went on afterwards. ``called_tool``: generation
    stopped on a tool call (Harmony's ``<|call|>``), so ``tool_calls`` may be run.
    """

    final: str = ""
    analysis: str = ""
    commentary: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    messages: tuple[Message, ...] = ()
    stop_token: int | None = None
    truncated: bool = False
    final_closed: bool = False
    called_tool: bool = False
    raw_text: str = ""
    errors: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, for debug files."""
        return {
            "final": self.final,
            "analysis": self.analysis,
            "commentary": self.commentary,
            "tool_calls": [
                {
                    "recipient": c.recipient,
                    "arguments": c.arguments,
                    "channel": c.channel,
                    "content_type": c.content_type,
                }
                for c in self.tool_calls
            ],
            "stop_token": self.stop_token,
            "truncated": self.truncated,
            "final_closed": self.final_closed,
            "called_tool": self.called_tool,
            "errors": list(self.errors),
        }


class OutputParser(Protocol):
    """Reads one generation token by token; `finish()` gives the `TurnOutput`.

    `feed` gets each token with the text mlx-generate decoded for it (adapters that parse
    tokens ignore the text) and returns the text deltas to show.
    """

    def feed(self, token: int, text: str) -> tuple[TextDelta, ...]: ...

    def flush(self) -> tuple[TextDelta, ...]: ...

    def finish(self) -> TurnOutput: ...


@runtime_checkable
class ChatAdapter(Protocol):
    """How one kind of model is prompted and read. See the module docstring."""

    @property
    def name(self) -> str: ...

    @property
    def stop_tokens(self) -> frozenset[int]: ...

    @property
    def supports_tools(self) -> bool: ...

    def render(
        self,
        turns: Sequence[Turn],
        *,
        config: PromptConfig,
        tools: ToolDeclarations = _NO_TOOLS,
        function_tools: Sequence[FunctionTool] = (),
        force_final: bool = False,
    ) -> list[int]:
        """Prompt tokens for the assistant's next message; ``force_final`` makes that message
        the final answer (no more thinking) where the format allows it."""
        ...

    def make_stream_parser(self, *, force_final: bool = False) -> OutputParser: ...

    def parse(self, tokens: Sequence[int], *, force_final: bool = False) -> TurnOutput: ...

    def tool_result_message(self, call: ToolCall, result: ToolResult) -> Message: ...

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of tokens with the format's markers kept, for debug output."""
        ...


# --------------------------------------------------------------------------------------------
# Harmony


def _prefix_messages(config: PromptConfig) -> list[Message]:
    """Example dialogues and the greeting: after the developer message, before the history."""
    out: list[Message] = []
    for dialogue in config.example_dialogues:
        for m in dialogue:
            out.append(
                Message.user(m.content) if m.role == "user" else Message.assistant(m.content)
            )
    if config.assistant_greeting:
        out.append(Message.assistant(config.assistant_greeting))
    return out


def _history_messages(turns: Sequence[Turn], *, keep_analysis_of_last: bool) -> list[Message]:
    out: list[Message] = []
    last = len(turns) - 1
    for i, turn in enumerate(turns):
        if turn.user is not None:
            out.append(turn.user)
        if i == last and keep_analysis_of_last:
            out.extend(turn.replies)
        else:
            out.extend(m for m in turn.replies if m.channel != "analysis")
    return out


def _harmony_output(parsed: ParsedCompletion) -> TurnOutput:
    messages = parsed.messages
    last_final = max(
        (
            i
            for i, m in enumerate(messages)
            if m.role is Role.ASSISTANT
            and m.channel not in ("analysis", "commentary")
            and m.recipient in (None, "all")
        ),
        default=-1,
    )
    closed = last_final >= 0 and (not parsed.truncated or last_final < len(messages) - 1)
    return TurnOutput(
        final=parsed.final,
        analysis=parsed.analysis,
        commentary=parsed.commentary,
        tool_calls=parsed.tool_calls,
        messages=messages,
        stop_token=parsed.stop_token,
        truncated=parsed.truncated,
        final_closed=closed,
        called_tool=parsed.stop_token == CALL and bool(parsed.tool_calls),
        raw_text=parsed.raw_text,
        errors=parsed.errors,
    )


class _HarmonyParser:
    def __init__(self, prefix: Sequence[int]) -> None:
        self._parser = StreamParser()
        # The prefix is a header (`<|channel|>final<|message|>`): the parser decodes header
        # tokens itself, so no text goes with them, and every later token comes with its text.
        for token in prefix:
            self._parser.feed(token, "")

    def feed(self, token: int, text: str) -> tuple[TextDelta, ...]:
        deltas = self._parser.feed(token, text)
        return _to_events(deltas) if deltas else _NO_DELTAS

    def flush(self) -> tuple[TextDelta, ...]:
        return _to_events(self._parser.flush())

    def finish(self) -> TurnOutput:
        return _harmony_output(self._parser.finish())


def _to_events(deltas: Iterable[Any]) -> tuple[TextDelta, ...]:
    out: list[TextDelta] = []
    for delta in deltas:
        kind = delta.field
        if kind == "final":
            out.append(AnswerDelta(delta.text))
        elif kind == "analysis":
            out.append(ThinkingDelta(delta.text))
        elif kind == "commentary":
            out.append(CommentaryDelta(delta.text))
    return tuple(out)


class HarmonyAdapter:
    """gpt-oss: Harmony prompts from harmony-format (rendered incrementally), channels and
    tool calls parsed from the generated tokens.

    Built-in tool namespaces from a `ToolRegistry` (python, browser) go into the system
    message with their own descriptions; function tools (the registry's ``apply_patch``, the
    caller's ``function_tools``) into the developer message.
    """

    name = "harmony"
    supports_tools = True

    def __init__(
        self,
        *,
        stop_tokens: Iterable[int] | None = None,
        renderer: PromptRenderer | None = None,
    ) -> None:
        self._stop_tokens = frozenset(STOP_TOKENS if stop_tokens is None else stop_tokens)
        if END in self._stop_tokens:
            raise ValueError(
                "<|end|> (200007) must not be a stop token: it ends one message and the model "
                "goes on with the next; use <|return|> and <|call|>"
            )
        self.renderer = renderer or PromptRenderer()
        self._final_prefix = get_encoding().encode(
            "<|channel|>final<|message|>", allowed_special="all"
        )
        self._system_cache: dict[tuple[Any, ...], list[int]] = {}

    @property
    def stop_tokens(self) -> frozenset[int]:
        return self._stop_tokens

    def render(
        self,
        turns: Sequence[Turn],
        *,
        config: PromptConfig,
        tools: ToolDeclarations = _NO_TOOLS,
        function_tools: Sequence[FunctionTool] = (),
        force_final: bool = False,
    ) -> list[int]:
        system = SystemConfig(
            model_identity=config.system_model_identity,
            reasoning_effort=HarmonyReasoningEffort(config.reasoning_effort),
            conversation_start_date=config.conversation_start_date,
            knowledge_cutoff=config.knowledge_cutoff,
        )
        functions = tuple(
            FunctionTool(t.name, t.description, t.parameters) for t in tools.functions
        ) + tuple(function_tools)
        instructions = "\n\n".join(
            t for t in (config.developer_instructions, tools.instructions) if t
        )
        developer = (
            DeveloperConfig(instructions or None, functions) if instructions or functions else None
        )
        messages = _prefix_messages(config) + _history_messages(turns, keep_analysis_of_last=True)
        tokens = self.renderer.render_prompt(
            messages, system=system, developer=developer, auto_drop_analysis=False
        )
        if tools.system:
            # harmony-format's SystemConfig knows only the default browser/python texts; render
            # the system message with the registry's own namespaces and put it in front.
            head = self._system_tokens(system, tools.system, has_functions=bool(functions))
            tokens = head + tokens[tokens.index(END) + 1 :]
        if force_final:
            tokens.extend(self._final_prefix)
        return tokens

    def _system_tokens(
        self,
        system: SystemConfig,
        namespaces: Sequence[oh.ToolNamespaceConfig],
        *,
        has_functions: bool,
    ) -> list[int]:
        key = (system, has_functions, tuple(ns.model_dump_json() for ns in namespaces))
        tokens = self._system_cache.get(key)
        if tokens is None:
            content = system.to_harmony()
            for namespace in namespaces:
                content = content.with_tools(namespace)
            message = oh.Message.from_role_and_content(oh.Role.SYSTEM, content)
            options = oh.RenderOptions(conversation_has_function_tools=has_functions)
            tokens = get_encoding().render(message, options)
            if len(self._system_cache) > 64:
                self._system_cache.clear()
            self._system_cache[key] = tokens
        return list(tokens)

    def make_stream_parser(self, *, force_final: bool = False) -> OutputParser:
        return _HarmonyParser(self._final_prefix if force_final else ())

    def parse(self, tokens: Sequence[int], *, force_final: bool = False) -> TurnOutput:
        prefix = self._final_prefix if force_final else []
        return _harmony_output(parse_completion([*prefix, *tokens]))

    def tool_result_message(self, call: ToolCall, result: ToolResult) -> Message:
        """The tool's answer, on the channel the call used (as OpenAI's reference chat does)."""
        return Message.tool_result(
            result.name, result.content, channel=call.channel or "commentary"
        )

    def decode(self, tokens: Sequence[int]) -> str:
        try:
            return get_encoding().decode(list(tokens))
        except Exception:  # ids the vocabulary does not know: the parser's lossy text
            return parse_completion(tokens).raw_text


# --------------------------------------------------------------------------------------------
# Native (chat template)


class _NativeParser:
    def __init__(self, stop_tokens: frozenset[int]) -> None:
        self._stops = stop_tokens
        self._parts: list[str] = []
        self._stop_token: int | None = None

    def feed(self, token: int, text: str) -> tuple[TextDelta, ...]:
        if self._stop_token is not None:
            return _NO_DELTAS
        if token in self._stops:
            self._stop_token = token
            return (AnswerDelta(text),) if text else _NO_DELTAS
        if not text:
            return _NO_DELTAS
        self._parts.append(text)
        return (AnswerDelta(text),)

    def flush(self) -> tuple[TextDelta, ...]:
        return _NO_DELTAS

    def finish(self) -> TurnOutput:
        return _native_output("".join(self._parts), self._stop_token)


def _native_output(text: str, stop_token: int | None) -> TurnOutput:
    truncated = stop_token is None
    return TurnOutput(
        final=text,
        messages=(Message.assistant(text),) if text else (),
        stop_token=stop_token,
        truncated=truncated,
        final_closed=not truncated and bool(text),
        raw_text=text,
    )


class NativeAdapter:
    """Any non-Harmony model: the tokenizer's chat template in, plain text out.

    The system message is the prompt config's ``developer_instructions`` (none when unset);
    example dialogues and the greeting follow. Reasoning and tool messages of earlier turns
    are left out: such models cannot call our tools, so `TurnOutput.tool_calls` is always
    empty and a ``force_final`` request changes nothing.
    """

    name = "native"
    supports_tools = False

    def __init__(
        self,
        *,
        apply_chat_template: Callable[[list[dict[str, Any]]], list[int]],
        decode: Callable[[Sequence[int]], str],
        stop_tokens: Iterable[int],
    ) -> None:
        self._apply_chat_template = apply_chat_template
        self._decode = decode
        self._stop_tokens = frozenset(stop_tokens)

    @property
    def stop_tokens(self) -> frozenset[int]:
        return self._stop_tokens

    def render(
        self,
        turns: Sequence[Turn],
        *,
        config: PromptConfig,
        tools: ToolDeclarations = _NO_TOOLS,
        function_tools: Sequence[FunctionTool] = (),
        force_final: bool = False,
    ) -> list[int]:
        messages: list[dict[str, Any]] = []
        if config.developer_instructions:
            messages.append({"role": "system", "content": config.developer_instructions})
        for m in _prefix_messages(config):
            messages.append({"role": m.role.value, "content": m.text})
        for turn in turns:
            if turn.user is not None:
                messages.append({"role": "user", "content": turn.user.text})
            for m in turn.replies:
                if m.role is Role.ASSISTANT and m.channel in (None, "final") and not m.recipient:
                    messages.append({"role": "assistant", "content": m.text})
        return list(self._apply_chat_template(messages))

    def make_stream_parser(self, *, force_final: bool = False) -> OutputParser:
        return _NativeParser(self._stop_tokens)

    def parse(self, tokens: Sequence[int], *, force_final: bool = False) -> TurnOutput:
        tokens = list(tokens)
        stop = next((i for i, t in enumerate(tokens) if t in self._stop_tokens), None)
        body = tokens if stop is None else tokens[:stop]
        return _native_output(self._decode(body), None if stop is None else tokens[stop])

    def tool_result_message(self, call: ToolCall, result: ToolResult) -> Message:
        return Message.tool_result(
            result.name, result.content, channel=call.channel or "commentary"
        )

    def decode(self, tokens: Sequence[int]) -> str:
        return self._decode(list(tokens))


def adapter_for(generator: Any) -> ChatAdapter:
    """The adapter for a `TokenGenerator` (or anything with ``is_harmony``,
    ``default_stop_tokens``, ``apply_chat_template`` and ``decode``, such as
    `mlx_harmony.controller.testing.ScriptedGenerator`)."""
    stops = frozenset(getattr(generator, "default_stop_tokens", STOP_TOKENS))
    if generator.is_harmony:
        return HarmonyAdapter(stop_tokens=stops - {END})
    return NativeAdapter(
        apply_chat_template=generator.apply_chat_template,
        decode=generator.decode,
        stop_tokens=stops,
    )
