"""Two writers of one log lose nothing: the advisory lock, the merge on save, the backups."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlx_harmony.chat_history import (
    ChatLogError,
    chat_lock,
    detect_shape,
    dumps_chat,
    load_chat,
    lock_path,
    make_chat,
    merge_chat_logs,
    new_chat,
    save_chat,
)
from mlx_harmony.chat_history.storage import parse_json

GOLDEN = Path(__file__).parent / "golden"

WRITER = textwrap.dedent(
    """
    import sys
    from mlx_harmony.chat_history import load_chat, save_chat

    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    log = load_chat(path)  # read once, like a chat session that stays open
    for i in range(n):
        log.append_user(f"{tag}-{i}")
        log.append_assistant(f"{tag}-{i} answer", hyperparameters={"t": i})
        save_chat(log, path)
    print(len(log.messages))
    """
)


def test_two_processes_appending_to_one_file_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    log = new_chat()
    log.append_user("shared start")
    save_chat(log, path)
    n = 25
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), tag, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("A", "B")
    ]
    outputs = [w.communicate(timeout=300) for w in writers]
    for writer, (_, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err
    # the writer that saved last holds the other's messages too: its saves merged them
    assert max(int(out) for out, _ in outputs) == 1 + 2 * 2 * n
    final = load_chat(path)  # loads clean: no error finding in the merged tree
    contents = [m.content for m in final.messages]
    assert len(contents) == 1 + 2 * 2 * n  # count = sum of the appends
    for tag in ("A", "B"):
        assert [c for c in contents if c.startswith(f"{tag}-") and "answer" not in c] == [
            f"{tag}-{i}" for i in range(n)
        ]
    # each writer's own turns stay one branch, answers after their questions
    for leaf in final.active.leaves():
        branch = [m.content for m in final.active.branch(leaf.id)]
        assert branch[0] == "shared start"


def test_a_stale_session_merges_what_another_saved(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    save_chat(new_chat(), path)
    first, second = load_chat(path), load_chat(path)
    first.append_user("from the first session")
    assert save_chat(first, path).merged_messages == 0
    second.append_user("from the second session")
    result = save_chat(second, path)
    assert result.merged_messages == 1
    contents = sorted(m.content for m in load_chat(path).messages)
    assert contents == ["from the first session", "from the second session"]
    # the second session now holds both, and its branch is still its own
    assert [m.content for m in second.branch()] == ["from the second session"]
    # another chat added elsewhere comes in too, without becoming the active one
    first.add_chat(make_chat(title="side"), activate=True)
    save_chat(first, path)
    assert save_chat(second, path).merged_chats == 1
    assert [c.header.title for c in load_chat(path).ordered_chats()] == [None, "side"]
    assert load_chat(path).active_chat_id == second.active_chat_id


def test_a_message_changed_by_hand_stops_the_save_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    log = new_chat()
    log.append_user("original text")
    save_chat(log, path)
    edited = json.loads(path.read_text())
    (chat,) = edited["chats"].values()
    chat["messages"][0]["content"] = "edited by hand"
    path.write_text(json.dumps(edited))
    before = path.read_bytes()
    log.append_user("more")
    with pytest.raises(ChatLogError, match="differs between this session and the file"):
        save_chat(log, path)
    assert path.read_bytes() == before  # nothing dropped, nothing written


def test_saving_over_a_file_that_is_no_chat_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.json"
    path.write_text('{"todo": ["buy milk"]}')
    with pytest.raises(ChatLogError, match="not a chat log this session can merge with"):
        save_chat(new_chat(), path)
    assert path.read_text() == '{"todo": ["buy milk"]}'


def test_saving_an_older_file_keeps_a_backup_once(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    source = GOLDEN / "original_v2" / "two_chats_branched.json"
    path.write_bytes(source.read_bytes())
    log = load_chat(path)  # migrated in memory only
    assert path.read_bytes() == source.read_bytes()
    log.active.append_user("resumed")
    result = save_chat(log, path)
    assert result.backup == tmp_path / "chat.json.v2.bak"
    assert result.backup.read_bytes() == source.read_bytes()
    assert detect_shape(parse_json(path.read_bytes())).value == "v3"
    log.active.append_user("again")
    assert save_chat(log, path).backup is None  # v3 on disk now: no second backup
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".chat.json.lock",
        "chat.json",
        "chat.json.v2.bak",
    ]


def test_a_differing_backup_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    path.write_bytes((GOLDEN / "v1" / "basic.json").read_bytes())
    (tmp_path / "chat.json.v1.bak").write_text("an older backup")
    result = save_chat(load_chat(path), path)
    assert result.backup == tmp_path / "chat.json.v1.1.bak"
    assert (tmp_path / "chat.json.v1.bak").read_text() == "an older backup"


HOLDER = textwrap.dedent(
    """
    import sys, time
    from mlx_harmony.chat_history import chat_lock

    with chat_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(30)
    """
)


def test_a_lock_held_too_long_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    save_chat(new_chat(), path)
    before = path.read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        log = load_chat(path)
        log.append_user("waiting")
        with pytest.raises(ChatLogError) as info:
            save_chat(log, path, lock_timeout=0.3)
        assert f"another program has held the lock {lock_path(path)}" in str(info.value)
        assert path.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
    save_chat(log, path)  # the lock is free again once the holder is gone
    assert load_chat(path).messages[-1].content == "waiting"


def test_chat_lock_is_reentrant_free_after_use(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    with chat_lock(path):
        pass
    with chat_lock(path, timeout=0.1):  # released: taken again at once
        assert lock_path(path).exists()


def test_values_json_cannot_hold_stop_the_save(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    log = new_chat()
    log.append_assistant("x", hyperparameters={"temperature": float("inf")})
    with pytest.raises(ChatLogError, match="a value is Infinity, which JSON cannot hold"):
        save_chat(log, path)
    assert not path.exists()
    log.append_assistant("y", hyperparameters={"temperature": float("nan")})
    with pytest.raises(ChatLogError, match="NaN"):
        dumps_chat(log)


def test_merge_adds_only_what_is_missing() -> None:
    ours = new_chat()
    ours.append_user("a")
    theirs = ours.model_copy(deep=True)
    theirs.append_user("b")
    ours.append_user("c")
    assert merge_chat_logs(ours, theirs) == (1, 0)
    assert sorted(m.content for m in ours.messages) == ["a", "b", "c"]
    assert merge_chat_logs(ours, theirs) == (0, 0)  # idempotent
    assert ours.branch()[-1].content == "c"
