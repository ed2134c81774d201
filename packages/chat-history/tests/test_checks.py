import warnings
from typing import Any

import pytest

from mlx_harmony.chat_history import (
    ChatLogError,
    ChatLogWarning,
    Finding,
    Severity,
    check_chat,
    loads_chat,
)


def m(i: int, role: str, **fields: Any) -> dict[str, Any]:
    """Message ``i``, one second after message ``i - 1``."""
    base: dict[str, Any] = {
        "id": f"m{i}",
        "timestamp": f"2026-01-01T10:00:{i:02d}Z",
        "role": role,
        "content": f"c{i}",
    }
    if role == "assistant":
        base["channel"] = "final"
    return base | fields


def log(*messages: dict[str, Any], **header: Any) -> dict[str, Any]:
    return {"schema_version": 2, "header": {"id": "c", **header}, "messages": list(messages)}


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


def test_a_clean_log_has_no_findings() -> None:
    assert (
        check_chat(
            log(
                m(0, "system"),
                m(1, "user"),
                m(2, "assistant", channel="analysis", hyperparameters={"t": 1}),
                m(3, "assistant", channel="commentary", recipient="python", tool_call_id="c1"),
                m(4, "tool", name="python", tool_call_id="c1"),
                m(5, "assistant", hyperparameters={"t": 2}, hyperparameters_unset=[]),
            )
        )
        == []
    )


@pytest.mark.parametrize(
    ("messages", "severity", "index", "text"),
    [
        ([m(0, "user"), m(1, "user", id="m0")], "error", 1, "'m0' is already used by messages[0]"),
        ([m(0, "user", id="")], "error", 0, "id is empty"),
        (
            [m(0, "user"), m(1, "user", timestamp="2026-01-01T09:59:00Z")],
            "warning",
            1,
            "goes back in time from messages[0]",
        ),
        ([m(0, "developer")], "error", 0, "role 'developer' is not one of"),
        ([m(0, "user", channel="final")], "error", 0, "channel 'final' is invalid for a user"),
        ([m(0, "assistant", channel=None)], "error", 0, "channel None is invalid"),
        (
            [
                m(0, "assistant", channel="analysis", recipient="python", tool_call_id="c1"),
                m(1, "tool", channel="final", name="python", tool_call_id="c1"),
            ],
            "error",
            1,
            "channel 'final' is invalid for a tool message (allowed: no channel, analysis, ",
        ),
        (
            [m(0, "assistant", recipient="python", tool_call_id="c1")],
            "error",
            0,
            "tool call to 'python' cannot be on the final channel",
        ),
        (
            [m(0, "assistant", channel="commentary", recipient="python")],
            "warning",
            0,
            "has no tool_call_id",
        ),
        ([m(0, "tool", tool_call_id="nope")], "error", 0, "follows no tool call with that id"),
        ([m(0, "tool")], "warning", 0, "answers no known call"),
        ([m(0, "user", tool_call_id="c1")], "error", 0, "neither a tool call"),
        ([m(0, "user", hyperparameters={"t": 1})], "error", 0, "a user message carries"),
        (
            [m(0, "assistant", hyperparameters={"t": 1}, hyperparameters_unset=["t"])],
            "error",
            0,
            "t are both set and unset",
        ),
        ([m(0, "assistant", hyperparameters={"": 1})], "error", 0, "empty name"),
        (
            [m(0, "assistant", hyperparameters_unset=["seed"])],
            "warning",
            0,
            "unsets hyperparameter 'seed', which is not set",
        ),
        (
            [
                m(0, "assistant", hyperparameters={"t": 1}),
                m(1, "assistant", hyperparameters={"t": 1}),
            ],
            "warning",
            1,
            "'t' is stored again with the same value 1",
        ),
    ],
)
def test_each_finding_names_the_message_and_the_problem(
    messages: list[dict[str, Any]], severity: str, index: int, text: str
) -> None:
    finding = only(check_chat(log(*messages)))
    assert finding.severity == severity
    assert finding.index == index
    assert finding.message_id == messages[index]["id"]
    assert text in finding.text
    assert str(finding) == f"messages[{index}] (id {messages[index]['id']}): {severity}: " + (
        finding.text
    )


def test_a_result_before_its_call_does_not_count_as_following_it() -> None:
    findings = check_chat(
        log(
            m(0, "tool", tool_call_id="c1"),
            m(1, "assistant", channel="commentary", recipient="python", tool_call_id="c1"),
        )
    )
    assert [(f.index, f.severity) for f in findings] == [(0, Severity.ERROR)]


def test_tool_pairing_findings() -> None:
    call = m(0, "assistant", channel="commentary", recipient="python", tool_call_id="c1")
    findings = check_chat(
        log(
            call,
            m(1, "tool", name="python", tool_call_id="c1"),
            m(2, "tool", name="browser", tool_call_id="c1"),
            m(3, "assistant", channel="commentary", recipient="python", tool_call_id="c1"),
        )
    )
    assert [(f.index, f.severity) for f in findings] == [
        (2, "warning"),  # answered twice
        (2, "warning"),  # by another tool than the one called
        (3, "error"),  # the call id is reused
    ]
    assert "already answered at messages[1]" in findings[0].text
    assert "is from 'browser' but call 'c1' addressed 'python'" in findings[1].text


def test_header_times_out_of_order() -> None:
    finding = only(
        check_chat(log(created_at="2026-01-02T00:00:00Z", updated_at="2026-01-01T00:00:00Z"))
    )
    assert (finding.index, finding.message_id, finding.place) == (None, None, "header")
    assert str(finding).startswith("header: warning: updated_at")


def test_check_chat_takes_a_v1_dict_too() -> None:
    data = {
        "messages": [
            {"role": "user", "content": "a", "timestamp": "2025-01-01T10:00:00"},
            {"role": "user", "content": "b", "timestamp": "2025-01-01T09:00:00"},
        ]
    }
    finding = only(check_chat(data))
    assert finding.place == "messages[1] (id v1-00001)"


def test_errors_stop_a_load_and_warnings_do_not() -> None:
    bad = log(m(0, "user"), m(1, "user", id="m0"), m(2, "tool"), m(3, "user", id="m0"))
    with pytest.raises(ChatLogError) as info:
        loads_chat(bad, file="chat.json")
    assert str(info.value) == (
        "chat.json: messages[1] (id m0): id 'm0' is already used by messages[0] "
        "(and 1 more; run mlx-harmony-migrate-chat --check)"
    )
    assert [f.index for f in info.value.findings] == [1, 2, 3]
    assert len(loads_chat(bad, check=False).messages) == 4  # a way to load it for repair

    odd = log(m(0, "user"), m(1, "tool"))
    seen: list[Finding] = []
    assert len(loads_chat(odd, on_warning=seen.append).messages) == 2
    assert [f.index for f in seen] == [1]
    with pytest.warns(ChatLogWarning, match=r"^x\.json: messages\[1\] \(id m1\): warning: "):
        loads_chat(odd, file="x.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loads_chat(odd, check=False)  # no checks, no warnings
