"""A Responses request's ``tools``: function tools, namespace tools and hosted tools.

- ``function`` tools go to planning's `declare_tools`, as a chat completion's do (see
  `translation`), not here;
- ``namespace`` tools (``{"type": "namespace", "name": "multi_agent_v1", "tools": [...]}``,
  sent by Codex CLI) become Harmony tool namespaces in the developer message
  (``namespace multi_agent_v1 { ... }``); the model calls ``multi_agent_v1.close_agent`` and the
  response's ``function_call`` item says ``name: "close_agent", namespace: "multi_agent_v1"``,
  as OpenAI's does;
- hosted tools (``web_search``, ``file_search``, ``code_interpreter``, ``mcp``, ...) are run by
  OpenAI's servers; this server runs none of them, so each is left out of the prompt with a
  warning (see `ResponsePlan.warnings`), not refused: agents send them by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlx_harmony.harmony_format import (
    DeveloperConfig,
    FunctionTool,
    Message,
    Role,
    render_message,
)

from ..errors import APIError
from ..tool_names import ToolNameMap
from .protocol import NamespaceToolSpec, OtherTool, ToolSpec

__all__ = ["RequestTools", "collect_tools"]


@dataclass(frozen=True, slots=True)
class RequestTools:
    """The request's namespace and hosted tools, sorted by what becomes of them."""

    namespaced: tuple[FunctionTool, ...]
    """Tools of namespace tools, with Harmony names and namespaces."""
    warnings: tuple[str, ...]
    """One line per tool left out."""


def collect_tools(tools: Sequence[ToolSpec], names: ToolNameMap) -> RequestTools:
    """Sort `tools` (function tools are skipped); the plain functions' names must already be
    in `names` (so that a made-up name never takes one the client uses), namespaces are added
    to it here."""
    namespaced: list[FunctionTool] = []
    warnings: list[str] = []
    for i, tool in enumerate(tools):
        if isinstance(tool, NamespaceToolSpec):
            namespaced.extend(_namespace_tools(tool, names, param=f"tools[{i}]"))
        elif isinstance(tool, OtherTool):
            warnings.append(
                f"tools[{i}] is a hosted {tool.type!r} tool, which this server does not run: it "
                "was left out of the prompt"
            )
    if namespaced:
        try:  # a schema openai-harmony cannot render is the client's mistake, not a 500
            render_message(Message(Role.DEVELOPER, DeveloperConfig(None, tuple(namespaced))))
        except Exception as error:
            raise APIError(
                400,
                f"tools: a namespace's tools cannot be rendered as a Harmony declaration: {error}",
                param="tools",
                code="invalid_tool",
            ) from None
    return RequestTools(tuple(namespaced), tuple(warnings))


def _namespace_tools(
    space: NamespaceToolSpec, names: ToolNameMap, *, param: str
) -> list[FunctionTool]:
    seen: set[str] = set()
    out: list[FunctionTool] = []
    for j, tool in enumerate(space.tools):
        where = f"{param}.tools[{j}]"
        if tool.name in seen:
            raise APIError(
                400,
                f"{where}: namespace {space.name!r} already has a tool named {tool.name!r}; "
                "tool names must be unique in a namespace",
                param=f"{where}.name",
                code="duplicate_tool",
            )
        seen.add(tool.name)
        namespace, _, name = names.recipient(tool.name, space.name).partition(".")
        try:
            out.append(
                FunctionTool(
                    name,
                    tool.description or "",
                    tool.parameters,
                    namespace=namespace,
                    namespace_description=space.description or "",
                )
            )
        except (TypeError, ValueError) as error:
            raise APIError(400, f"{where}: {error}", param=where, code="invalid_tool") from None
    return out
