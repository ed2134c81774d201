import copy
import json
from typing import Any

import pytest

from mlx_harmony.chat_history import (
    DOWNGRADES,
    LATEST_VERSION,
    MIGRATIONS,
    ChatLog,
    ChatLogError,
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


def v1(*messages: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {"metadata": metadata, "messages": list(messages)}


def msg(role: str, content: str, ts: str, **fields: Any) -> dict[str, Any]:
    return {"role": role, "content": content, "timestamp": ts, **fields}


def test_the_registry_chains_every_version_to_the_latest() -> None:
    assert LATEST_VERSION == 2
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
        ({"schema_version": 3}, "version 3 is newer than this tool reads (1 to 2); upgrade"),
        ({"schema_version": True}, "must be a whole number"),
        ({"schema_version": 2.0}, "must be a whole number"),
        ({"schema_version": -1}, "must be 1 to 2"),
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
    first["messages"][3]["x_extra"]["nested"].append(3)
    assert data["messages"][3]["x_extra"] == {"nested": [1, 2]}  # no shared nested values
    assert migrate(first, to=2) is first


def test_migrate_rejects_a_target_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="to must be a version from 1 to 2, got 3"):
        migrate({"messages": []}, to=3)
    with pytest.raises(ValueError, match="got 0"):
        migrate({"messages": []}, to=0)


def test_naive_timestamps_are_utc_and_offsets_are_kept() -> None:
    out = migrate(
        v1(
            msg("user", "a", "2025-01-01T10:00:00"),
            msg("user", "b", "2025-01-01T12:00:00.25+02:00"),
            msg("user", "c", "2025-01-01T10:00:01Z"),
        )
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
        )
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
        )
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
        )
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
    up = migrate(data)
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
    """What adding v3 looks like: one function in the registry, found by every loader."""

    def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(data)
        out["schema_version"] = 3
        out["header"]["tags"] = []
        return out

    monkeypatch.setitem(MIGRATIONS, 2, v2_to_v3)
    monkeypatch.setattr(migrations_module, "LATEST_VERSION", 3)
    out = migrate(v1(msg("user", "hi", "2025-01-01T10:00:00")))
    assert out["schema_version"] == 3
    assert out["header"]["tags"] == []
    assert out["messages"][0]["content"] == "hi"
    assert detect_version({"schema_version": 3}) == 3


def test_loading_any_version_returns_the_latest_model() -> None:
    data = generate_v1_log(50, seed=2)
    from_v1 = loads_chat(data)
    from_v2 = loads_chat(dumps_chat(from_v1))
    assert isinstance(from_v1, ChatLog)
    assert from_v1.schema_version == LATEST_VERSION
    assert dumps_chat(from_v1) == dumps_chat(from_v2)
