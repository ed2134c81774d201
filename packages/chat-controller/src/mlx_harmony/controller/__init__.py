"""The chat turn shared by the CLI and the server: prompt config, turns, retries, commands.

It turns a conversation and a prompt config into prompt tokens (through an adapter: Harmony
for gpt-oss, the chat template for other models), runs the model, reads the answer, recovers
when the model misbehaves (runs out of tokens, only thinks, loops), runs the built-in tools of
`mlx_harmony.tools` (re-exported here: `ToolRegistry`, `ToolResult`, ...) and records the turn
in a chat log. It speaks no HTTP: the CLI owns the front-end loop and the server backend.

Importing it does not import mlx-generate (nor mlx-lm): only `LocalBackend` with a real
`TokenGenerator` needs them, so HTTP front ends start fast. Test doubles live in
`mlx_harmony.controller.testing`.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from mlx_harmony.tools import (
    ToolCall,
    ToolCallLike,
    ToolDeclarations,
    ToolRegistry,
    ToolResult,
    render_tool_result,
)

from .adapters import (
    ChatAdapter,
    HarmonyAdapter,
    NativeAdapter,
    OutputParser,
    TurnOutput,
    adapter_for,
)
from .backend import ChatBackend, ChatRequest, LocalBackend, TokenCount, context_length_of
from .commands import (
    COMMANDS,
    SETTINGS,
    Command,
    CommandAction,
    CommandResult,
    CommandSpec,
    SessionState,
    apply_command,
    complete_command,
    parse_command,
)
from .config import (
    SETTING_NAMES,
    ConfigError,
    ConfigWarning,
    DialogueMessage,
    LoopDetection,
    PromptConfig,
    ReasoningEffort,
    format_validation_error,
    render_config_reference,
    render_prompt_config_schema,
)
from .context import DEFAULT_MAX_TOKENS, ContextBudget, ContextOverflowError, fit_context
from .debug import DebugOptions, DebugTokens, DebugWriter
from .events import (
    AnswerDelta,
    CommandOutput,
    CommentaryDelta,
    ContextTrimmed,
    FrontendEvent,
    GenerationInfo,
    Quit,
    RetryEvent,
    RetryReason,
    StatsEvent,
    ThinkingDelta,
    ToolCallEvent,
    ToolResultEvent,
    TurnDone,
    TurnEvent,
)
from .placeholders import TIME_TOKENS, expand_placeholders, time_token_values
from .profiles import Profile, Profiles, ResolvedProfile
from .recording import drop_last_turn, record_turn, turns_from_log
from .retries import (
    DEFAULT_RETRY_POLICY,
    RetryDecision,
    RetryPolicy,
    decide_retry,
    looks_complete,
)
from .template_kwargs import (
    HARMONY_TEMPLATE_KEYS,
    TemplateKwargsError,
    with_request_template_kwargs,
    with_template_kwargs,
)
from .turn import (
    DEFAULT_MAX_TOOL_ROUNDS,
    TokenStreamer,
    hyperparameters_of,
    run_chat_turn,
    stream_chat_turn,
    with_xtc_special_tokens,
    xtc_special_tokens,
)
from .turns import (
    TRUNCATED_MARKER,
    FinishReason,
    RetryRecord,
    Turn,
    TurnResult,
    as_turn,
    timing_line,
)

try:
    __version__ = _version("mlx-harmony-chat-controller")
except _PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU runs), not installed
    __version__ = "0+unknown"

__all__ = [
    "COMMANDS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MAX_TOOL_ROUNDS",
    "DEFAULT_RETRY_POLICY",
    "HARMONY_TEMPLATE_KEYS",
    "SETTINGS",
    "SETTING_NAMES",
    "TIME_TOKENS",
    "TRUNCATED_MARKER",
    "AnswerDelta",
    "ChatAdapter",
    "ChatBackend",
    "ChatRequest",
    "Command",
    "CommandAction",
    "CommandOutput",
    "CommandResult",
    "CommandSpec",
    "CommentaryDelta",
    "ConfigError",
    "ConfigWarning",
    "ContextBudget",
    "ContextOverflowError",
    "ContextTrimmed",
    "DebugOptions",
    "DebugTokens",
    "DebugWriter",
    "DialogueMessage",
    "FinishReason",
    "FrontendEvent",
    "GenerationInfo",
    "HarmonyAdapter",
    "LocalBackend",
    "LoopDetection",
    "NativeAdapter",
    "OutputParser",
    "Profile",
    "Profiles",
    "PromptConfig",
    "Quit",
    "ReasoningEffort",
    "ResolvedProfile",
    "RetryDecision",
    "RetryEvent",
    "RetryPolicy",
    "RetryReason",
    "RetryRecord",
    "SessionState",
    "StatsEvent",
    "TemplateKwargsError",
    "ThinkingDelta",
    "TokenCount",
    "TokenStreamer",
    "ToolCall",
    "ToolCallEvent",
    "ToolCallLike",
    "ToolDeclarations",
    "ToolRegistry",
    "ToolResult",
    "ToolResultEvent",
    "Turn",
    "TurnDone",
    "TurnEvent",
    "TurnOutput",
    "TurnResult",
    "__version__",
    "adapter_for",
    "apply_command",
    "as_turn",
    "complete_command",
    "context_length_of",
    "decide_retry",
    "drop_last_turn",
    "expand_placeholders",
    "fit_context",
    "format_validation_error",
    "hyperparameters_of",
    "looks_complete",
    "parse_command",
    "record_turn",
    "render_config_reference",
    "render_prompt_config_schema",
    "render_tool_result",
    "run_chat_turn",
    "stream_chat_turn",
    "time_token_values",
    "timing_line",
    "turns_from_log",
    "with_request_template_kwargs",
    "with_template_kwargs",
    "with_xtc_special_tokens",
    "xtc_special_tokens",
]
