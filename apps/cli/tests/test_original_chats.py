"""Resuming chats of mlx-harmony 0.4 (its v1 and v2 files) with ``--chat``, branches after
``\\retry`` and ``\\undo``, two sessions on one file, and the display keys of 0.4's configs
(truncate_thinking / truncate_response, log_timing_stats, chats_dir, logs_dir, lazy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mlx_harmony.chat_history import load_chat
from mlx_harmony.cli.testing import ENTER, run_chat
from mlx_harmony.controller.testing import FakeBackend, FakeReply

DATA = Path(__file__).parent / "data" / "original"
ORIGINALS = sorted(DATA.glob("*.json"))


@pytest.mark.parametrize("original", ORIGINALS, ids=lambda p: p.stem)
def test_chat_resumes_an_original_file_and_saves_v3_after_a_backup(
    original: Path, tmp_path: Path
) -> None:
    chat = tmp_path / "old.json"
    shutil.copy(original, chat)
    raw = chat.read_bytes()
    before = load_chat(chat)
    history = [m.content for m in before.branch() if m.role == "user"]
    backend = FakeBackend(["Fine."])
    run = run_chat(
        ["--chat", str(chat), "--model", str(tmp_path)],
        "More?" + ENTER + "\\quit" + ENTER,
        backend=backend,
    )
    assert run.status == 0
    assert "Resumed" in run.screen
    [request] = backend.requests
    assert [t.user.text for t in request.history] == history
    saved = json.loads(chat.read_text())
    assert saved["schema_version"] == 3
    version = 1 if "v1" in original.stem else 2
    assert (tmp_path / f"old.json.v{version}.bak").read_bytes() == raw
    after = load_chat(chat)
    old_ids = {m.id for c in before.ordered_chats() for m in c.messages}
    new_ids = {m.id for c in after.ordered_chats() for m in c.messages}
    assert old_ids < new_ids  # nothing lost, the new turn added
    assert [m.content for m in after.branch()][-2:] == ["More?", "Fine."]


def test_retry_and_undo_keep_the_old_branch_and_branch_switches_back(tmp_path: Path) -> None:
    chat = tmp_path / "c.json"
    backend = FakeBackend(["first", "second", "third"])
    keys = [
        "Q1" + ENTER,
        "\\retry" + ENTER,
        "\\branches" + ENTER,
        "\\branch 1" + ENTER,
        "\\branch 7" + ENTER,
        "\\quit" + ENTER,
    ]
    run = run_chat(["--chat", str(chat)], "".join(keys), backend=backend)
    assert run.status == 0
    assert "* 2. 2 messages, ends with assistant: second" in run.screen
    assert "  1. 2 messages, ends with assistant: first" in run.screen
    assert "On branch 1: 1 turn." in run.screen
    assert "There are 2 branches" in run.screen
    log = load_chat(chat)
    assert [m.content for m in log.branch()] == ["Q1", "first"]
    assert sorted(b.leaf.content for b in log.active.branches()) == ["first", "second"]


def test_a_save_that_merges_another_session_says_so(tmp_path: Path) -> None:
    chat = tmp_path / "shared.json"
    first = run_chat(
        ["--chat", str(chat)], "A" + ENTER + "\\quit" + ENTER, backend=FakeBackend(["a"])
    )
    assert first.status == 0
    # Two sessions resume the same file; the second saves after the first did.
    one = run_chat(
        ["--chat", str(chat)], "B" + ENTER + "\\quit" + ENTER, backend=FakeBackend(["b"])
    )
    assert "another session" not in one.screen
    log_then = load_chat(chat)
    assert len(log_then.messages) == 4
    other = tmp_path / "other.json"
    shutil.copy(chat, other)
    session = run_chat(
        ["--chat", str(other)], "C" + ENTER + "\\quit" + ENTER, backend=FakeBackend(["c"])
    )
    assert session.status == 0
    # other.json's session saves into shared.json, which has a turn it never saw.
    run = run_chat(
        ["--chat", str(chat)],
        "D" + ENTER + f"\\save {other}" + ENTER + "\\quit" + ENTER,
        backend=FakeBackend(["d"]),
    )
    assert "another session had saved 2 messages" in run.screen
    merged = load_chat(other)
    contents = {m.content for m in merged.active.messages}
    assert {"A", "a", "B", "b", "C", "c", "D", "d"} <= contents


def _config(tmp_path: Path, **values: Any) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(values))
    return path


def test_truncation_and_timing_lines_follow_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path, truncate_thinking=10, truncate_response=12, log_timing_stats=True)
    reply = FakeReply(
        answer="The answer is long enough to cut.", thinking="Thinking at some length here."
    )
    run = run_chat(
        ["--prompt-config", str(config)],
        "Hi" + ENTER + "\\quit" + ENTER,
        backend=FakeBackend([reply]),
    )
    out = run.screen
    assert "The answer i" in out
    assert "long enough" not in out
    assert "Thinking a" in out
    assert "some length" not in out
    assert out.count("[truncated]") == 2
    assert "timing:" in out


def test_chats_dir_places_bare_names_and_save_without_a_name(tmp_path: Path) -> None:
    chats = tmp_path / "chats"
    config = _config(tmp_path, chats_dir="chats")
    run = run_chat(
        ["--prompt-config", str(config), "--chat", "today.json"],
        "Hi" + ENTER + "\\quit" + ENTER,
        backend=FakeBackend(["Hello."]),
    )
    assert run.status == 0
    assert load_chat(chats / "today.json").branch()[-1].content == "Hello."
    run = run_chat(
        ["--prompt-config", str(config)],
        "Yo" + ENTER + "\\save" + ENTER + "\\quit" + ENTER,
        backend=FakeBackend(["Hey."]),
    )
    dated = [p for p in chats.iterdir() if p.name.startswith("chat-")]
    assert len(dated) == 1
    assert load_chat(dated[0]).branch()[-1].content == "Hey."


def test_logs_dir_is_the_debug_folder_when_debug_is_on(tmp_path: Path) -> None:
    from mlx_harmony.cli.launch import debug_options
    from mlx_harmony.cli.options import build_chat_parser, parse_args
    from mlx_harmony.controller import PromptConfig

    config = PromptConfig(logs_dir=tmp_path / "logs")
    on = debug_options(parse_args(build_chat_parser(), ["--debug"]), config)
    assert on is not None
    assert on.folder == tmp_path / "logs"
    off = debug_options(parse_args(build_chat_parser(), []), config)
    assert off is None
    given = debug_options(parse_args(build_chat_parser(), ["--debug", "--debug-file", "x"]), config)
    assert given is not None
    assert given.folder == "x"
