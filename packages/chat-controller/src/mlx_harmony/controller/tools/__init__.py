"""Built-in gpt-oss tools (browser, python, apply_patch) behind one registry."""

from .base import Tool, ToolCall, ToolCallLike, ToolDeclarations, ToolResult, render_tool_result
from .browser import BrowserError, BrowserTool
from .patch import PatchError, PatchResult, apply_patch, parse_patch
from .python_tool import PythonRun, PythonTool
from .registry import ApplyPatchTool, ToolRegistry, apply_patch_instructions

__all__ = [
    "ApplyPatchTool",
    "BrowserError",
    "BrowserTool",
    "PatchError",
    "PatchResult",
    "PythonRun",
    "PythonTool",
    "Tool",
    "ToolCall",
    "ToolCallLike",
    "ToolDeclarations",
    "ToolRegistry",
    "ToolResult",
    "apply_patch",
    "apply_patch_instructions",
    "parse_patch",
    "render_tool_result",
]
