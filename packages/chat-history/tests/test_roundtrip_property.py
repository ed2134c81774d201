"""Hypothesis: any v1 log migrates to the latest version and back with the same meaning, and
the append API keeps its invariants."""

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_harmony.chat_history import (
    HYPERPARAMETER_ROLES,
    check_chat,
    dumps_chat,
    effective_hyperparameters,
    json_equal,
    loads_chat,
    meaning,
    meaning_difference,
    migrate,
    new_chat,
)

# Values chosen so that equal-looking values of different JSON types (1, 1.0, true) and
# repeats across turns are common: the cases that break a naive diff.
HP_VALUES = st.one_of(
    st.sampled_from([0, 1, 40, 0.0, 1.0, 0.7, True, False, None, "low", "high", -1]),
    st.lists(st.sampled_from(["<|end|>", "<|call|>"]), max_size=2),
    st.dictionaries(st.sampled_from(["1", "2"]), st.sampled_from([-100, 5.5]), max_size=2),
)
HP_KEYS = st.sampled_from(
    ["temperature", "top_p", "top_k", "max_tokens", "seed", "reasoning_effort", "stop"]
)
HYPERPARAMETERS = st.dictionaries(HP_KEYS, HP_VALUES, max_size=5)
JSON = st.sampled_from([None, True, 3, -0.5, "x", "", [1, "a", None], {"k": [None]}, {}])
EXTRAS = st.dictionaries(st.sampled_from(["x_rating", "x_tags", "cache_key"]), JSON, max_size=2)
ZONES = st.sampled_from(
    [None, UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
)
TIMESTAMPS = st.builds(
    lambda dt, tz: dt.replace(tzinfo=tz).isoformat(),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    ZONES,
)
TEXT = st.text(max_size=30)


@st.composite
def v1_messages(draw: st.DrawFn) -> dict[str, Any]:
    role = draw(st.sampled_from(["system", "user", "assistant", "assistant", "tool"]))
    message: dict[str, Any] = {"role": role, "content": draw(TEXT), "timestamp": draw(TIMESTAMPS)}
    if role == "assistant":
        channel = draw(st.sampled_from([None, "final", "analysis", "commentary"]))
        if channel is not None:
            message["channel"] = channel
        if draw(st.booleans()):
            message["recipient"] = draw(
                st.sampled_from(["python", "browser.search", "functions.f"])
            )
        if draw(st.booleans()):
            message["analysis"] = draw(TEXT)
    if role == "tool":
        if draw(st.booleans()):
            message["name"] = draw(st.sampled_from(["python", "functions.f", "functions.g"]))
        if draw(st.booleans()):
            message["channel"] = draw(st.sampled_from(["commentary", "analysis"]))
    if role in HYPERPARAMETER_ROLES:
        if draw(st.integers(0, 9)) > 0:  # mostly present, sometimes "none recorded"
            message["hyperparameters"] = draw(HYPERPARAMETERS)
    elif draw(st.integers(0, 9)) == 0:
        message["hyperparameters"] = draw(HYPERPARAMETERS)  # legacy oddity, kept aside
    message.update(draw(EXTRAS))
    return message


@st.composite
def v1_logs(draw: st.DrawFn) -> dict[str, Any]:
    data: dict[str, Any] = {"messages": draw(st.lists(v1_messages(), max_size=20))}
    if draw(st.booleans()):
        data["schema_version"] = 1
    if draw(st.integers(0, 4)):
        metadata: dict[str, Any] = {
            "model_path": draw(st.none() | TEXT),
            "tools": draw(st.dictionaries(st.sampled_from(["browser", "python"]), st.booleans())),
            "hyperparameters": draw(HYPERPARAMETERS),
        }
        if draw(st.booleans()):
            metadata["prompt_config_path"] = draw(TEXT)
        if draw(st.booleans()):
            metadata["title"] = draw(TEXT)
        metadata.update(draw(EXTRAS))
        data["metadata"] = metadata
    data.update(draw(st.dictionaries(st.sampled_from(["app", "x_sync"]), JSON, max_size=1)))
    # through JSON text, as a file on disk would be
    return json.loads(json.dumps(data))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v1_logs())
def test_v1_logs_migrate_to_the_latest_and_back_with_the_same_meaning(data: dict[str, Any]) -> None:
    original = meaning(data)
    text = dumps_chat(loads_chat(json.dumps(data), check=False))
    log = loads_chat(text, check=False)
    assert meaning_difference(original, meaning(log)) is None
    assert dumps_chat(log) == text  # v3 text is stable under load and save

    down = migrate(json.loads(text), to=1)
    assert meaning_difference(original, meaning(down)) is None

    # spelled out, independent of meaning(): content, roles, timestamps, effective values
    for i, (before, after) in enumerate(zip(data["messages"], down["messages"], strict=True)):
        assert (after["role"], after["content"]) == (before["role"], before["content"])
        was = datetime.fromisoformat(before["timestamp"])
        assert datetime.fromisoformat(after["timestamp"]) == was.replace(tzinfo=was.tzinfo or UTC)
        if before["role"] in HYPERPARAMETER_ROLES:
            expected = before.get("hyperparameters") or {}
            assert json_equal(effective_hyperparameters(log, i), expected)
            assert json_equal(after.get("hyperparameters") or {}, expected)

    # v3 -> v1 -> v3 loses nothing, bookkeeping included. Equal as JSON: key order inside a
    # hyperparameter dict is not meaning (resolved values keep the order keys first appeared)
    again = json.loads(dumps_chat(loads_chat(migrate(down), check=False)))
    assert json_equal(again, json.loads(text))

    # ids, tool call ids and stored changes are made up by the migration: none may be wrong.
    # What may remain is what the input itself says: a tool call on the final channel (an
    # error), clocks that went back, results that cannot be paired (warnings).
    allowed = (
        "cannot be on the final channel",
        "goes back in time",
        "answers no known call",
        "already answered",
        "but call",
    )
    findings = check_chat(log)
    assert all(any(a in f.text for a in allowed) for f in findings), findings
    if not any(m.get("channel") == "final" and m.get("recipient") for m in data["messages"]):
        assert [str(f) for f in findings if f.is_error] == []


TURN = st.tuples(
    st.sampled_from(["user", "assistant", "call", "tool"]),
    st.none() | HYPERPARAMETERS,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(TURN, max_size=30))
def test_append_stores_only_changes_and_resolves_every_turn(turns: list[Any]) -> None:
    log = new_chat()
    expected: list[dict[str, Any] | None] = []
    current: dict[str, Any] = {}
    open_calls: list[str] = []
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    for i, (kind, hp) in enumerate(turns):
        ts = clock + timedelta(seconds=i)
        if kind == "user":
            log.append_user("u", timestamp=ts)
            expected.append(None)
            continue
        if kind == "assistant":
            log.append_assistant("a", hyperparameters=hp, timestamp=ts)
        elif kind == "call":
            open_calls.append(
                log.append_tool_call("python", "x", hyperparameters=hp, timestamp=ts).tool_call_id
            )
        elif open_calls:
            log.append_tool_result(open_calls.pop(0), "r", hyperparameters=hp, timestamp=ts)
        else:
            log.append_user("u", timestamp=ts)
            expected.append(None)
            continue
        if hp is not None:
            current = dict(hp)
        expected.append(dict(current))

    previous: dict[str, Any] = {}
    for i, (message, want) in enumerate(zip(log.messages, expected, strict=True)):
        if want is None:
            continue
        assert json_equal(effective_hyperparameters(log, i), want)
        for key, value in (message.hyperparameters or {}).items():
            assert key not in previous or not json_equal(previous[key], value)  # a real change
        previous = want
    assert check_chat(log) == []
    assert log.header.hyperparameters == current
