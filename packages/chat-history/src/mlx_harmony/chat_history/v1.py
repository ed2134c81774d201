"""Version 1: the legacy conversation file, as the tool's first releases wrote it.

The original mlx-harmony and this project's first releases wrote the same shape, with a few
differences this model reads alike: ``metadata.model`` / ``metadata.prompt_config`` for the
paths, ``tools`` as a list of names, and times as ISO text or ``{"unix", "iso"}`` objects.

A v1 file has no ``schema_version`` (or ``schema_version: 1``)::

    {"metadata": {"model_path": ..., "prompt_config_path": ..., "tools": {"python": true},
                  "hyperparameters": {"temperature": 0.7, ...}},
     "messages": [{"role": "user", "content": "Hi", "timestamp": "2025-08-10T09:30:00"},
                  {"role": "assistant", "content": "Hello!", "analysis": "Greet back.",
                   "timestamp": "2025-08-10T09:30:04", "hyperparameters": {...}}]}

Thinking appears in two forms, both kept as they are by the migration: older builds wrote it
as a separate assistant message with ``channel: "analysis"``, later builds as ``analysis`` text
on the answer. Naive timestamps were written from ``datetime.utcnow()`` and are read as UTC.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from mlx_harmony.chat_history.timestamps import LegacyTimestamp

__all__ = ["ConversationV1", "LegacyTimestamp", "MessageV1", "MetadataV1", "v1_channel"]


def _tools_as_dict(value: Any) -> Any:
    # The original tool wrote the enabled tools as a list of names (``[]`` when none).
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return dict.fromkeys(value, True)
    return value


_CONFIG = ConfigDict(extra="allow")


class MetadataV1(BaseModel):
    """The v1 ``metadata`` object: the settings the chat last ran with."""

    model_config = _CONFIG

    model_path: str | None = None
    prompt_config_path: str | None = None
    model: str | None = None
    """The original tool's name for ``model_path``."""
    prompt_config: str | None = None
    """The original tool's name for ``prompt_config_path``."""
    tools: Annotated[dict[str, StrictBool], BeforeValidator(_tools_as_dict)] = Field(
        default_factory=dict
    )
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    max_context_tokens: int | None = None
    created_at: LegacyTimestamp | None = None
    updated_at: LegacyTimestamp | None = None
    chat_id: str | None = None
    title: str | None = None


class MessageV1(BaseModel):
    """One v1 message. ``id``, ``tool_call_id`` and ``timing`` are absent from legacy files;
    the v2 -> v1 downgrade writes them so that going back up restores them."""

    model_config = _CONFIG

    role: str
    content: str
    timestamp: LegacyTimestamp
    channel: str | None = None
    analysis: str | None = None
    recipient: str | None = None
    name: str | None = None
    hyperparameters: dict[str, Any] | None = None
    id: str | None = None
    tool_call_id: str | None = None
    timing: dict[str, Any] | None = None


class ConversationV1(BaseModel):
    """A whole v1 file."""

    model_config = _CONFIG

    schema_version: Literal[1] | None = None
    metadata: MetadataV1 = Field(default_factory=MetadataV1)
    messages: list[MessageV1]


def v1_channel(message: MessageV1) -> str | None:
    """The channel a v1 message is on: assistant messages that name none are answers
    (``final``), or tool calls (``commentary``) when they have a recipient."""
    if message.channel is not None or message.role != "assistant":
        return message.channel
    return "commentary" if message.recipient else "final"
