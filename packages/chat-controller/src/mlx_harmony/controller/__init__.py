"""Prompt config, profiles, chat commands and built-in tools for mlx-harmony chats.

The model-independent half of the controller: nothing here loads a model or imports MLX
directly (`mlx_harmony.sampling`, which PromptConfig uses for its sampling keys, does).
"""

from importlib.metadata import version as _version

from .commands import (
    COMMANDS,
    SETTINGS,
    Command,
    CommandAction,
    CommandResult,
    CommandSpec,
    SessionState,
    Turn,
    apply_command,
    complete_command,
    parse_command,
)
from .config import (
    ConfigError,
    DialogueMessage,
    LoopDetection,
    PromptConfig,
    ReasoningEffort,
    format_validation_error,
    render_config_reference,
    render_prompt_config_schema,
)
from .placeholders import TIME_TOKENS, expand_placeholders, time_token_values
from .profiles import Profile, Profiles, ResolvedProfile
from .tools import (
    ToolCall,
    ToolCallLike,
    ToolDeclarations,
    ToolRegistry,
    ToolResult,
    render_tool_result,
)

__version__ = _version("mlx-harmony-chat-controller")

__all__ = [
    "COMMANDS",
    "SETTINGS",
    "TIME_TOKENS",
    "Command",
    "CommandAction",
    "CommandResult",
    "CommandSpec",
    "ConfigError",
    "DialogueMessage",
    "LoopDetection",
    "Profile",
    "Profiles",
    "PromptConfig",
    "ReasoningEffort",
    "ResolvedProfile",
    "SessionState",
    "ToolCall",
    "ToolCallLike",
    "ToolDeclarations",
    "ToolRegistry",
    "ToolResult",
    "Turn",
    "__version__",
    "apply_command",
    "complete_command",
    "expand_placeholders",
    "format_validation_error",
    "parse_command",
    "render_config_reference",
    "render_prompt_config_schema",
    "render_tool_result",
    "time_token_values",
]
