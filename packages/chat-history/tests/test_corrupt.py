"""The corrupt-file corpus: every bad file gives one line naming the file, the place and the
problem, and nothing touches the file."""

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from mlx_harmony.chat_history import ChatLogError, load_chat
from mlx_harmony.chat_history.cli import main

CORRUPT = Path(__file__).parent / "corrupt"

# file -> (place, part of the problem, exit status of the CLI: 2 unreadable, 1 check errors)
EXPECTED = {
    "truncated.json": ("line 1 column 49", "not valid JSON: Unterminated string", 2),
    "empty.json": ("top level", "the file is empty", 2),
    "whitespace.json": ("top level", "the file is empty", 2),
    "latin1.json": ("byte 46", "not UTF-8 text (byte 0xe9)", 2),
    "deeply_nested.json": ("top level", "nested too deeply", 2),
    "top_level_list.json": ("top level", "a JSON object with a 'messages' list, got a list", 2),
    "top_level_string.json": ("top level", "got a string", 2),
    "no_messages.json": ("messages", "is missing (required)", 2),
    "messages_not_list.json": ("messages", "input should be a valid list", 2),
    "message_missing_role.json": ("messages[1].role", "is missing (required)", 2),
    "bad_timestamp.json": ("messages[0].timestamp", "write ISO 8601 such as", 2),
    "content_number.json": ("messages[0].content", "valid string, got 42", 2),
    "tools_not_bool.json": ("metadata.tools.python", 'valid boolean, got "yes"', 2),
    "future_version.json": ("schema_version", "version 7 is newer than this tool reads", 2),
    "version_string.json": ("schema_version", 'whole number such as 3, got "2"', 2),
    "version_zero.json": ("schema_version", "must be 1 to 3, got 0", 2),
    "nan.json": ("line 5 column 41", "NaN is not valid JSON", 2),
    "overflow_float.json": ("line 4 column 37", "the number 1e999 is too large for a float", 2),
    "huge_int.json": ("line 4 column 30", "a whole number of 5000 digits is too long", 2),
    "lone_surrogate.json": ("messages[0].content", "a lone surrogate \\ud800 is not valid", 2),
    "original_v2_unknown_parent.json": (
        "chats[c1].messages[1].parent_id",
        "'nope' is not a message before this one",
        2,
    ),
    "v2_naive_timestamp.json": ("messages[0].timestamp", "add an offset such as Z", 2),
    "v2_missing_id.json": ("messages[0].id", "is missing (required)", 2),
    "v2_missing_header.json": ("header", "is missing (required)", 2),
    "bad_role.json": ("messages[1] (id v1-00001)", "role 'bot' is not one of", 1),
    "v2_duplicate_ids.json": ("messages[1] (id m1)", "'m1' is already used by messages[0]", 1),
    "v2_unknown_tool_call.json": ("messages[1] (id t1)", "follows no tool call", 1),
    "v2_bad_channel.json": ("messages[1] (id m2)", "channel 'shout' is invalid", 1),
}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_the_corpus_and_the_expectations_match() -> None:
    assert sorted(p.name for p in CORRUPT.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loading_a_corrupt_file_names_file_place_and_problem(name: str) -> None:
    place, problem, _ = EXPECTED[name]
    path = CORRUPT / name
    before = path.read_bytes()
    with pytest.raises(ChatLogError) as info:
        load_chat(path)
    line = str(info.value)
    assert "\n" not in line
    assert line.startswith(f"{path}: {place}: ")
    assert problem in line
    assert (info.value.file, info.value.place) == (str(path), place)
    assert path.read_bytes() == before


def test_the_cli_leaves_every_corrupt_file_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "chats"
    shutil.copytree(CORRUPT, folder)
    before = _digest(folder)
    assert main([str(folder)]) == 2
    assert _digest(folder) == before  # no change, no backup, no temp file
    out, err = capsys.readouterr()
    for name, (place, problem, status) in EXPECTED.items():
        lines = [line for line in (out + err).splitlines() if line.startswith(f"{folder / name}:")]
        if status == 2:
            assert lines == [f"{folder / name}: {place}: " + lines[0].split(": ", 2)[2]]
            assert problem in lines[0]
        else:
            assert any(f"{place}: error: " in line and problem in line for line in lines)
            assert any("not migrated" in line for line in lines)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_cli_status_for_each_corrupt_file(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    shutil.copy(CORRUPT / name, path)
    assert main([str(path)]) == EXPECTED[name][2]
    assert main(["--check", str(path)]) == EXPECTED[name][2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_an_unreadable_file_is_one_line_too(tmp_path: Path) -> None:
    folder_named_json = tmp_path / "looks-like-a-log.json"
    folder_named_json.mkdir()
    with pytest.raises(ChatLogError, match=r"looks-like-a-log\.json: file: cannot read the file"):
        load_chat(folder_named_json)
    with pytest.raises(ChatLogError, match=r"missing\.json: file: cannot read the file: No such"):
        load_chat(tmp_path / "missing.json")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "locked.json"
    path.write_text('{"messages": []}')
    path.chmod(0)
    try:
        with pytest.raises(ChatLogError, match="Permission denied"):
            load_chat(path)
        assert main([str(path)]) == 2
        assert f"{path}: file: cannot read the file: Permission denied" in capsys.readouterr().err
    finally:
        path.chmod(0o600)
