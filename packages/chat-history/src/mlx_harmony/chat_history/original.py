"""The original mlx-harmony's v2 log (several chats, messages in a tree), kept to read its files.

Its shape::

    {"schema_version": 2, "chat_order": [ids], "active_chat_id": id,
     "chats": {id: {"chat_id": id,
                    "metadata": {"chat_id", "model_path", "prompt_config_path",
                                 "last_model_path", "last_prompt_config_path",
                                 "hyperparameters", "last_hyperparameters",
                                 "max_context_tokens", "created_at": {unix, iso},
                                 "updated_at": {unix, iso}},
                    "messages": [{"id", "parent_id", "cache_key", "role", "content",
                                  "timestamp": {unix, iso}, "hyperparameters"?,
                                  "analysis"?}]}}}

Each message carries the full hyperparameters of its turn (none recorded when absent). The
original's v1 is the shape ``v1.py`` reads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mlx_harmony.chat_history.timestamps import LegacyTimestamp

__all__ = ["OriginalChatV2", "OriginalLogV2", "OriginalMessageV2", "OriginalMetadataV2"]

_CONFIG = ConfigDict(extra="allow")


class OriginalMetadataV2(BaseModel):
    """One chat's metadata: the first and the last-used settings."""

    model_config = _CONFIG

    chat_id: str | None = None
    title: str | None = None
    model_path: str | None = None
    prompt_config_path: str | None = None
    last_model_path: str | None = None
    last_prompt_config_path: str | None = None
    hyperparameters: dict[str, Any] | None = None
    last_hyperparameters: dict[str, Any] | None = None
    max_context_tokens: int | None = None
    created_at: LegacyTimestamp | None = None
    updated_at: LegacyTimestamp | None = None


class OriginalMessageV2(BaseModel):
    """One message; ``parent_id`` makes the chat a tree."""

    model_config = _CONFIG

    id: str
    parent_id: str | None = None
    role: str
    content: str
    timestamp: LegacyTimestamp
    channel: str | None = None
    recipient: str | None = None
    name: str | None = None
    analysis: str | None = None
    hyperparameters: dict[str, Any] | None = None


class OriginalChatV2(BaseModel):
    """One chat of the file."""

    model_config = _CONFIG

    chat_id: str | None = None
    metadata: OriginalMetadataV2 = Field(default_factory=OriginalMetadataV2)
    messages: list[OriginalMessageV2] = Field(default_factory=list)


class OriginalLogV2(BaseModel):
    """A whole file of the original's v2."""

    model_config = _CONFIG

    schema_version: Literal[2]
    chat_order: list[str] = Field(default_factory=list)
    active_chat_id: str | None = None
    chats: dict[str, OriginalChatV2]
