"""The response store (LRU, bounded), its setting and flag, and the input-item translation."""

from __future__ import annotations

import pytest

from mlx_harmony.server import ServerSettings
from mlx_harmony.server.cli import build_parser
from mlx_harmony.server.errors import APIError
from mlx_harmony.server.responses import ResponseStore, StoredResponse, to_conversation
from mlx_harmony.server.responses.protocol import (
    InputItemModel,
    MessageItem,
    ResponseCreateRequest,
    ResponseObject,
)
from mlx_harmony.server.tool_names import ToolNameMap


def stored(n: int) -> StoredResponse:
    response = ResponseObject.model_validate(
        {
            "id": f"resp_{n}",
            "created_at": n,
            "status": "completed",
            "model": "m",
            "output": [],
            "instructions": None,
            "previous_response_id": None,
            "reasoning": {},
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": True,
            "text": {},
            "store": True,
            "metadata": {},
        }
    )
    return StoredResponse(response, (MessageItem(role="user", content=str(n)),))


def test_the_store_evicts_the_least_recently_used() -> None:
    store = ResponseStore(max_size=2)
    store.put("a", stored(1))
    store.put("b", stored(2))
    assert store.get("a") == stored(1)  # a is now the most recently used
    store.put("c", stored(3))
    assert "b" not in store
    assert store.get("a") == stored(1)
    assert store.get("c") == stored(3)
    assert len(store) == 2


def test_put_replaces_and_delete_forgets() -> None:
    store = ResponseStore(max_size=3)
    store.put("a", stored(1))
    store.put("a", stored(2))
    assert len(store) == 1
    assert store.get("a") == stored(2)
    assert store.delete("a")
    assert not store.delete("a")
    assert store.get("a") is None


def test_the_size_must_be_positive_in_the_store_the_settings_and_the_flag() -> None:
    with pytest.raises(ValueError, match="max_size must be >= 1, got 0"):
        ResponseStore(max_size=0)
    with pytest.raises(ValueError, match="response_store_size must be >= 1, got 0"):
        ServerSettings(response_store_size=0)
    assert ServerSettings().response_store_size == 256
    assert build_parser().parse_args(["--response-store-size", "9"]).response_store_size == 9
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--response-store-size", "0"])


def items(raw: list[object]) -> list[InputItemModel]:
    body = ResponseCreateRequest.model_validate({"input": raw})
    assert isinstance(body.input, list)
    return list(body.input)


def test_items_become_turns_with_calls_joined_to_their_reply() -> None:
    conversation = to_conversation(
        items(
            [
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": [{"type": "input_text", "text": "Time?"}]},
                {"type": "reasoning", "content": [{"type": "reasoning_text", "text": "Clock."}]},
                {"role": "assistant", "content": "Checking.", "phase": "commentary"},
                {"type": "function_call", "call_id": "c1", "name": "now", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "zone", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "noon"},
                {"type": "function_call_output", "call_id": "c2", "output": "UTC"},
            ]
        ),
        ToolNameMap(["now", "zone"]),
        instructions="Answer briefly.",
    )
    assert conversation.instructions == "Answer briefly.\n\nBe kind."
    assert conversation.history == ()
    assert conversation.turn.user.content == "Time?"
    replies = [(m.name, m.channel, m.recipient, m.content) for m in conversation.turn.replies]
    assert replies == [
        (None, "analysis", None, "Clock."),
        (None, "commentary", None, "Checking."),  # a preamble: calls follow it
        (None, "commentary", "functions.now", "{}"),
        (None, "commentary", "functions.zone", "{}"),
        ("functions.now", "commentary", "assistant", "noon"),
        ("functions.zone", "commentary", "assistant", "UTC"),
    ]


def test_errors_name_the_item_relative_to_the_request_input() -> None:
    history = items([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    new = items([{"type": "function_call_output", "call_id": "nope", "output": "x"}])
    with pytest.raises(APIError) as caught:
        to_conversation([*history, *new], ToolNameMap([]), first=len(history))
    assert caught.value.param == "input[0].call_id"
    assert "'nope'" in caught.value.message
