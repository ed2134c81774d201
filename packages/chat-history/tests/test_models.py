import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from mlx_harmony.chat_history import (
    ChatLog,
    Role,
    check_chat,
    dumps_chat,
    effective_hyperparameters,
    loads_chat,
    new_chat,
    resolve_hyperparameters,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_only_changes_are_stored_and_every_turn_resolves_to_its_values() -> None:
    log = new_chat(created_at=T0)
    turns = [
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 0.2, "top_p": 0.9},
        {"temperature": 0.2},
    ]
    for i, hp in enumerate(turns):
        log.append_user(f"q{i}", timestamp=at(2 * i))
        log.append_assistant(f"a{i}", hyperparameters=hp, timestamp=at(2 * i + 1))
    answers = [m for m in log.messages if m.role == "assistant"]
    assert [m.hyperparameters for m in answers] == [
        {"temperature": 0.7, "top_p": 0.9},
        None,
        {"temperature": 0.2},
        None,
    ]
    assert [m.hyperparameters_unset for m in answers] == [[], [], [], ["top_p"]]
    for i, hp in enumerate(turns):
        assert effective_hyperparameters(log, 2 * i + 1) == hp
        # a user message sees the values in effect when it was written
        assert effective_hyperparameters(log, 2 * i) == (turns[i - 1] if i else {})
    assert log.header.hyperparameters == {"temperature": 0.2}
    assert check_chat(log) == []


def test_a_change_of_json_type_is_a_change() -> None:
    log = new_chat()
    log.append_assistant("a", hyperparameters={"top_k": 1})
    log.append_assistant("b", hyperparameters={"top_k": 1.0})
    log.append_assistant("c", hyperparameters={"top_k": True})
    log.append_assistant("d", hyperparameters={"top_k": True})
    stored = [m.hyperparameters for m in log.messages]
    assert stored == [{"top_k": 1}, {"top_k": 1.0}, {"top_k": True}, None]
    assert [type(effective_hyperparameters(log, i)["top_k"]) for i in range(4)] == [
        int,
        float,
        bool,
        bool,
    ]


def test_omitted_hyperparameters_mean_unchanged() -> None:
    log = new_chat()
    log.append_assistant("a", hyperparameters={"temperature": 1.0})
    call = log.append_tool_call("python", "print(1)")
    result = log.append_tool_result(call.tool_call_id, "1")
    assert call.hyperparameters is None
    assert result.hyperparameters is None
    assert effective_hyperparameters(log, -1) == {"temperature": 1.0}


def test_header_tracks_times_and_last_used_values() -> None:
    log = ChatLog.model_validate(
        {"chat_order": ["c1"], "active_chat_id": "c1", "chats": {"c1": {"header": {"id": "c1"}}}}
    )
    assert log.schema_version == 3
    assert log.header.created_at is None
    log.append_user("hi", timestamp=at(5))
    assert log.header.created_at == at(5)
    assert log.header.updated_at == at(5)
    log.append_assistant("hello", hyperparameters={"seed": 3}, timestamp=at(9))
    assert log.header.created_at == at(5)
    assert log.header.updated_at == at(9)
    assert log.header.hyperparameters == {"seed": 3}
    log.append_user("late clock", timestamp=at(1))  # an earlier time never moves updated_at back
    assert log.header.updated_at == at(9)


def test_append_rejects_what_the_schema_cannot_hold() -> None:
    log = new_chat()
    with pytest.raises(ValueError, match="timezone-aware"):
        log.append_user("hi", timestamp=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="role must be one of"):
        log.append_message("developer", "x")
    with pytest.raises(ValueError, match="got channel 'final'"):
        log.append_user("x", channel="final")
    with pytest.raises(ValueError, match="not user messages"):
        log.append_user("x", hyperparameters={"temperature": 1.0})
    with pytest.raises(ValueError, match="append the call first"):
        log.append_tool_result("call_missing", "result")
    assert log.messages == []


def test_tool_call_and_result_are_paired() -> None:
    log = new_chat()
    log.append_user("weather?")
    call = log.append_tool_call("functions.get_weather", '{"city": "Oslo"}')
    result = log.append_tool_result(call.tool_call_id, "cold")
    assert call.role == Role.ASSISTANT
    assert call.channel == "commentary"
    assert call.tool_call_id
    assert call.tool_call_id.startswith("call_")
    assert result.tool_call_id == call.tool_call_id
    assert result.name == "functions.get_weather"
    assert check_chat(log) == []


def test_assistant_channel_defaults() -> None:
    log = new_chat()
    assert log.append_message("assistant", "x").channel == "final"
    assert log.append_message("assistant", "{}", recipient="python").channel == "commentary"
    assert log.append_message("tool", "1").channel is None


def test_effective_hyperparameters_index_range() -> None:
    log = new_chat()
    log.append_assistant("a", hyperparameters={"t": 1})
    log.append_assistant("b", hyperparameters={"t": 2})
    assert log.effective_hyperparameters(-2) == {"t": 1}
    assert log.effective_hyperparameters() == {"t": 2}
    with pytest.raises(IndexError, match="out of range for a chat of 2 messages"):
        effective_hyperparameters(log, 2)
    # the result is a copy: changing it changes nothing in the log
    log.effective_hyperparameters()["t"] = 99
    assert log.effective_hyperparameters() == {"t": 2}


def test_resolve_agrees_with_effective_at_every_index() -> None:
    from mlx_harmony.chat_history.testing import generate_v1_log

    log = loads_chat(generate_v1_log(300, seed=3))
    resolved = resolve_hyperparameters(log)
    assert len(resolved) == 300
    for i in range(0, 300, 7):
        assert resolved[i] == effective_hyperparameters(log, i)


def test_append_after_editing_the_list_diffs_against_the_real_last_turn() -> None:
    log = new_chat()
    log.append_assistant("a", hyperparameters={"t": 1})
    log.append_assistant("b", hyperparameters={"t": 2})
    log.messages.pop()  # e.g. /undo
    m = log.append_assistant("c", hyperparameters={"t": 2})
    assert m.hyperparameters == {"t": 2}
    assert log.effective_hyperparameters() == {"t": 2}


def test_unknown_fields_are_kept_at_every_level() -> None:
    data = {
        "schema_version": 2,
        "future": {"x": [1, None]},
        "header": {"id": "c", "pinned": True},
        "messages": [
            {
                "id": "m",
                "timestamp": "2026-01-01T00:00:00+01:00",
                "role": "assistant",
                "channel": "final",
                "content": "hi",
                "timing": {"generation_tokens": 3, "joules": 1.5},
                "stars": None,
            }
        ],
    }
    log = loads_chat(data)
    again = json.loads(dumps_chat(log))
    assert again["future"] == {"x": [1, None]}
    chat = again["chats"]["c"]
    assert chat["header"]["pinned"] is True
    assert chat["messages"][0]["stars"] is None
    assert chat["messages"][0]["timing"] == {"generation_tokens": 3, "joules": 1.5}
    assert chat["messages"][0]["timestamp"] == "2026-01-01T00:00:00+01:00"
    # and in v3 itself, the chat level too
    chat["archived"] = False
    assert json.loads(dumps_chat(loads_chat(again))) == again


def test_dump_leaves_defaults_out_but_always_says_the_version_first() -> None:
    log = new_chat(created_at=datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=2))))
    log.append_user("hi", timestamp=datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
    text = dumps_chat(log)
    assert text.startswith('{\n  "schema_version": 3,')
    (chat,) = json.loads(text)["chats"].values()
    message = chat["messages"][0]
    assert set(message) == {"id", "timestamp", "role", "content"}
    assert message["timestamp"] == "2026-01-01T00:01:00Z"
    assert chat["header"]["created_at"] == "2026-01-01T00:00:00+02:00"
