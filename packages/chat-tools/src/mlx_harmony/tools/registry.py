"""The enabled built-in tools in one place: who handles a recipient, and how to declare them.

Function tools the caller declares (in the developer message, or the server's OpenAI `tools`)
are not in the registry: `handles()` is False for them, so the chat turn hands those calls back
to the caller instead of running them. `functions.apply_patch` is the one function the registry
runs itself, when enabled.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib.resources import files
from types import TracebackType

from openai_harmony import ToolDescription

from .base import Tool, ToolCallLike, ToolDeclarations, ToolResult
from .browser import BrowserTool
from .patch import PatchError, apply_patch, patch_from_arguments
from .python_tool import PythonTool

__all__ = ["ApplyPatchTool", "ToolRegistry", "apply_patch_instructions"]


def apply_patch_instructions() -> str:
    """The developer-message text that teaches the model the V4A patch format."""
    return files("mlx_harmony.tools").joinpath("apply_patch.md").read_text("utf-8")


class ApplyPatchTool:
    """`functions.apply_patch`: declared as a function tool plus instructions, as gpt-oss's
    reference chat does, and applied inside `workspace` only."""

    def __init__(self, *, workspace: str | os.PathLike[str]) -> None:
        if not os.path.isdir(workspace):
            raise ValueError(
                f"apply_patch workspace {os.fspath(workspace)!r} is not a folder; create it "
                "or pass an existing folder"
            )
        self.workspace = os.path.realpath(workspace)

    @property
    def name(self) -> str:
        return "functions.apply_patch"

    def handles(self, recipient: str) -> bool:
        return recipient == "functions.apply_patch"

    def declarations(self) -> ToolDeclarations:
        tool = ToolDescription.new(
            "apply_patch",
            "Patch a file",
            parameters={
                "type": "string",
                "description": "Formatted patch code",
                "default": "*** Begin Patch\n*** End Patch\n",
            },
        )
        return ToolDeclarations(functions=(tool,), instructions=apply_patch_instructions())

    def execute(self, recipient: str, arguments: str) -> ToolResult:
        try:
            result = apply_patch(patch_from_arguments(arguments), root=self.workspace)
        except PatchError as error:
            return ToolResult(name=recipient, content=f"Error applying patch: {error}", error=True)
        return ToolResult(name=recipient, content=result.summary())

    def reset(self) -> None:
        """Nothing to forget: the files are the state."""

    def close(self) -> None:
        """Nothing to release."""


class ToolRegistry:
    """The enabled built-in tools, looked up by recipient; close it (or use `with`) when done."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self.tools: tuple[Tool, ...] = tuple(tools)
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"two tools share a name in {names}; register each tool once")

    @classmethod
    def from_flags(
        cls,
        *,
        browser: bool = False,
        python: bool = False,
        apply_patch: bool = False,
        workspace: str | os.PathLike[str] | None = None,
        search_url: str | None = None,
        browser_allow_private: bool = False,
        python_timeout_s: float = 30.0,
        python_memory_limit_mb: int = 2048,
        python_scratch_dir: str | os.PathLike[str] | None = None,
        python_allow_network: bool = False,
        python_allow_unsandboxed: bool = False,
    ) -> ToolRegistry:
        """The registry for the CLI's and the server's `--browser`, `--python`, `--apply-patch`."""
        tools: list[Tool] = []
        if browser:
            tools.append(BrowserTool(search_url=search_url, allow_private=browser_allow_private))
        if python:
            tools.append(
                PythonTool(
                    scratch_dir=python_scratch_dir,
                    timeout_s=python_timeout_s,
                    memory_limit_mb=python_memory_limit_mb,
                    allow_network=python_allow_network,
                    allow_unsandboxed=python_allow_unsandboxed,
                )
            )
        if apply_patch:
            if workspace is None:
                raise ValueError(
                    "apply_patch needs a workspace folder to edit: pass workspace=PATH "
                    "(the CLI's --workspace)"
                )
            tools.append(ApplyPatchTool(workspace=workspace))
        return cls(tools)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(tool.name for tool in self.tools)

    def __bool__(self) -> bool:
        return bool(self.tools)

    def get(self, recipient: str) -> Tool | None:
        """The tool for `recipient`, or None when the caller must handle the call."""
        return next((tool for tool in self.tools if tool.handles(recipient)), None)

    def handles(self, recipient: str) -> bool:
        return self.get(recipient) is not None

    def execute(self, call: ToolCallLike) -> ToolResult:
        """Run `call`; tool failures come back as a result with ``error=True``, never raised."""
        tool = self.get(call.recipient)
        if tool is None:
            enabled = ", ".join(self.names) or "none"
            raise KeyError(
                f"no built-in tool handles {call.recipient!r} (enabled: {enabled}); "
                "check registry.handles() first and return such calls to the caller"
            )
        try:
            return tool.execute(call.recipient, call.arguments)
        except Exception as error:  # a bug in a tool must not end the chat
            return ToolResult(
                name=call.recipient,
                content=f"Error: the {tool.name} tool failed: {error.__class__.__name__}: {error}",
                error=True,
            )

    def declarations(self) -> ToolDeclarations:
        out = ToolDeclarations()
        for tool in self.tools:
            out = out.merge(tool.declarations())
        return out

    def reset(self) -> None:
        for tool in self.tools:
            tool.reset()

    def close(self) -> None:
        for tool in self.tools:
            tool.close()

    def __enter__(self) -> ToolRegistry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
