"""The v3 tree: appending to the active branch, retry and undo that keep the abandoned
branch, listing and switching branches, several chats per file, and the checks on trees."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from mlx_harmony.chat_history import (
    ROOT,
    Chat,
    ChatLog,
    ChatLogError,
    check_chat,
    dumps_chat,
    loads_chat,
    make_chat,
    new_chat,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def conversation() -> tuple[ChatLog, Chat]:
    log = new_chat()
    chat = log.active
    chat.append_user("q1", timestamp=at(0), id="u1")
    chat.append_assistant("a1", hyperparameters={"t": 0.5}, timestamp=at(1), id="a1")
    chat.append_user("q2", timestamp=at(2), id="u2")
    chat.append_assistant("a2", timestamp=at(3), id="a2")
    return log, chat


def test_retry_keeps_the_old_answer_on_its_own_branch() -> None:
    log, chat = conversation()
    assert chat.retry().id == "u2"
    assert [m.id for m in chat.branch()] == ["u1", "a1", "u2"]
    chat.append_assistant("a2 again", hyperparameters={"t": 0.9}, timestamp=at(4), id="a2b")
    assert [m.id for m in chat.branch()] == ["u1", "a1", "u2", "a2b"]
    assert [m.id for m in chat.messages] == ["u1", "a1", "u2", "a2", "a2b"]  # nothing deleted
    assert [m.id for m in chat.leaves()] == ["a2", "a2b"]
    branches = chat.branches()
    assert [(b.leaf.id, b.length, b.fork.id if b.fork else None, b.active) for b in branches] == [
        ("a2", 4, "u2", False),
        ("a2b", 4, "u2", True),
    ]
    # values are resolved along each branch, not in list order
    assert chat.effective_hyperparameters("a2") == {"t": 0.5}
    assert chat.effective_hyperparameters("a2b") == {"t": 0.9}
    assert chat.message("a2b").hyperparameters == {"t": 0.9}
    assert check_chat(log) == []


def test_undo_goes_back_before_the_last_question_and_keeps_it() -> None:
    log, chat = conversation()
    left = chat.undo()
    assert [m.id for m in left] == ["u2", "a2"]
    assert chat.active_leaf_id == "a1"
    chat.append_user("q2 rephrased", timestamp=at(5), id="u2b")
    assert chat.message("u2b").parent_id == "a1"
    assert len(chat.messages) == 5
    assert chat.undo()[0].id == "u2b"
    assert chat.undo()[0].id == "u1"  # back to an empty branch
    assert chat.leaf() is None
    assert chat.active_leaf_id == ROOT
    assert chat.branch() == []
    with pytest.raises(ValueError, match="no user message on the active branch"):
        chat.undo()
    chat.append_user("a fresh start", timestamp=at(6), id="u0")
    assert chat.message("u0").parent_id is None
    again = loads_chat(dumps_chat(log))
    assert [m.id for m in again.active.branch()] == ["u0"]
    assert len(again.active.leaves()) == 3


def test_switch_branch_goes_to_the_newest_leaf_below_a_message() -> None:
    _, chat = conversation()
    chat.retry()
    chat.append_assistant("other", timestamp=at(4), id="a2b")
    assert chat.switch_branch("a2").id == "a2"
    assert chat.branch()[-1].id == "a2"
    assert chat.switch_branch("u1").id == "a2b"  # newest child at every fork
    chat.rewind("a1")
    assert chat.active_leaf_id == "a1"
    with pytest.raises(KeyError, match="no message with id 'nope'"):
        chat.switch_branch("nope")


def test_a_tool_result_pairs_only_with_a_call_on_its_branch() -> None:
    _, chat = conversation()
    call = chat.append_tool_call("python", "print(1)", timestamp=at(4))
    chat.rewind("a2")
    with pytest.raises(ValueError, match="no tool call with id"):
        chat.append_tool_result(call.tool_call_id or "", "1")
    chat.rewind(call.id)
    assert chat.append_tool_result(call.tool_call_id or "", "1").name == "python"


def test_several_chats_in_one_file() -> None:
    log, _ = conversation()
    first = log.active_chat_id
    other = log.add_chat(make_chat(title="second", created_at=at(10)))
    assert log.active_chat_id == other.header.id
    log.append_user("to the second chat", timestamp=at(11))
    assert [c.header.title for c in log.ordered_chats()] == [None, "second"]
    log.switch_chat(first)
    assert log.messages[-1].id == "a2"
    with pytest.raises(KeyError, match="no chat 'nope' in this file"):
        log.switch_chat("nope")
    with pytest.raises(ValueError, match="already in this file"):
        log.add_chat(other)
    again = loads_chat(dumps_chat(log))
    assert again.chat_order == log.chat_order
    assert again.chat(other.header.id).messages[0].content == "to the second chat"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d, c: d.update(chat_order=[]), "chat_order must list every chat id"),
        (lambda d, c: d.update(active_chat_id="zzz"), "active_chat_id 'zzz' is not a chat"),
        (lambda d, c: c["header"].update(id="other"), "it must equal its key"),
    ],
)
def test_a_v3_file_whose_chats_do_not_add_up_is_refused(change, fragment) -> None:  # type: ignore[no-untyped-def]
    log, _ = conversation()
    data = json.loads(dumps_chat(log))
    (chat,) = data["chats"].values()
    change(data, chat)
    with pytest.raises(ChatLogError, match=fragment):
        loads_chat(data)


def test_the_checks_follow_each_branch() -> None:
    log, _ = conversation()
    data = json.loads(dumps_chat(log))
    (raw,) = data["chats"].values()
    raw["messages"].append(
        {
            "id": "x",
            "parent_id": "gone",
            "timestamp": "2026-01-01T12:00:09Z",
            "role": "user",
            "content": "?",
        }
    )
    raw["messages"].append(
        {
            "id": "r",
            "parent_id": "a1",
            "timestamp": "2026-01-01T12:00:09Z",
            "role": "tool",
            "tool_call_id": "call-elsewhere",
            "content": "?",
        }
    )
    raw["active_leaf_id"] = "missing"
    with pytest.raises(ChatLogError) as info:
        loads_chat(data)
    texts = [str(f) for f in info.value.findings]
    assert "header: error: active_leaf_id 'missing' is not a message of this chat" in texts
    assert (
        "messages[4] (id x): error: parent_id 'gone' is not a message before this one in the chat"
        in texts
    )
    assert (
        "messages[5] (id r): error: tool result for call 'call-elsewhere' follows no tool call "
        "with that id" in texts
    )


def test_findings_name_the_chat_when_a_file_holds_several() -> None:
    log, _ = conversation()
    other = log.add_chat(make_chat())
    log.append_user("b", timestamp=at(10))
    log.append_user("a", timestamp=at(5))  # a clock that went back
    (finding,) = check_chat(log)
    assert finding.place == f"chats[{other.header.id}].messages[1] (id {finding.message_id})"
