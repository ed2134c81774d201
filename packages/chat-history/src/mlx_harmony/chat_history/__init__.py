"""The chat-log schema, its versions, migrations and the migration utility.

Load any version, get the latest model, append turns, save atomically::

    from mlx_harmony.chat_history import load_chat, save_chat

    log = load_chat("chats/today.json")          # v1 or v2 on disk, ChatLog (v2) in memory
    log.append_user("And in Rust?")
    log.append_assistant("...", hyperparameters={"temperature": 0.7})
    save_chat(log, "chats/today.json")           # temp file, fsync, rename
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from mlx_harmony.chat_history.checks import Finding, Severity, check_chat
from mlx_harmony.chat_history.errors import ChatLogError, ChatLogWarning
from mlx_harmony.chat_history.hyperparameters import (
    apply_hyperparameter_change,
    diff_hyperparameters,
    json_equal,
)
from mlx_harmony.chat_history.meaning import meaning, meaning_difference
from mlx_harmony.chat_history.migrations import (
    DOWNGRADES,
    LATEST_VERSION,
    MIGRATIONS,
    detect_version,
    migrate,
    register_downgrade,
    register_migration,
)
from mlx_harmony.chat_history.models import (
    CHANNELS_BY_ROLE,
    HYPERPARAMETER_ROLES,
    Channel,
    ChatLog,
    ChatMessage,
    Header,
    Role,
    TimingStats,
    effective_hyperparameters,
    new_chat,
    new_id,
    resolve_hyperparameters,
)
from mlx_harmony.chat_history.storage import (
    dumps_chat,
    is_temp_file,
    load_chat,
    loads_chat,
    save_chat,
    write_atomic,
)

try:
    __version__ = _version("mlx-harmony-chat-history")
except _PackageNotFoundError:  # a source tree on PYTHONPATH (the GPU runs), not installed
    __version__ = "0+unknown"

__all__ = [
    "CHANNELS_BY_ROLE",
    "DOWNGRADES",
    "HYPERPARAMETER_ROLES",
    "LATEST_VERSION",
    "MIGRATIONS",
    "Channel",
    "ChatLog",
    "ChatLogError",
    "ChatLogWarning",
    "ChatMessage",
    "Finding",
    "Header",
    "Role",
    "Severity",
    "TimingStats",
    "__version__",
    "apply_hyperparameter_change",
    "check_chat",
    "detect_version",
    "diff_hyperparameters",
    "dumps_chat",
    "effective_hyperparameters",
    "is_temp_file",
    "json_equal",
    "load_chat",
    "loads_chat",
    "meaning",
    "meaning_difference",
    "migrate",
    "new_chat",
    "new_id",
    "register_downgrade",
    "register_migration",
    "resolve_hyperparameters",
    "save_chat",
    "write_atomic",
]
