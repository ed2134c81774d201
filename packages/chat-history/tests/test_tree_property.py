"""Hypothesis over trees: the original mlx-harmony's v2 (several chats, branched) and ours
(v2 files, and v3 trees grown with append, retry, undo and switch) migrate and save without
losing a message, a byte of text, a time, a value or an unknown field."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_harmony.chat_history import (
    HYPERPARAMETER_ROLES,
    check_chat,
    dumps_chat,
    json_equal,
    loads_chat,
    make_chat,
    meaning,
    meaning_difference,
    migrate,
    new_chat,
)
from mlx_harmony.chat_history.testing import generate_v1_log
from mlx_harmony.chat_history.v2 import ChatLogV2

T0 = 1736208000.0
HP_VALUES = st.one_of(
    st.sampled_from([0, 1, 40, 0.0, 1.0, 0.7, True, False, None, "low", "high", -1]),
    st.lists(st.sampled_from(["<|end|>", "<|call|>"]), max_size=2),
)
HYPERPARAMETERS = st.dictionaries(
    st.sampled_from(["temperature", "top_p", "top_k", "max_tokens", "seed", "stop"]),
    HP_VALUES,
    max_size=4,
)
JSON = st.sampled_from([None, True, 3, -0.5, "x", "", [1, "a", None], {"k": [None]}, {}])
EXTRAS = st.dictionaries(st.sampled_from(["x_rating", "x_tags"]), JSON, max_size=2)
TEXT = st.text(max_size=30)


@st.composite
def original_chats(draw: st.DrawFn, chat_id: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 12))):
        parent = (
            draw(st.none() | st.sampled_from([m["id"] for m in messages])) if messages else None
        )
        role = draw(st.sampled_from(["user", "assistant", "assistant", "tool", "system"]))
        seconds = T0 + draw(st.integers(0, 10**6)) + draw(st.sampled_from([0.0, 0.25, 0.5]))
        iso = datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
        form = draw(st.sampled_from(["object", "iso", "unix"]))
        stamp: Any = {
            "object": {"unix": seconds, "iso": iso},
            "iso": iso,
            "unix": {"unix": seconds},
        }[form]
        message: dict[str, Any] = {
            "id": f"{chat_id}-{i}",
            "parent_id": parent,
            "cache_key": f"k{i}",
            "role": role,
            "content": draw(TEXT),
            "timestamp": stamp,
        }
        if role == "assistant" and draw(st.booleans()):
            message["recipient"] = draw(st.sampled_from(["python", "browser.search"]))
            message["channel"] = "commentary"
        if role == "assistant" and draw(st.booleans()):
            message["analysis"] = draw(TEXT)
        if role == "tool":
            message.update(name="python", recipient="assistant", channel="commentary")
        # mostly on assistant and tool messages (sometimes none recorded), rarely on others
        recorded = draw(st.integers(0, 4)) > 0
        if (role in HYPERPARAMETER_ROLES and recorded) or draw(st.integers(0, 5)) == 0:
            message["hyperparameters"] = draw(HYPERPARAMETERS)
        message.update(
            draw(st.dictionaries(st.sampled_from(["x_rating", "x_tags"]), JSON, max_size=2))
        )
        messages.append(message)
    metadata: dict[str, Any] = {
        "chat_id": chat_id,
        "model_path": draw(st.none() | TEXT),
        "last_model_path": draw(st.none() | TEXT),
        "hyperparameters": draw(HYPERPARAMETERS),
        "last_hyperparameters": draw(HYPERPARAMETERS),
        "max_context_tokens": draw(st.none() | st.integers(1, 10**6)),
        "created_at": {"unix": T0, "iso": "2025-01-07T00:00:00Z"},
    }
    metadata.update(draw(st.dictionaries(st.sampled_from(["pinned", "profile"]), JSON, max_size=1)))
    return {"chat_id": chat_id, "metadata": metadata, "messages": messages}


@st.composite
def original_v2_logs(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3, unique=True))
    chats = {chat_id: draw(original_chats(chat_id)) for chat_id in ids}
    order = draw(st.permutations(ids))
    data: dict[str, Any] = {
        "schema_version": 2,
        "chat_order": list(order),
        "active_chat_id": draw(st.sampled_from(ids)),
        "chats": chats,
    }
    data.update(draw(st.dictionaries(st.sampled_from(["client", "x_sync"]), JSON, max_size=1)))
    return json.loads(json.dumps(data))


@pytest.mark.slow  # seconds: the quick tier stays under its budget
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(original_v2_logs())
def test_original_v2_trees_migrate_to_v3_losing_nothing(data: dict[str, Any]) -> None:
    original = meaning(data)
    text = dumps_chat(loads_chat(json.dumps(data), check=False))
    log = loads_chat(text, check=False)
    assert meaning_difference(original, meaning(log)) is None
    assert dumps_chat(log) == text  # v3 text is stable under load and save
    # spelled out, independent of meaning(): every message, by id, with its text and tree
    assert log.chat_order == data["chat_order"]
    assert log.active_chat_id == data["active_chat_id"]
    for chat_id, source in data["chats"].items():
        chat = log.chat(chat_id)
        assert [m.id for m in chat.messages] == [m["id"] for m in source["messages"]]
        for m, raw in zip(chat.messages, source["messages"], strict=True):
            assert (m.content, m.parent_id, m.role) == (
                raw["content"],
                raw["parent_id"],
                raw["role"],
            )
            assert m.model_extra.get("cache_key") == raw["cache_key"]
            if m.role in HYPERPARAMETER_ROLES:
                assert json_equal(
                    chat.effective_hyperparameters(m.id), raw.get("hyperparameters") or {}
                )
        assert len(chat.leaves()) == len(
            {m.id for m in chat.messages} - {m.parent_id for m in chat.messages}
        )
    assert [f for f in check_chat(log) if f.is_error and "final channel" not in f.text] == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 60), st.integers(0, 10**6))
def test_our_v2_migrates_to_v3_and_back_losing_nothing(n: int, seed: int) -> None:
    v2 = migrate(generate_v1_log(n, seed=seed), to=2)
    v3 = migrate(v2)
    assert meaning_difference(meaning(v2), meaning(v3)) is None
    assert meaning_difference(meaning(v2), meaning(migrate(v3, to=2))) is None

    def v2_text(data: dict[str, Any]) -> Any:
        return ChatLogV2.model_validate(data).model_dump(mode="json", exclude_defaults=True)

    assert json_equal(v2_text(migrate(v3, to=2)), v2_text(v2))  # one chat, one branch: all kept


OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["user", "assistant", "call+result", "retry", "undo", "switch", "new chat"]
        ),
        st.none() | HYPERPARAMETERS,
        st.integers(0, 1000),
    ),
    max_size=40,
)


@settings(max_examples=100, deadline=None)
@given(OPS, EXTRAS)
def test_v3_trees_grown_with_the_api_keep_every_branch(
    ops: list[Any], extra: dict[str, Any]
) -> None:
    log = new_chat()
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    written: dict[str, tuple[str, dict[str, Any] | None]] = {}  # id -> (content, values)
    current: dict[str, dict[str, Any]] = {}  # leaf id -> effective values there
    for i, (op, hp, pick) in enumerate(ops):
        chat = log.active
        ts = clock + timedelta(seconds=i)
        leaf = chat.leaf()
        here = current.get(leaf.id, {}) if leaf is not None else {}
        if op == "user":
            m = chat.append_user(f"u{i}", timestamp=ts, **extra)
            written[m.id], current[m.id] = (m.content, None), here
        elif op == "assistant":
            m = chat.append_assistant(f"a{i}", hyperparameters=hp, timestamp=ts)
            values = dict(hp) if hp is not None else here
            written[m.id], current[m.id] = (m.content, values), values
        elif op == "call+result":
            call = chat.append_tool_call("python", f"c{i}", hyperparameters=hp, timestamp=ts)
            values = dict(hp) if hp is not None else here
            written[call.id], current[call.id] = (call.content, values), values
            result = chat.append_tool_result(call.tool_call_id or "", f"r{i}", timestamp=ts)
            written[result.id], current[result.id] = (result.content, values), values
        elif op in ("retry", "undo"):
            go_back = chat.retry if op == "retry" else chat.undo
            if any(m.role == "user" for m in chat.branch()):
                go_back()
            else:
                with pytest.raises(ValueError, match="no user message on the active branch"):
                    go_back()
        elif op == "switch" and chat.messages:
            chat.switch_branch(chat.messages[pick % len(chat.messages)].id)
        elif op == "new chat":
            log.add_chat(make_chat(title=f"chat {i}"))

    text = dumps_chat(log)
    again = loads_chat(text)  # the checks find no error in any tree the API grows
    assert dumps_chat(again) == text
    assert meaning_difference(meaning(log), meaning(again)) is None
    seen = 0
    for chat in again.ordered_chats():
        for m in chat.messages:
            content, values = written[m.id]
            assert m.content == content
            if values is not None:
                assert json_equal(chat.effective_hyperparameters(m.id), values)
            seen += 1
    assert seen == len(written)  # retry and undo dropped nothing
