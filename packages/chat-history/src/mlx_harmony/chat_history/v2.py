"""Version 2: this project's previous container (``header`` + ``messages``), kept to read old files.

It says ``schema_version: 2`` like the original mlx-harmony's v2 (``chats`` + ``chat_order``);
the shape tells them apart (see ``migrations.detect_shape``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from mlx_harmony.chat_history.hyperparameters import apply_hyperparameter_change
from mlx_harmony.chat_history.models import HYPERPARAMETER_ROLES, TimingStats

__all__ = ["ChatLogV2", "HeaderV2", "MessageV2", "resolve_hyperparameters_v2"]

_MODEL_CONFIG = ConfigDict(extra="allow", populate_by_name=True)


class MessageV2(BaseModel):
    """One message of a chat.

    ``hyperparameters`` holds only what changed since the previous assistant or tool message
    (``hyperparameters_unset`` the keys that stopped being set); ``effective_hyperparameters``
    resolves the full values of any turn.
    """

    model_config = _MODEL_CONFIG

    id: str
    timestamp: AwareDatetime
    role: str
    channel: str | None = None
    recipient: str | None = None
    """For a tool call: the tool addressed, e.g. ``python`` or ``functions.get_weather``."""
    name: str | None = None
    """For a tool result: the tool that answered."""
    tool_call_id: str | None = None
    """Pairs a tool call with its result."""
    content: str
    analysis: str | None = None
    """The thinking that led to this message, when it was kept with it."""
    hyperparameters: dict[str, Any] | None = None
    hyperparameters_unset: list[str] = Field(default_factory=list)
    timing: TimingStats | None = None


class HeaderV2(BaseModel):
    """What the chat is and how to resume it.

    ``model_path``, ``prompt_config_path``, ``tools`` and ``hyperparameters`` are the values last
    used (what a resumed session starts with); the per-turn history of hyperparameters lives in
    the messages.
    """

    model_config = _MODEL_CONFIG

    id: str
    created_at: AwareDatetime | None = None
    updated_at: AwareDatetime | None = None
    title: str | None = None
    model_path: str | None = None
    prompt_config_path: str | None = None
    tools: dict[str, bool] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)


class ChatLogV2(BaseModel):
    """A chat log of the latest schema version, as every loader returns it."""

    model_config = _MODEL_CONFIG

    schema_version: Literal[2]
    header: HeaderV2
    messages: list[MessageV2] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _default_schema_version(cls, data: Any) -> Any:
        # Required (so that a dump with exclude_defaults always writes it) yet optional to pass.
        if isinstance(data, dict) and "schema_version" not in data:
            data = {"schema_version": 2, **data}
        return data


def resolve_hyperparameters_v2(log: ChatLogV2) -> list[dict[str, Any]]:
    """The effective hyperparameters at every message of a v2 log (changes apply in list order)."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for message in log.messages:
        if message.role in HYPERPARAMETER_ROLES and (
            message.hyperparameters or message.hyperparameters_unset
        ):
            current = apply_hyperparameter_change(
                current, message.hyperparameters, message.hyperparameters_unset
            )
        out.append(current)
    return out
