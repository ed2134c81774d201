import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from openai_harmony import HarmonyError

import mlx_harmony.harmony_format.encoding as encoding_module
from mlx_harmony.harmony_format import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    MESSAGE,
    RETURN,
    START,
    STOP_TOKENS,
    VOCAB_SIZE,
    HarmonyVocabError,
    Message,
    get_encoding,
    parse_completion,
    render_completion,
    verify_vocab,
    vocab_dir,
)
from mlx_harmony.harmony_format.encoding import ENV_VAR, VOCAB_FILE, VOCAB_SHA256


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("<|return|>", RETURN),
        ("<|call|>", CALL),
        ("<|end|>", END),
        ("<|start|>", START),
        ("<|channel|>", CHANNEL),
        ("<|message|>", MESSAGE),
        ("<|constrain|>", CONSTRAIN),
    ],
)
def test_constants_are_the_special_token_ids(text: str, token: int) -> None:
    enc = get_encoding()
    assert enc.encode(text, allowed_special="all") == [token]
    assert enc.decode_utf8([token]) == text


def test_return_and_call_stop_generation_but_end_does_not() -> None:
    assert {RETURN, CALL} == STOP_TOKENS
    assert END not in STOP_TOKENS
    # openai-harmony's stop_tokens() lists <|end|>; its list for assistant actions does not.
    assert END in get_encoding().stop_tokens()
    assert set(get_encoding().stop_tokens_for_assistant_actions()) == STOP_TOKENS


def test_end_separates_messages_inside_one_generation() -> None:
    tokens = render_completion([Message.analysis("Think first."), Message.assistant("Done.")])
    # The model writes <|end|> after its reasoning and goes on with the answer: stopping at
    # <|end|> would cut the answer off.
    assert tokens.index(END) < len(tokens) - 1
    assert [i for i, t in enumerate(tokens) if t in STOP_TOKENS] == [len(tokens) - 1]
    assert parse_completion(tokens).final == "Done."
    cut_at_end = parse_completion(tokens[: tokens.index(END) + 1])
    assert (cut_at_end.final, cut_at_end.truncated) == ("", True)


def test_vocab_size_bounds_the_decodable_ids() -> None:
    enc = get_encoding()
    assert enc.decode([VOCAB_SIZE - 1]).startswith("<|reserved_")
    with pytest.raises(HarmonyError):
        enc.decode([VOCAB_SIZE])


def test_shipped_vocab_has_the_expected_hash() -> None:
    path = verify_vocab()
    assert path == vocab_dir() / VOCAB_FILE
    assert path.stat().st_size > 3_000_000


def test_a_damaged_vocab_is_rejected_with_the_file_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / VOCAB_FILE
    bad.write_bytes(b"not a vocabulary\n")
    with pytest.raises(HarmonyVocabError) as info:
        verify_vocab(bad)
    message = str(info.value)
    assert str(bad) in message
    assert VOCAB_SHA256 in message
    assert "reinstall" in message


def test_a_missing_vocab_is_rejected_with_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(HarmonyVocabError, match=r"cannot read.*reinstall"):
        verify_vocab(tmp_path / VOCAB_FILE)


def test_get_encoding_checks_the_shipped_file_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / VOCAB_FILE).write_bytes(b"garbage\n")
    monkeypatch.setattr(encoding_module, "_encoding", None)
    monkeypatch.setattr(encoding_module, "vocab_dir", lambda: tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(HarmonyVocabError, match=str(tmp_path)):
        get_encoding()


def test_get_encoding_loads_once_while_threads_race(monkeypatch: pytest.MonkeyPatch) -> None:
    real = get_encoding()
    calls = []

    def slow_load(name: object) -> object:
        calls.append(name)
        time.sleep(0.05)  # keep the window open so that every thread arrives during the load
        return real

    monkeypatch.setattr(encoding_module, "_encoding", None)
    monkeypatch.setattr(encoding_module, "load_harmony_encoding", slow_load)
    barrier = threading.Barrier(16)
    results: list[object] = []

    def worker() -> None:
        barrier.wait()
        results.append(get_encoding())

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert len(results) == 16
    assert all(result is real for result in results)


def _run_fresh(code: str, env_value: str | None, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env["HOME"] = str(home)  # no tiktoken cache from elsewhere
    env["XDG_CACHE_HOME"] = str(home / "cache")
    if env_value is not None:
        env[ENV_VAR] = env_value
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )


_CHECK = (
    "import os\n"
    "from mlx_harmony.harmony_format import get_encoding, vocab_dir\n"
    "enc = get_encoding()\n"
    "assert enc.encode('Hello') == [13225], enc.encode('Hello')\n"
    "print(os.environ['TIKTOKEN_ENCODINGS_BASE'])\n"
    "print(vocab_dir())\n"
)


@pytest.mark.slow  # starts a fresh interpreter
def test_a_fresh_process_points_tiktoken_at_the_shipped_vocab(tmp_path: Path) -> None:
    done = _run_fresh(_CHECK, None, tmp_path)
    assert done.returncode == 0, done.stderr
    env_value, data_dir = done.stdout.split()
    assert env_value == data_dir


@pytest.mark.slow  # starts a fresh interpreter
def test_a_user_setting_of_the_variable_is_kept(tmp_path: Path) -> None:
    mine = tmp_path / "vocab"
    mine.mkdir()
    shutil.copy(vocab_dir() / VOCAB_FILE, mine / VOCAB_FILE)
    done = _run_fresh(_CHECK, str(mine), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == str(mine)


@pytest.mark.slow  # starts a fresh interpreter
def test_a_user_folder_without_the_vocab_gives_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _run_fresh(_CHECK, str(empty), tmp_path)
    assert done.returncode != 0
    assert "HarmonyVocabError" in done.stderr
    assert f"{ENV_VAR}='{empty}'" in done.stderr
    assert "unset" in done.stderr
