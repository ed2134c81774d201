"""Lark grammars (llguidance's dialect) for structured outputs, Harmony-aware.

For gpt-oss the constraint leaves the reasoning free: any number of analysis messages, then the
constrained part (the final answer's JSON, or a tool call and its arguments). The completion
starts after the prompt's trailing ``<|start|>assistant``, so the first message's header starts
at ``<|channel|>`` (or at `` to=...`` for a tool call written with the recipient first). Special
tokens are named as ``<|...|>``: only the special token matches them, never text that spells them.

For other models the same JSON comes after an optional reasoning section (``<think>...</think>``)
or alone; the tokenizer's EOS ends it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FunctionSpec",
    "harmony_json_grammar",
    "harmony_tool_grammar",
    "json_grammar",
]

_NAME = re.compile(r"^[A-Za-z0-9_\-.]+$")

# Free text inside a message: any bytes of ordinary tokens (special tokens never match a regex).
_TEXT = "TEXT: /(?s:.*)/"

# Free analysis messages; each ends with <|end|> and the next header's `<|start|>assistant`.
_HARMONY_PREAMBLE = """\
start: (free <|end|> <|start|> "assistant")* answer
free: <|channel|> "analysis" <|message|> TEXT
"""


# One space after ':' and ',' (json.dumps's style), no other whitespace: free whitespace lets a
# sampled model pad forever before it closes the JSON.
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True)
class FunctionSpec:
    """A declared function tool: its name, its JSON-schema `parameters`, and whether a call's
    arguments must match them (``strict``; forced calls are always constrained)."""

    name: str
    parameters: Mapping[str, Any]
    strict: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"a function name may hold letters, digits, '_', '-' and '.', got {self.name!r}"
            )


def _json_rule(name: str, schema: Mapping[str, Any] | None) -> str:
    """A rule matching JSON for `schema`; None is any JSON object (``json_object`` mode)."""
    body = dict({"type": "object"} if schema is None else schema)
    body["x-guidance"] = {**_JSON_STYLE, **body.get("x-guidance", {})}
    return f"{name}: %json {json.dumps(body, sort_keys=True, ensure_ascii=False)}\n"


def harmony_json_grammar(schema: Mapping[str, Any] | None) -> str:
    """Free analysis, then ``<|channel|>final<|message|>`` + JSON for `schema` + ``<|return|>``."""
    return (
        _HARMONY_PREAMBLE
        + 'answer: <|channel|> "final" <|message|> body <|return|>\n'
        + _json_rule("body", schema)
        + _TEXT
        + "\n"
    )


def _call_rule(rule: str, recipient: str, arguments: str) -> str:
    """Both header layouts gpt-oss writes for a call: the recipient after the channel (the
    model's usual form) or before it (openai-harmony's rendering)."""
    to = json.dumps(f"to={recipient}")
    return (
        f'{rule}: <|channel|> "commentary " {to} " "? <|constrain|> "json" <|message|> '
        f"{arguments} <|call|>\n"
        f'    | " " {to} <|channel|> "commentary" " "? <|constrain|> "json" <|message|> '
        f"{arguments} <|call|>\n"
    )


def harmony_tool_grammar(functions: Sequence[FunctionSpec], *, required: bool) -> str:
    """Tool calls for gpt-oss: free analysis, then a call to one of `functions`.

    ``required=True`` (``tool_choice: "required"`` or a named function: pass just that one): the
    completion must end in a call, with arguments matching the function's `parameters`.
    ``required=False`` (``tool_choice: "auto"`` with strict tools): the model may answer in
    free text instead; a call to a strict function has constrained arguments, a call to any
    other declared function free arguments.
    """
    if not functions:
        raise ValueError("a tool constraint needs at least one function")
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise ValueError(f"function names must be distinct, got {names}")
    lines = [_HARMONY_PREAMBLE]
    alternatives = []
    for i, function in enumerate(functions):
        constrained = required or function.strict
        args = f"args{i}" if constrained else "TEXT"
        lines.append(_call_rule(f"call{i}", f"functions.{function.name}", args))
        if constrained:
            lines.append(_json_rule(args, function.parameters))
        alternatives.append(f"call{i}")
    if not required:
        alternatives.append('<|channel|> "final" <|message|> TEXT <|return|>')
    lines.append("answer: " + " | ".join(alternatives) + "\n")
    lines.append(_TEXT + "\n")
    return "".join(lines)


def json_grammar(
    schema: Mapping[str, Any] | None, *, reasoning: tuple[str, str] | None = ("<think>", "</think>")
) -> str:
    """JSON for `schema` (None: any object) for models other than gpt-oss, after an optional
    reasoning section delimited by `reasoning` (None: the JSON alone)."""
    if reasoning is None:
        return "start: body\n" + _json_rule("body", schema)
    open_, close = (json.dumps(s) for s in reasoning)
    return (
        f"start: ({open_} think /[ \\t\\n]*/)? body\n"
        + f"think[stop={close}]: /(?s:.*)/\n"
        + _json_rule("body", schema)
    )
