"""Built-in gpt-oss tools (browser, python, apply_patch) behind one registry.

Needs no other mlx-harmony member: the chat controller runs these tools in a turn, and any
other Harmony loop may use them alone.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .base import Tool, ToolCall, ToolCallLike, ToolDeclarations, ToolResult, render_tool_result
from .browser import BrowserError, BrowserTool
from .patch import PatchError, PatchResult, apply_patch, parse_patch
from .python_tool import PythonRun, PythonTool
from .registry import ApplyPatchTool, ToolRegistry, apply_patch_instructions

try:
    __version__ = _version("mlx-harmony-chat-tools")
except _PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
    __version__ = "0+unknown"

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
    "__version__",
    "apply_patch",
    "apply_patch_instructions",
    "parse_patch",
    "render_tool_result",
]
