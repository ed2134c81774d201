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

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
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
from .template_kwargs import with_template_kwargs
from .turns import Turn

__all__ = [
    "ChatAdapter",
    "HarmonyAdapter",
    "NativeAdapter",
    "NativeMarkers",
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
        if config.chat_template_args:  # the Harmony settings among them, others refused
            config = with_template_kwargs(config, {}, harmony=True)
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


@dataclass(frozen=True, slots=True)
class NativeMarkers:
    """The text a native model writes around its reasoning and its tool calls, as mlx-lm's
    tokenizer reads them from the chat template and the vocabulary (``think_start``,
    ``tool_call_start``, ``tool_parser``, ...). A model without ``tool_parser`` cannot call
    tools; one without ``think_start`` writes no separate reasoning."""

    think_start: str | None = None
    think_end: str | None = None
    tool_call_start: str | None = None
    tool_call_end: str | None = None
    tool_parser: Callable[[str, Any], Any] | None = None
    tool_parser_name: str | None = None

    @classmethod
    def from_tokenizer(cls, tokenizer: object) -> NativeMarkers:
        """From mlx-lm's ``TokenizerWrapper`` (any object with its attributes)."""
        think = bool(getattr(tokenizer, "has_thinking", False))
        tools = bool(getattr(tokenizer, "has_tool_calling", False))
        parser = getattr(tokenizer, "tool_parser", None) if tools else None
        return cls(
            think_start=getattr(tokenizer, "think_start", None) if think else None,
            think_end=getattr(tokenizer, "think_end", None) if think else None,
            tool_call_start=getattr(tokenizer, "tool_call_start", None) if tools else None,
            tool_call_end=getattr(tokenizer, "tool_call_end", None) if tools else None,
            tool_parser=parser,
            tool_parser_name=getattr(parser, "__module__", None),
        )


_ANSWER, _THINK, _TOOL = 0, 1, 2


class _NativeParser:
    """Splits a native model's text into answer, reasoning (between the think markers) and
    tool calls (between the tool-call markers, read by mlx-lm's tool parser at the end).
    Text that may be the start of a marker is held back until it is clear, so a marker never
    reaches the answer; the streamed deltas join to the whole-text result."""

    def __init__(
        self, stop_tokens: frozenset[int], markers: NativeMarkers, *, thinking: bool
    ) -> None:
        self._stops = stop_tokens
        self._m = markers
        self._mode = _THINK if thinking and markers.think_end else _ANSWER
        self._pending = ""
        self._answer: list[str] = []
        self._thinking: list[str] = []
        self._calls: list[str] = []
        self._stop_token: int | None = None

    def _markers(self) -> tuple[tuple[str, int], ...]:
        """The markers that can end the current mode, with the mode each one starts."""
        m = self._m
        if self._mode == _THINK:
            return ((m.think_end, _ANSWER),) if m.think_end else ()
        if self._mode == _TOOL:
            return ((m.tool_call_end, _ANSWER),) if m.tool_call_end else ()
        out: list[tuple[str, int]] = []
        if m.think_start and m.think_end:
            out.append((m.think_start, _THINK))
        if m.tool_call_start and m.tool_parser is not None:
            out.append((m.tool_call_start, _TOOL))
        return tuple(out)

    def _emit(self, text: str, out: list[TextDelta]) -> None:
        if not text:
            return
        if self._mode == _ANSWER:
            self._answer.append(text)
            out.append(AnswerDelta(text))
        elif self._mode == _THINK:
            self._thinking.append(text)
            out.append(ThinkingDelta(text))
        else:
            self._calls[-1] += text

    def _split(self, text: str) -> tuple[TextDelta, ...]:
        buf = self._pending + text
        out: list[TextDelta] = []
        while True:
            markers = self._markers()
            found = min(
                ((buf.find(mark), mark, mode) for mark, mode in markers if mark in buf),
                default=None,
            )
            if found is None:
                break
            at, mark, mode = found
            self._emit(buf[:at], out)
            if mode == _TOOL:
                self._calls.append("")
            self._mode = mode
            buf = buf[at + len(mark) :]
        keep = 0
        for mark, _ in self._markers():
            for k in range(min(len(mark) - 1, len(buf)), keep, -1):
                if buf.endswith(mark[:k]):
                    keep = k
                    break
        self._pending = buf[len(buf) - keep :] if keep else ""
        self._emit(buf[: len(buf) - keep], out)
        return tuple(out)

    def feed(self, token: int, text: str) -> tuple[TextDelta, ...]:
        if self._stop_token is not None:
            return _NO_DELTAS
        if token in self._stops:
            self._stop_token = token
        if not text:
            return _NO_DELTAS
        return self._split(text)

    def flush(self) -> tuple[TextDelta, ...]:
        pending, self._pending = self._pending, ""
        out: list[TextDelta] = []
        self._emit(pending, out)
        return tuple(out)

    def finish(self) -> TurnOutput:
        calls: list[ToolCall] = []
        errors: list[str] = []
        parser = self._m.tool_parser
        for text in self._calls:
            try:
                parsed = parser(text, None) if parser is not None else None
            except Exception as error:
                errors.append(f"a tool call the tool parser cannot read ({error}): {text!r}")
                continue
            for call in parsed if isinstance(parsed, list) else [parsed]:
                if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                    errors.append(f"a tool call without a name: {text!r}")
                    continue
                arguments = call.get("arguments", {})
                if not isinstance(arguments, str):
                    arguments = json.dumps(arguments, ensure_ascii=False)
                calls.append(ToolCall(f"functions.{call['name']}", arguments))
        return _native_output(
            "".join(self._answer),
            "".join(self._thinking),
            tuple(calls),
            self._stop_token,
            tuple(errors),
        )


def _native_output(
    text: str,
    thinking: str = "",
    calls: tuple[ToolCall, ...] = (),
    stop_token: int | None = None,
    errors: tuple[str, ...] = (),
) -> TurnOutput:
    truncated = stop_token is None
    messages: list[Message] = []
    if thinking:
        messages.append(Message.analysis(thinking))
    if text:
        messages.append(Message.assistant(text))
    messages.extend(c.to_message() for c in calls)
    return TurnOutput(
        final=text,
        analysis=thinking,
        tool_calls=calls,
        messages=tuple(messages),
        stop_token=stop_token,
        truncated=truncated,
        final_closed=not truncated and bool(text),
        called_tool=bool(calls) and not truncated,
        raw_text=text,
        errors=errors,
    )


def _template_tool(tool: FunctionTool) -> dict[str, Any]:
    parameters = tool.parameters or {"type": "object", "properties": {}}
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": parameters},
    }


def _template_call(message: Message) -> dict[str, Any]:
    """An assistant tool-call message as the chat templates expect it (arguments as an
    object when they are JSON, as Hugging Face's convention has it)."""
    try:
        arguments: object = json.loads(message.text)
    except ValueError:
        arguments = message.text
    name = (message.recipient or "").removeprefix("functions.")
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


class NativeAdapter:
    """Any non-Harmony model: the tokenizer's chat template in, text out.

    The system message is the prompt config's ``developer_instructions`` (none when unset);
    example dialogues and the greeting follow. With `NativeMarkers` from mlx-lm's tokenizer,
    the text between the think markers is reasoning (`ThinkingDelta`), and a model with a tool
    parser gets the function tools through its template (``tools=``) and its calls come back
    as ``functions.*`` `ToolCall`s; tool rounds go back through the template as ``tool_calls``
    and ``tool`` messages. Reasoning of earlier turns is left out. A model whose template
    opens the reasoning itself (the prompt ends with the think marker) starts in reasoning.
    """

    name = "native"

    def __init__(
        self,
        *,
        apply_chat_template: Callable[..., list[int]],
        decode: Callable[[Sequence[int]], str],
        stop_tokens: Iterable[int],
        markers: NativeMarkers | None = None,
    ) -> None:
        self._apply_chat_template = apply_chat_template
        self._decode = decode
        self._stop_tokens = frozenset(stop_tokens)
        self.markers = markers or NativeMarkers()
        self._opens_thinking = self._template_opens_thinking()

    @property
    def supports_tools(self) -> bool:
        return self.markers.tool_parser is not None

    @property
    def stop_tokens(self) -> frozenset[int]:
        return self._stop_tokens

    def _template_opens_thinking(self) -> bool:
        start = self.markers.think_start
        if not start:
            return False
        try:
            prompt = self._apply_chat_template([{"role": "user", "content": "Hi"}])
            return self._decode(list(prompt)).rstrip().endswith(start)
        except Exception:  # a template that needs more than one user message: assume not
            return False

    def render(
        self,
        turns: Sequence[Turn],
        *,
        config: PromptConfig,
        tools: ToolDeclarations = _NO_TOOLS,
        function_tools: Sequence[FunctionTool] = (),
        force_final: bool = False,
    ) -> list[int]:
        with_tools = self.supports_tools
        messages: list[dict[str, Any]] = []
        if config.developer_instructions:
            messages.append({"role": "system", "content": config.developer_instructions})
        for m in _prefix_messages(config):
            messages.append({"role": m.role.value, "content": m.text})
        for turn in turns:
            if turn.user is not None:
                messages.append({"role": "user", "content": turn.user.text})
            for m in turn.replies:
                if m.role is Role.ASSISTANT and m.recipient and with_tools:
                    last = messages[-1] if messages else None
                    if last is None or last["role"] != "assistant" or "tool_calls" not in last:
                        last = {"role": "assistant", "content": "", "tool_calls": []}
                        messages.append(last)
                    last["tool_calls"].append(_template_call(m))
                elif m.role is Role.TOOL and with_tools:
                    name = (m.name or "").removeprefix("functions.")
                    messages.append({"role": "tool", "name": name, "content": m.text})
                elif m.role is Role.ASSISTANT and m.channel in (None, "final") and not m.recipient:
                    messages.append({"role": "assistant", "content": m.text})
        declared = [_template_tool(t) for t in function_tools] if with_tools else []
        kwargs = config.chat_template_args  # with_template_kwargs refused the reserved keys
        if declared:
            return list(self._apply_chat_template(messages, tools=declared, **kwargs))
        return list(self._apply_chat_template(messages, **kwargs))

    def make_stream_parser(self, *, force_final: bool = False) -> OutputParser:
        return _NativeParser(self._stop_tokens, self.markers, thinking=self._opens_thinking)

    def parse(self, tokens: Sequence[int], *, force_final: bool = False) -> TurnOutput:
        tokens = list(tokens)
        stop = next((i for i, t in enumerate(tokens) if t in self._stop_tokens), None)
        body = tokens if stop is None else tokens[:stop]
        parser = _NativeParser(frozenset(), self.markers, thinking=self._opens_thinking)
        parser.feed(-1, self._decode(body))
        parser.flush()
        output = parser.finish()
        truncated = stop is None
        return replace(
            output,
            stop_token=None if stop is None else tokens[stop],
            truncated=truncated,
            final_closed=not truncated and bool(output.final),
            called_tool=bool(output.tool_calls) and not truncated,
        )

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
        markers=NativeMarkers.from_tokenizer(getattr(generator, "tokenizer", None)),
    )
