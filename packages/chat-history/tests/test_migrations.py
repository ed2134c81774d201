import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mlx_harmony.chat_history import (
    DOWNGRADES,
    LATEST_VERSION,
    MIGRATIONS,
    ChatLog,
    ChatLogError,
    Shape,
    detect_shape,
    detect_version,
    dumps_chat,
    effective_hyperparameters,
    loads_chat,
    meaning,
    meaning_difference,
    migrate,
    register_migration,
)
from mlx_harmony.chat_history import migrations as migrations_module
from mlx_harmony.chat_history.testing import generate_v1_log

GOLDEN = Path(__file__).parent / "golden"


def v1(*messages: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {"metadata": metadata, "messages": list(messages)}


def msg(role: str, content: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "timestamp": ts, **fields}


def test_the_registry_chains_every_version_to_the_latest() -> None:
    assert LATEST_VERSION == 3
    assert sorted(MIGRATIONS) == list(range(1, LATEST_VERSION))
    assert sorted(DOWNGRADES) == list(range(2, LATEST_VERSION + 1))
    with pytest.raises(ValueError, match="already registered"):
        register_migration(1)(lambda data: data)


@pytest.mark.parametrize(
    ("data", "version"),
    [
        ({"messages": []}, 1),
        ({"schema_version": 1, "messages": []}, 1),
        ({"schema_version": None, "messages": []}, 1),
        ({"schema_version": 2, "header": {}}, 2),
    ],
)
def test_detect_version(data: dict[str, Any], version: int) -> None:
    assert detect_version(data) == version


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"schema_version": 4}, "version 4 is newer than this tool reads (1 to 3); upgrade"),
        ({"schema_version": True}, "must be a whole number"),
        ({"schema_version": 2.0}, "must be a whole number"),
        ({"schema_version": -1}, "must be 1 to 3"),
        ([], "got a list"),
    ],
)
def test_detect_version_refuses_what_it_cannot_read(data: Any, fragment: str) -> None:
    with pytest.raises(ChatLogError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        detect_version(data)


def test_migrate_is_pure_and_deterministic() -> None:
    data = generate_v1_log(200, seed=5)
    data["messages"][3]["x_extra"] = {"nested": [1, 2]}
    before = copy.deepcopy(data)
    first = migrate(data)
    second = migrate(data)
    assert data == before  # the input is untouched
    assert first == second  # same input, same output: no clock, no random ids
    assert json.loads(json.dumps(first)) == first  # JSON-ready
    (chat,) = first["chats"].values()
    chat["messages"][3]["x_extra"]["nested"].append(3)
    assert data["messages"][3]["x_extra"] == {"nested": [1, 2]}  # no shared nested values
    assert migrate(first, to=3) is first


def test_migrate_rejects_a_target_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="to must be a version from 1 to 3, got 4"):
        migrate({"messages": []}, to=4)
    with pytest.raises(ValueError, match="got 0"):
        migrate({"messages": []}, to=0)


def test_naive_timestamps_are_utc_and_offsets_are_kept() -> None:
    out = migrate(
        v1(
            msg("user", "a", "2025-01-01T10:00:00"),
            msg("user", "b", "2025-01-01T12:00:00.25+02:00"),
            msg("user", "c", "2025-01-01T10:00:01Z"),
        ),
        to=2,
    )
    assert [m["timestamp"] for m in out["messages"]] == [
        "2025-01-01T10:00:00Z",
        "2025-01-01T12:00:00.250000+02:00",
        "2025-01-01T10:00:01Z",
    ]


def test_both_forms_of_thinking_map_faithfully() -> None:
    out = migrate(
        v1(
            msg("user", "q", "2025-01-01T10:00:00"),
            msg("assistant", "think", "2025-01-01T10:00:01", channel="analysis"),
            msg("assistant", "answer", "2025-01-01T10:00:02", analysis="inline think"),
        ),
        to=2,
    )
    separate, inline = out["messages"][1], out["messages"][2]
    assert (separate["channel"], separate["content"]) == ("analysis", "think")
    assert "analysis" not in separate
    assert (inline["channel"], inline["content"], inline["analysis"]) == (
        "final",
        "answer",
        "inline think",
    )


def test_tool_results_pair_with_their_calls_by_tool_name() -> None:
    out = migrate(
        v1(
            msg("assistant", "a", "2025-01-01T10:00:00", recipient="python", channel="analysis"),
            msg("assistant", "b", "2025-01-01T10:00:01", recipient="functions.f"),
            msg("tool", "fb", "2025-01-01T10:00:02", name="functions.f"),
            msg("tool", "pa", "2025-01-01T10:00:03", name="python"),
            msg("tool", "orphan", "2025-01-01T10:00:04", name="python"),
        ),
        to=2,
    )
    m = out["messages"]
    assert m[1]["channel"] == "commentary"  # a v1 call without a channel
    assert m[2]["tool_call_id"] == m[1]["tool_call_id"]
    assert m[3]["tool_call_id"] == m[0]["tool_call_id"]
    assert m[0]["tool_call_id"] != m[1]["tool_call_id"]
    assert "tool_call_id" not in m[4]


def test_generated_ids_never_collide_with_ids_in_the_file() -> None:
    out = migrate(
        v1(
            msg("user", "a", "2025-01-01T10:00:00"),
            msg("user", "b", "2025-01-01T10:00:01", id="v1-00000"),
        ),
        to=2,
    )
    ids = [m["id"] for m in out["messages"]]
    assert ids[1] == "v1-00000"
    assert len(set(ids)) == 2


def test_missing_hyperparameters_mean_none_recorded() -> None:
    data = v1(
        msg("assistant", "a", "2025-01-01T10:00:00", hyperparameters={"t": 1.0, "k": 5}),
        msg("assistant", "b", "2025-01-01T10:00:01"),
        msg("assistant", "c", "2025-01-01T10:00:02", hyperparameters={"t": 1.0}),
    )
    log = loads_chat(data)
    assert [effective_hyperparameters(log, i) for i in range(3)] == [
        {"t": 1.0, "k": 5},
        {},
        {"t": 1.0},
    ]
    back = migrate(migrate(data), to=1)["messages"]
    assert "hyperparameters" not in back[1]
    assert back[2]["hyperparameters"] == {"t": 1.0}


def test_hyperparameters_on_user_messages_survive_both_ways() -> None:
    data = v1(msg("user", "q", "2025-01-01T10:00:00", hyperparameters={"t": 0.1}))
    up = migrate(data, to=2)
    assert up["messages"][0]["legacy_hyperparameters"] == {"t": 0.1}
    assert "hyperparameters" not in up["messages"][0]
    assert migrate(up, to=1)["messages"][0]["hyperparameters"] == {"t": 0.1}


def test_downgrade_restores_full_values_and_keeps_bookkeeping() -> None:
    data = generate_v1_log(120, seed=9)
    up = migrate(data)
    down = migrate(up, to=1)
    assert "schema_version" not in down
    for original, restored in zip(data["messages"], down["messages"], strict=True):
        assert restored.get("hyperparameters") == original.get("hyperparameters")
    # ids and tool call ids ride along as extra keys, so going up again is lossless
    assert migrate(down) == up
    assert meaning_difference(meaning(data), meaning(down)) is None


def test_adding_a_version_is_one_registered_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """What adding v4 looks like: one function in the registry, found by every loader."""

    def v3_to_v4(data: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(data)
        out["schema_version"] = 4
        out["tags"] = []
        return out

    monkeypatch.setitem(MIGRATIONS, 3, v3_to_v4)
    monkeypatch.setattr(migrations_module, "LATEST_VERSION", 4)
    out = migrate(v1(msg("user", "hi", "2025-01-01T10:00:00")))
    assert out["schema_version"] == 4
    assert out["tags"] == []
    (chat,) = out["chats"].values()
    assert chat["messages"][0]["content"] == "hi"
    assert detect_version({"schema_version": 4}) == 4


def test_loading_any_version_returns_the_latest_model() -> None:
    data = generate_v1_log(50, seed=2)
    from_v1 = loads_chat(data)
    from_v2 = loads_chat(dumps_chat(from_v1))
    assert isinstance(from_v1, ChatLog)
    assert from_v1.schema_version == LATEST_VERSION
    assert dumps_chat(from_v1) == dumps_chat(from_v2)


def original_v2(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    chat = {"chat_id": "c", "metadata": {"chat_id": "c"}, "messages": list(messages)}
    return {
        "schema_version": 2,
        "chat_order": ["c"],
        "active_chat_id": "c",
        "chats": {"c": chat},
        **fields,
    }


def node(mid: str, parent: str | None, role: str, content: str, **fields: Any) -> dict[str, Any]:
    ts = {"unix": 1736208000.0, "iso": "2025-01-07T00:00:00Z"}
    return {
        "id": mid,
        "parent_id": parent,
        "role": role,
        "content": content,
        "timestamp": ts,
        **fields,
    }


@pytest.mark.parametrize(
    ("data", "shape"),
    [
        ({"messages": []}, Shape.V1),
        ({"schema_version": 1, "messages": []}, Shape.V1),
        ({"schema_version": 2, "header": {"id": "x"}, "messages": []}, Shape.V2),
        ({"schema_version": 2, "chats": {}, "chat_order": []}, Shape.ORIGINAL_V2),
        ({"schema_version": 3, "chats": {}}, Shape.V3),
    ],
)
def test_the_shape_not_the_number_tells_the_two_v2s_apart(
    data: dict[str, Any], shape: Shape
) -> None:
    assert detect_shape(data) is shape


def test_the_original_v2_stores_hyperparameter_changes_along_each_branch() -> None:
    data = original_v2(
        node("u", None, "user", "q"),
        node("a", "u", "assistant", "one", hyperparameters={"t": 0.5, "k": 1}),
        node("b", "u", "assistant", "two", hyperparameters={"t": 0.9, "k": 1}),
        node("c", "b", "assistant", "three"),  # none recorded
    )
    out = migrate(data)
    messages = out["chats"]["c"]["messages"]
    # b is beside a, not after it: its change is against the user message's values ({})
    assert messages[2]["hyperparameters"] == {"t": 0.9, "k": 1}
    assert messages[3]["hyperparameters_unset"] == ["k", "t"]
    log = loads_chat(data)
    assert [log.effective_hyperparameters(m) for m in "uabc"] == [
        {},
        {"t": 0.5, "k": 1},
        {"t": 0.9, "k": 1},
        {},
    ]
    assert meaning_difference(meaning(data), meaning(out)) is None


@pytest.mark.parametrize(
    ("data", "place", "fragment"),
    [
        (
            original_v2(node("a", None, "user", "x"), node("a", None, "user", "y")),
            "chats[c].messages[1].id",
            "'a' is used twice",
        ),
        (
            original_v2(node("b", "later", "user", "x"), node("later", None, "user", "y")),
            "chats[c].messages[0].parent_id",
            "is not a message before this one",
        ),
        (original_v2(chat_order=["c", "zzz"]), "chat_order[1]", "'zzz' is not in chats"),
        (original_v2(active_chat_id="zzz"), "active_chat_id", "'zzz' is not in chats"),
    ],
)
def test_an_original_v2_that_cannot_be_a_tree_is_refused(
    data: dict[str, Any], place: str, fragment: str
) -> None:
    with pytest.raises(ChatLogError) as info:
        migrate(data)
    assert info.value.place == place
    assert fragment in info.value.problem


def test_going_down_to_v2_refuses_what_v2_cannot_hold() -> None:
    log = loads_chat(original_v2(node("u", None, "user", "q"), node("a", "u", "assistant", "x")))
    assert migrate(log.model_dump(mode="json"), to=2)["messages"][1]["content"] == "x"
    log.active.retry()
    log.append_assistant("y")
    with pytest.raises(ChatLogError, match="the chat has branches"):
        migrate(log.model_dump(mode="json"), to=2)
    two = loads_chat(json.loads((GOLDEN / "original_v2" / "two_chats_branched.json").read_text()))
    with pytest.raises(ChatLogError, match="holds 2 chats and version 2 holds one"):
        migrate(two.model_dump(mode="json"), to=2)


def test_an_unknown_field_v3_now_uses_is_kept_under_a_legacy_name() -> None:
    data = v1(msg("user", "a", "2025-01-01T10:00:00", parent_id="mine"), chats="mine too")
    data["chats"] = data["metadata"].pop("chats")
    out = migrate(data)
    (chat,) = out["chats"].values()
    assert chat["messages"][0]["legacy_parent_id"] == "mine"
    assert "parent_id" not in chat["messages"][0]
    assert out["legacy_chats"] == "mine too"
    assert meaning_difference(meaning(data), meaning(out)) is None
    assert migrate(out, to=1)["messages"][0]["parent_id"] == "mine"
