import os
from pathlib import Path

import pytest

from mlx_harmony.tools.patch import (
    AddFile,
    DeleteFile,
    PatchError,
    UpdateFile,
    apply_patch,
    parse_patch,
    patch_from_arguments,
)


def patch(*lines: str) -> str:
    return "\n".join(["*** Begin Patch", *lines, "*** End Patch"]) + "\n"


def test_parse_reads_every_operation_of_the_reference_example() -> None:
    parsed = parse_patch(
        patch(
            "*** Add File: hello.txt",
            "+Hello world",
            "*** Update File: src/app.py",
            "*** Move to: src/main.py",
            "@@ def greet():",
            '-print("Hi")',
            '+print("Hello, world!")',
            "*** Delete File: obsolete.txt",
        )
    )
    add, update, delete = parsed.ops
    assert add == AddFile("hello.txt", ("Hello world",))
    assert isinstance(update, UpdateFile)
    assert update.path == "src/app.py"
    assert update.move_to == "src/main.py"
    assert update.hunks[0].anchors == ("def greet():",)
    assert update.hunks[0].old == ('print("Hi")',)
    assert update.hunks[0].new == ('print("Hello, world!")',)
    assert delete == DeleteFile("obsolete.txt")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("no envelope", "*** Begin Patch"),
        ("*** Begin Patch\n*** Add File: a\n+x\n", "*** End Patch"),
        (patch("*** Frobnicate File: a"), "expected"),
        (patch("*** Add File: a", "no plus"), "must start with '+'"),
        (patch("*** Update File: a", "@@", " context only"), "no '-' or '+' lines"),
        (patch("*** Update File: a"), "no hunks"),
        (patch("*** Delete File: a", "*** Delete File: a"), "appears twice"),
        (patch(), "no file operations"),
    ],
)
def test_parse_errors_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(PatchError) as info:
        parse_patch(text)
    assert fragment in str(info.value)


def test_add_update_move_delete_in_one_patch(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text('def greet():\n    print("Hi")\n\ngreet()\n')
    (tmp_path / "obsolete.txt").write_text("old\n")
    result = apply_patch(
        patch(
            "*** Add File: notes/hello.txt",
            "+Hello world",
            "+second line",
            "*** Update File: src/app.py",
            "*** Move to: src/main.py",
            "@@ def greet():",
            '-    print("Hi")',
            '+    print("Hello, world!")',
            "*** Delete File: obsolete.txt",
        ),
        root=tmp_path,
    )
    assert (tmp_path / "notes" / "hello.txt").read_text() == "Hello world\nsecond line\n"
    assert not (tmp_path / "src" / "app.py").exists()
    assert (tmp_path / "src" / "main.py").read_text() == (
        'def greet():\n    print("Hello, world!")\n\ngreet()\n'
    )
    assert not (tmp_path / "obsolete.txt").exists()
    assert result.summary().splitlines() == [
        "Done!",
        "A notes/hello.txt",
        "M src/main.py (moved from src/app.py)",
        "D obsolete.txt",
    ]


def test_hunks_apply_in_order_with_context_lines(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("".join(f"line {i}\n" for i in range(10)))
    apply_patch(
        patch(
            "*** Update File: f.txt",
            "@@",
            " line 1",
            "-line 2",
            "+line two",
            " line 3",
            "@@",
            " line 7",
            "+inserted",
            " line 8",
        ),
        root=tmp_path,
    )
    lines = target.read_text().splitlines()
    assert lines[2] == "line two"
    assert lines[8:10] == ["inserted", "line 8"]
    assert len(lines) == 11


def test_context_matching_tolerates_whitespace_differences(tmp_path: Path) -> None:
    target = tmp_path / "f.py"
    target.write_text("def f():\n    return 1   \n")
    apply_patch(
        patch("*** Update File: f.py", "@@ def f():", "-  return 1", "+    return 2"),
        root=tmp_path,
    )
    assert target.read_text() == "def f():\n    return 2\n"


def test_end_of_file_hunk_matches_only_at_the_end(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("x\ny\nx\n")
    apply_patch(patch("*** Update File: f.txt", "@@", "-x", "+z", "*** End of File"), root=tmp_path)
    assert target.read_text() == "x\ny\nz\n"


def test_crlf_files_keep_their_line_endings(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"a\r\nb\r\n")
    apply_patch(patch("*** Update File: f.txt", "@@", " a", "-b", "+c"), root=tmp_path)
    assert target.read_bytes() == b"a\r\nc\r\n"


def test_a_bad_hunk_changes_nothing_at_all(tmp_path: Path) -> None:
    first = tmp_path / "a.txt"
    first.write_text("one\ntwo\n")
    second = tmp_path / "b.txt"
    second.write_text("three\n")
    (tmp_path / "d.txt").write_text("four\n")
    with pytest.raises(PatchError, match=r"d\.txt: hunk 2 does not match"):
        apply_patch(
            patch(
                "*** Update File: a.txt",
                "@@",
                "-one",
                "+ONE",
                "*** Delete File: b.txt",
                "*** Add File: c.txt",
                "+new",
                "*** Update File: d.txt",
                "@@",
                "-four",
                "+FOUR",
                "@@",
                "-five",
                "+FIVE",
            ),
            root=tmp_path,
        )
    # Nothing written: the valid first hunk, the delete and the add were all held back.
    assert first.read_text() == "one\ntwo\n"
    assert second.read_text() == "three\n"
    assert not (tmp_path / "c.txt").exists()
    assert (tmp_path / "d.txt").read_text() == "four\n"


def test_a_hunk_that_does_not_match_is_reported_with_its_lines(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("keep\n")
    with pytest.raises(PatchError) as info:
        apply_patch(
            patch(
                "*** Delete File: b.txt",
                "*** Update File: a.txt",
                "@@",
                "-three",
                "+four",
            ),
            root=tmp_path,
        )
    message = str(info.value)
    assert "a.txt" in message
    assert "|three" in message
    assert (tmp_path / "b.txt").read_text() == "keep\n"


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("../x.txt", "'..' would leave"),
        ("sub/../../x.txt", "'..' would leave"),
        ("/etc/passwd", "absolute path"),
        ("~/x.txt", "absolute path"),
        ("C:\\x.txt", "absolute path"),
    ],
)
def test_paths_outside_the_root_are_refused(tmp_path: Path, path: str, fragment: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(PatchError, match="refused") as info:
        apply_patch(patch(f"*** Add File: {path}", "+evil"), root=root)
    assert fragment in str(info.value)
    assert list(tmp_path.rglob("x.txt")) == []


def test_a_symlink_leading_out_of_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    os.symlink(outside, root / "link")
    for text in (
        patch("*** Add File: link/new.txt", "+evil"),
        patch("*** Update File: link/secret.txt", "@@", "-secret", "+changed"),
        patch("*** Delete File: link/secret.txt"),
    ):
        with pytest.raises(PatchError, match="through a symlink"):
            apply_patch(text, root=root)
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert not (outside / "new.txt").exists()


def test_add_refuses_an_existing_file_and_update_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(PatchError, match="already exists"):
        apply_patch(patch("*** Add File: a.txt", "+y"), root=tmp_path)
    with pytest.raises(PatchError, match="does not exist"):
        apply_patch(patch("*** Update File: b.txt", "@@", "-x", "+y"), root=tmp_path)
    assert (tmp_path / "a.txt").read_text() == "x\n"


def test_file_mode_survives_an_update(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    apply_patch(patch("*** Update File: run.sh", "@@", "-echo hi", "+echo bye"), root=tmp_path)
    assert script.read_text() == "echo bye\n"
    assert script.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "wrapped",
    [
        '{"patch": "*** Begin Patch\\n*** End Patch\\n"}',
        '{"whatever": "*** Begin Patch\\n*** End Patch\\n"}',
        '"*** Begin Patch\\n*** End Patch\\n"',
        "*** Begin Patch\n*** End Patch\n",
    ],
)
def test_patch_text_is_taken_out_of_json_wrappers(wrapped: str) -> None:
    assert patch_from_arguments(wrapped) == "*** Begin Patch\n*** End Patch\n"


def test_a_failed_write_puts_back_the_files_already_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlx_harmony.tools import patch as module

    (tmp_path / "a.txt").write_text("a\n")
    (tmp_path / "b.txt").write_text("b\n")
    real_write = module._atomic_write
    calls = []

    def failing_write(path: Path, data: bytes, *, mode: int | None) -> None:
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        real_write(path, data, mode=mode)

    monkeypatch.setattr(module, "_atomic_write", failing_write)
    with pytest.raises(PatchError, match="nothing was changed"):
        apply_patch(
            patch(
                "*** Update File: a.txt",
                "@@",
                "-a",
                "+A",
                "*** Update File: b.txt",
                "@@",
                "-b",
                "+B",
            ),
            root=tmp_path,
        )
    assert calls[:2] == ["a.txt", "b.txt"]
    assert (tmp_path / "a.txt").read_text() == "a\n"
    assert (tmp_path / "b.txt").read_text() == "b\n"


def test_unified_diff_ranges_and_repeated_anchor_lines_are_tolerated(tmp_path: Path) -> None:
    target = tmp_path / "f.py"
    target.write_text("import os\n\ndef f():\n    return 1\n\ndef g():\n    return 2\n")
    apply_patch(
        patch(
            "*** Update File: f.py",
            "@@ -3,2 +3,2 @@ def f():",
            "-    return 1",
            "+    return 10",
            "@@ def g():",
            " def g():",
            "-    return 2",
            "+    return 20",
            "*** End of File",
            "",
        ),
        root=tmp_path,
    )
    assert target.read_text() == "import os\n\ndef f():\n    return 10\n\ndef g():\n    return 20\n"
