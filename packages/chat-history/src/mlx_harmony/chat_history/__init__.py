"""The chat-log schema, its versions, migrations and the migration utility.

Load any version, get the latest model, append turns, save atomically::

    from mlx_harmony.chat_history import load_chat, save_chat

    log = load_chat("chats/today.json")    # any shape on disk, ChatLog (v3) in memory
    chat = log.active                        # one conversation: a tree of messages
    chat.append_user("And in Rust?")
    chat.append_assistant("...", hyperparameters={"temperature": 0.7})
    chat.retry()                             # the next answer starts a new branch
    save_chat(log, "chats/today.json")       # locked, merged, temp file, fsync, rename
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from mlx_harmony.chat_history.checks import check_chat
from mlx_harmony.chat_history.errors import ChatLogError, ChatLogWarning
from mlx_harmony.chat_history.findings import Finding, Severity
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
    Shape,
    detect_shape,
    detect_version,
    migrate,
    original_v2_to_v3,
    register_downgrade,
    register_migration,
)
from mlx_harmony.chat_history.models import (
    CHANNELS_BY_ROLE,
    HYPERPARAMETER_ROLES,
    ROOT,
    SCHEMA_VERSION,
    Branch,
    Channel,
    Chat,
    ChatLog,
    ChatMessage,
    Header,
    Role,
    TimingStats,
    effective_hyperparameters,
    make_chat,
    new_chat,
    new_id,
    resolve_hyperparameters,
)
from mlx_harmony.chat_history.storage import (
    SaveResult,
    backup_path,
    chat_lock,
    dumps_chat,
    is_lock_file,
    is_temp_file,
    load_chat,
    loads_chat,
    lock_path,
    merge_chat_logs,
    save_chat,
    write_atomic,
)
from mlx_harmony.chat_history.timestamps import Timestamp

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
    "ROOT",
    "SCHEMA_VERSION",
    "Branch",
    "Channel",
    "Chat",
    "ChatLog",
    "ChatLogError",
    "ChatLogWarning",
    "ChatMessage",
    "Finding",
    "Header",
    "Role",
    "SaveResult",
    "Severity",
    "Shape",
    "Timestamp",
    "TimingStats",
    "__version__",
    "apply_hyperparameter_change",
    "backup_path",
    "chat_lock",
    "check_chat",
    "detect_shape",
    "detect_version",
    "diff_hyperparameters",
    "dumps_chat",
    "effective_hyperparameters",
    "is_lock_file",
    "is_temp_file",
    "json_equal",
    "load_chat",
    "loads_chat",
    "lock_path",
    "make_chat",
    "meaning",
    "meaning_difference",
    "merge_chat_logs",
    "migrate",
    "new_chat",
    "new_id",
    "original_v2_to_v3",
    "register_downgrade",
    "register_migration",
    "resolve_hyperparameters",
    "save_chat",
    "write_atomic",
]
