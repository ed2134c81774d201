"""``mlx-harmony-migrate-chat`` end to end on temp folders, in process and once for real."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlx_harmony.chat_history import cli as cli_module
from mlx_harmony.chat_history import (
    detect_version,
    dumps_chat,
    load_chat,
    meaning,
    meaning_difference,
)
from mlx_harmony.chat_history.cli import main

GOLDEN = Path(__file__).parent / "golden"
CLEAN_V1 = ["basic.json", "analysis_messages.json", "tools.json", "unknown_fields.json"]
CLEAN_V2 = ["basic.json", "tools.json"]


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A folder of v1 and v2 logs, plus things that are not logs."""
    folder = tmp_path / "chats"
    folder.mkdir()
    for name in CLEAN_V1:
        shutil.copy(GOLDEN / "v1" / name, folder / f"old-{name}")
    for name in CLEAN_V2:
        shutil.copy(GOLDEN / "v2" / name, folder / f"new-{name}")
    (folder / "notes.txt").write_text("not a log")
    (folder / ".hidden.json").write_text("not even JSON")
    (folder / ".old-basic.json.x1y2.tmp").write_text('{"messages": [')  # a crashed save
    (folder / "sub").mkdir()
    (folder / "dir.json").mkdir()  # a folder with a log-like name is not a log
    (folder / "sub" / "deep.json").write_text("ignored: folders are not searched")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_folder_of_mixed_versions_migrates_in_place_with_backups(
    mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(mixed)
    assert main([str(mixed)]) == 0
    after = snapshot(mixed)
    out = capsys.readouterr().out

    for prefix, version, names in (("old", 1, CLEAN_V1), ("new", 2, CLEAN_V2)):
        for name in names:
            path = mixed / f"{prefix}-{name}"
            backup = mixed / f"{prefix}-{name}.v{version}.bak"
            assert after[backup.name] == before[path.name]  # the original, byte for byte
            assert detect_version(json.loads(after[path.name])) == 3
            expected = GOLDEN / f"v{version}_to_v3" / name
            assert after[path.name].decode() == expected.read_text()
            original = json.loads(before[path.name])
            assert meaning_difference(meaning(original), meaning(load_chat(path))) is None
            assert f"{path}: v{version} -> v3 (" in out
            assert f"keeping the original as {backup}" in out
    for untouched in ("notes.txt", ".hidden.json", ".old-basic.json.x1y2.tmp"):
        assert after[untouched] == before[untouched]
    assert "6 migrated" in out
    locks = [name for name in after if name.endswith(".lock")]  # the advisory locks stay
    assert locks
    assert all(name.startswith(".") for name in locks)
    assert all(after[name] == b"" for name in locks)

    # a second run finds nothing to do and keeps the backups as they are
    assert main([str(mixed)]) == 0
    assert snapshot(mixed) == after
    assert "6 already current" in capsys.readouterr().out


def test_dry_run_says_what_would_change_and_writes_nothing(
    mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(mixed)
    assert main(["--dry-run", str(mixed)]) == 0
    assert snapshot(mixed) == before
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(f"{mixed / 'old-tools.json'}:"))
    assert "would migrate v1 -> v3 (8 messages, 2 tool results paired with their calls" in line
    assert "hyperparameters stored on 3 of 6 assistant/tool turns" in line
    assert f"keeping the original as {mixed / 'old-tools.json.v1.bak'}" in line
    assert "6 would migrate" in out


def test_check_reports_findings_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(GOLDEN / "v1" / "basic.json", tmp_path / "ok.json")
    shutil.copy(GOLDEN / "v1" / "orphan_tool_result.json", tmp_path / "odd.json")
    before = snapshot(tmp_path)
    assert main(["--check", str(tmp_path / "ok.json")]) == 0
    assert main(["--check", str(tmp_path)]) == 1
    assert snapshot(tmp_path) == before
    out = capsys.readouterr().out
    assert f"{tmp_path / 'ok.json'}: ok (v1, 5 messages)" in out
    odd = tmp_path / "odd.json"
    assert f"{odd}: messages[1] (id v1-00001): warning: tool result has no tool_call_id" in out
    assert f"{odd}: messages[2] (id v1-00002): warning: timestamp " in out


def test_warnings_do_not_stop_a_migration_but_set_the_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "odd.json"
    shutil.copy(GOLDEN / "v1" / "orphan_tool_result.json", path)
    assert main([str(path)]) == 1
    assert detect_version(json.loads(path.read_text())) == 3
    assert (tmp_path / "odd.json.v1.bak").exists()


def test_errors_stop_the_migration_of_that_file_only(
    mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = mixed / "bad.json"
    shutil.copy(Path(__file__).parent / "corrupt" / "v2_duplicate_ids.json", bad)
    broken = mixed / "broken.json"
    broken.write_text('{"messages": [}')
    bad_before, broken_before = bad.read_bytes(), broken.read_bytes()
    assert main([str(mixed)]) == 2  # the worst status wins: unreadable > findings > ok
    assert bad.read_bytes() == bad_before
    assert broken.read_bytes() == broken_before
    assert not (mixed / "bad.json.v2.bak").exists()
    assert not (mixed / "broken.json.v1.bak").exists()
    assert detect_version(json.loads((mixed / "old-basic.json").read_text())) == 3  # the rest ran
    captured = capsys.readouterr()
    assert f"{broken}: line 1 column 15: not valid JSON: Expecting value\n" in captured.err
    assert f"{bad}: messages[1] (id m1): error: id 'm1' is already used" in captured.out
    assert f"{bad}: not migrated: fix the 1 error above first" in captured.err


def test_to_1_downgrades_with_a_v3_backup(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    shutil.copy(GOLDEN / "v2_to_v3" / "tools.json", path)
    original = path.read_bytes()
    assert main(["--to", "1", str(path)]) == 0
    assert (tmp_path / "chat.json.v3.bak").read_bytes() == original
    down = json.loads(path.read_text())
    assert detect_version(down) == 1
    assert meaning_difference(meaning(json.loads(original)), meaning(down)) is None
    # and back up: the same v2 text as before, ids and all
    assert main([str(path)]) == 0
    assert path.read_bytes() == original
    assert (tmp_path / "chat.json.v1.bak").read_text() == json.dumps(down, indent=2) + "\n"


def test_output_writes_elsewhere_and_leaves_the_originals(
    mixed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(mixed)
    out_dir = tmp_path / "migrated"
    assert main(["--output", str(out_dir), str(mixed)]) == 0
    assert snapshot(mixed) == before
    written = snapshot(out_dir)
    assert sorted(written) == sorted(
        [f"old-{n}" for n in CLEAN_V1] + [f"new-{n}" for n in CLEAN_V2]
    )
    for name in CLEAN_V2:
        assert written[f"new-{name}"].decode() == (GOLDEN / "v2_to_v3" / name).read_text()
    for name in CLEAN_V1:
        assert written[f"old-{name}"].decode() == (GOLDEN / "v1_to_v3" / name).read_text()
    assert not any(name.endswith(".bak") for name in written)


def test_an_existing_backup_that_differs_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chat.json"
    shutil.copy(GOLDEN / "v1" / "basic.json", path)
    backup = tmp_path / "chat.json.v1.bak"
    backup.write_text("an older backup")
    original = path.read_bytes()
    assert main([str(path)]) == 2
    assert path.read_bytes() == original
    assert backup.read_text() == "an older backup"
    assert "already exists and differs; move it away" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: PATH"),
        (["--to", "4", "x.json"], "--to must be a version from 1 to 3, got 4"),
        (["--to", "two", "x.json"], "invalid int value: 'two'"),
        (["--check", "--dry-run", "x.json"], "not allowed with argument"),
        (["--check", "--to", "1", "x.json"], "--check writes nothing"),
        (["does-not-exist.json"], "does-not-exist.json: file: no such file or folder"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_output_must_be_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert main(["--output", str(a_file), str(GOLDEN / "v1" / "basic.json")]) == 2
    assert "--output must be a folder" in capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "exit status: 0 ok, 1 consistency findings, 2 usage or I/O error" in (
        capsys.readouterr().out
    )
    assert main(["--version"]) == 0
    assert "mlx-harmony-migrate-chat 0.1.0 (schema v1 to v3)" in capsys.readouterr().out


def test_the_installed_console_script(mixed: Path) -> None:
    script = Path(sys.executable).parent / "mlx-harmony-migrate-chat"
    assert script.exists(), "run `uv sync --all-packages` to install the console script"
    result = subprocess.run(
        [str(script), str(mixed)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "6 migrated" in result.stdout
    for name in CLEAN_V1:
        assert (mixed / f"old-{name}.v1.bak").exists()
        assert dumps_chat(load_chat(mixed / f"old-{name}")) == (
            (GOLDEN / "v1_to_v3" / name).read_text()
        )
    broken = mixed / "broken.json"
    broken.write_text("[1, 2")
    result = subprocess.run(
        [str(script), "--check", str(broken)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{broken}: line 1 column 6: not valid JSON: Expecting ',' delimiter"
    ]


def test_a_folder_run_reports_each_bad_file_in_one_line_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "chats"
    folder.mkdir()
    stamp = '"timestamp": "2025-01-01T00:00:00Z"'
    (folder / "a-huge.json").write_text(
        '{"messages": [{"role": "user", "content": "x", ' + stamp + ', "n": ' + "9" * 5000 + "}]}"
    )
    (folder / "b-surrogate.json").write_text(
        '{"messages": [{"role": "user", "content": "\\ud800", ' + stamp + "}]}"
    )
    (folder / "c-overflow.json").write_text(
        '{"messages": [{"role": "user", "content": "x", ' + stamp + ', "t": 1e999}]}'
    )
    shutil.copy(GOLDEN / "v1" / "basic.json", folder / "d-good.json")
    shutil.copy(GOLDEN / "v1" / "tools.json", folder / "e-bug.json")
    before = snapshot(folder)

    real = cli_module.meaning

    def broken_on_e(source: object) -> object:
        if isinstance(source, dict) and any(
            m.get("name") == "python" for m in source.get("messages", [])
        ):
            raise RuntimeError("simulated bug\nsecond line")
        return real(source)  # type: ignore[arg-type]

    monkeypatch.setattr(cli_module, "meaning", broken_on_e)
    assert main([str(folder)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert lines == [
        f"{folder / 'a-huge.json'}: line 1 column 90: a whole number of 5000 digits is too long "
        "to read; write a smaller number",
        f"{folder / 'b-surrogate.json'}: messages[0].content: a lone surrogate \\ud800 is not "
        "valid Unicode (a broken emoji or a cut escape); fix or remove it",
        f"{folder / 'c-overflow.json'}: line 1 column 90: the number 1e999 is too large for a "
        "float (JSON readers get Infinity); write a smaller number",
        f"{folder / 'e-bug.json'}: file: unexpected RuntimeError: simulated bug second line; "
        "the file is untouched (please report this as a bug)",
    ]
    after = snapshot(folder)
    for name in ("a-huge.json", "b-surrogate.json", "c-overflow.json", "e-bug.json"):
        assert after[name] == before[name]
    assert json.loads(after["d-good.json"])["schema_version"] == 3  # the run went on
    assert "1 migrated, 4 failed" in out


def test_original_v2_migrates_with_the_chats_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chat.json"
    shutil.copy(GOLDEN / "original_v2" / "two_chats_branched.json", path)
    assert main(["--dry-run", str(path)]) == 0
    assert (
        "would migrate original v2 -> v3 (2 chats, 9 messages, 3 branches"
        in capsys.readouterr().out
    )
    assert main([str(path)]) == 0
    assert (
        path.read_text() == (GOLDEN / "original_v2_to_v3" / "two_chats_branched.json").read_text()
    )
    assert (tmp_path / "chat.json.v2.bak").read_bytes() == (
        GOLDEN / "original_v2" / "two_chats_branched.json"
    ).read_bytes()
    assert main(["--to", "2", str(path)]) == 2  # two chats do not fit our v2
    assert "holds 2 chats and version 2 holds one" in capsys.readouterr().err
