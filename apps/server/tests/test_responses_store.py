"""The response store (LRU, bounded), its setting and flag, and the input-item translation."""

from __future__ import annotations

import pytest

from mlx_harmony.server import ServerSettings
from mlx_harmony.server.cli import build_parser
from mlx_harmony.server.errors import APIError
from mlx_harmony.server.protocol import (
    AssistantMessage,
    DeveloperMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mlx_harmony.server.response_store import ResponseStore, StoredResponse
from mlx_harmony.server.responses import to_chat_messages
from mlx_harmony.server.responses_protocol import ResponseCreateRequest


def stored(n: int) -> StoredResponse:
    return StoredResponse({"id": f"resp_{n}"}, (n,))


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


def items(raw: list[object]) -> list[object]:
    body = ResponseCreateRequest.model_validate({"input": raw})
    assert isinstance(body.input, list)
    return list(body.input)


def test_items_become_chat_messages_with_calls_joined_to_their_reply() -> None:
    messages = to_chat_messages(
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
        instructions="Answer briefly.",
    )
    assert [type(m) for m in messages] == [
        DeveloperMessage,
        SystemMessage,
        UserMessage,
        AssistantMessage,
        AssistantMessage,
        ToolMessage,
        ToolMessage,
    ]
    assert messages[0].content == "Answer briefly."
    assert messages[1].content == "Be kind."
    assert messages[3].reasoning == "Clock."
    preamble = messages[4]
    assert preamble.content == "Checking."
    assert [(c.id, c.function.name) for c in preamble.tool_calls or ()] == [
        ("c1", "now"),
        ("c2", "zone"),
    ]
    assert [(m.tool_call_id, m.content) for m in messages[5:]] == [("c1", "noon"), ("c2", "UTC")]


def test_errors_name_the_item_relative_to_the_request_input() -> None:
    history = items([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    new = items([{"type": "function_call_output", "call_id": "nope", "output": "x"}])
    with pytest.raises(APIError) as caught:
        to_chat_messages([*history, *new], first=len(history))
    assert caught.value.param == "input[0].call_id"
    assert "'nope'" in caught.value.message
