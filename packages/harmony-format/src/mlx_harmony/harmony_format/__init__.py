"""Harmony prompt rendering and parsing over openai-harmony, offline.

Render a conversation into prompt tokens (``render_prompt``, or ``PromptRenderer`` to re-render
only new messages), parse what the model generated (``parse_completion``, or ``StreamParser``
token by token). The o200k vocabulary ships with the package; nothing is downloaded.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .encoding import (
    ASSISTANT,
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    FIRST_SPECIAL,
    MESSAGE,
    RETURN,
    START,
    STARTOFTEXT,
    STOP_TOKENS,
    VOCAB_SIZE,
    HarmonyToken,
    HarmonyVocabError,
    get_encoding,
    verify_vocab,
    vocab_dir,
)
from .messages import (
    Channel,
    DeveloperConfig,
    FunctionTool,
    Message,
    ReasoningEffort,
    Role,
    SystemConfig,
)
from .parse import ParsedCompletion, ParsePath, ToolCall, parse_completion
from .render import (
    PromptRenderer,
    RenderStats,
    render_completion,
    render_message,
    render_prompt,
    render_prompt_text,
)
from .stream import StreamDelta, StreamParser

try:
    __version__ = _version("mlx-harmony-format")
except _PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU runs), not installed
    __version__ = "0+unknown"

__all__ = [
    "ASSISTANT",
    "CALL",
    "CHANNEL",
    "CONSTRAIN",
    "END",
    "ENDOFTEXT",
    "FIRST_SPECIAL",
    "MESSAGE",
    "RETURN",
    "START",
    "STARTOFTEXT",
    "STOP_TOKENS",
    "VOCAB_SIZE",
    "Channel",
    "DeveloperConfig",
    "FunctionTool",
    "HarmonyToken",
    "HarmonyVocabError",
    "Message",
    "ParsePath",
    "ParsedCompletion",
    "PromptRenderer",
    "ReasoningEffort",
    "RenderStats",
    "Role",
    "StreamDelta",
    "StreamParser",
    "SystemConfig",
    "ToolCall",
    "__version__",
    "get_encoding",
    "parse_completion",
    "render_completion",
    "render_message",
    "render_prompt",
    "render_prompt_text",
    "verify_vocab",
    "vocab_dir",
]
