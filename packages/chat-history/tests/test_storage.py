import os
import random
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlx_harmony.chat_history import (
    ChatLogError,
    detect_version,
    dumps_chat,
    is_temp_file,
    load_chat,
    loads_chat,
    save_chat,
    write_atomic,
)
from mlx_harmony.chat_history import storage as storage_module
from mlx_harmony.chat_history.cli import main
from mlx_harmony.chat_history.storage import parse_json
from mlx_harmony.chat_history.testing import generate_v1_log


def test_save_writes_the_latest_version_and_loads_back_equal(tmp_path: Path) -> None:
    log = loads_chat(generate_v1_log(40, seed=1))
    path = tmp_path / "chat.json"
    save_chat(log, path)
    assert detect_version(parse_json(path.read_bytes())) == 3
    assert dumps_chat(load_chat(path)) == dumps_chat(log)
    # the advisory lock stays beside the file, hidden and empty
    assert sorted(p.name for p in tmp_path.iterdir()) == [".chat.json.lock", "chat.json"]
    assert (tmp_path / ".chat.json.lock").read_bytes() == b""


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_an_existing_file_keeps_its_mode_and_a_new_one_is_private(tmp_path: Path) -> None:
    log = loads_chat(generate_v1_log(3))
    fresh = tmp_path / "new.json"
    save_chat(log, fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    shared = tmp_path / "shared.json"
    save_chat(log, shared)
    shared.chmod(0o640)
    log.append_user("again")
    save_chat(log, shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    assert load_chat(shared).messages[-1].content == "again"


@pytest.mark.skipif(os.name != "posix", reason="symlinks")
def test_a_symlink_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "store" / "chat.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "chat.json"
    link.symlink_to(real)
    write_atomic(link, b"new")
    assert link.is_symlink()
    assert real.read_bytes() == b"new"


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_a_failed_write_leaves_the_old_file_and_no_temp(
    failing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "chat.json"
    path.write_bytes(b"old content")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    if failing == "write":
        real_fdopen = os.fdopen

        class Full:
            def __init__(self, *args: object, **kwargs: object) -> None:
                self.f = real_fdopen(*args, **kwargs)  # type: ignore[arg-type]

            def __enter__(self) -> "Full":
                return self

            def __exit__(self, *exc: object) -> None:
                self.f.close()

            def write(self, data: bytes) -> None:
                self.f.write(data[: len(data) // 2])
                boom()

        monkeypatch.setattr(storage_module.os, "fdopen", Full)
    else:
        monkeypatch.setattr(storage_module.os, failing, boom)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, b"new content, much longer than the old one")
    monkeypatch.undo()
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["chat.json"]


def test_temp_names_are_hidden_and_never_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real_replace = os.replace

    def spy(src: str, dst: object) -> None:
        seen.append(src)
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(storage_module.os, "replace", spy)
    write_atomic(tmp_path / "chat.json", b"{}")
    (temp,) = seen
    assert Path(temp).parent == tmp_path
    assert Path(temp).name.startswith(".chat.json.")
    assert is_temp_file(temp)
    assert not temp.endswith(".json")
    assert not is_temp_file(tmp_path / "chat.json")
    assert not is_temp_file(tmp_path / "chat.json.v1.bak")


def test_parse_json_accepts_a_byte_order_mark() -> None:
    assert parse_json('\ufeff{"messages": []}'.encode()) == {"messages": []}


def test_load_reports_the_file_for_errors_found_after_parsing(tmp_path: Path) -> None:
    path = tmp_path / "v9.json"
    path.write_text('{"schema_version": 9}')
    with pytest.raises(ChatLogError) as info:
        load_chat(path)
    assert info.value.file == str(path)
    assert str(info.value).startswith(f"{path}: schema_version: version 9 is newer")


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mlx_harmony.chat_history import write_atomic

    target, a, b = sys.argv[1:4]
    blobs = [Path(a).read_bytes(), Path(b).read_bytes()]  # what save_chat would write
    print("ready", flush=True)
    i = 0
    while True:
        write_atomic(target, blobs[i % 2])
        i += 1
    """
)


@pytest.mark.slow
def test_killing_a_writer_at_random_moments_never_leaves_a_mixed_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    texts = []
    for seed in (1, 2):
        log = loads_chat(generate_v1_log(3000, seed=seed))
        save_chat(log, sources / f"{seed}.json")
        texts.append((sources / f"{seed}.json").read_bytes())
    assert texts[0] != texts[1]
    assert len(texts[0]) > 1_000_000

    chats = tmp_path / "chats"
    chats.mkdir()
    target = chats / "chat.json"
    target.write_bytes(texts[0])
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(1234)
    kills = mid_write = 0
    # Kill at random moments until three kills have landed inside a write (a temp file was
    # left behind), so the dangerous window is exercised, not just hoped for.
    while kills < 20 and mid_write < 3:
        writer = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(target),
                *(str(sources / f"{s}.json") for s in (1, 2)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert writer.stdout is not None
            assert writer.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.02, 0.3))
        finally:
            writer.kill()
            writer.wait()
            if writer.stdout:
                writer.stdout.close()
        kills += 1
        assert target.read_bytes() in texts  # the old content or the new, never a mix
        assert len(load_chat(target).messages) == 3000
        temps = [p for p in chats.iterdir() if p != target]
        assert all(is_temp_file(p) for p in temps), temps  # a kill may leave a hidden temp
        mid_write += len(temps)
        for temp in temps:
            temp.unlink()
    assert mid_write >= 1, f"none of {kills} kills landed inside a write"

    # a leftover temp is never taken for a log by the folder migration
    (chats / ".chat.json.abc123.tmp").write_bytes(texts[1][:1000])
    assert main(["--check", str(chats)]) == 0
    out = capsys.readouterr().out
    assert f"{target}: ok (v3, 3000 messages)" in out
    assert ".tmp" not in out
