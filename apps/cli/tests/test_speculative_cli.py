"""Speculative decoding on the command line: --draft-model, --num-draft-tokens and --prompt-lookup
reach the prompt config, bad combinations are usage errors, and on a real model the greedy tokens
are those of the plain run (slow)."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from mlx_harmony.cli.options import build_chat_parser, command_line_from, parse_args
from mlx_harmony.controller.turns import timing_line


def test_flags_become_prompt_config_values() -> None:
    argv = ["--draft-model", "mlx-community/tiny-draft", "--num-draft-tokens", "5"]
    values = command_line_from(parse_args(build_chat_parser(), argv)).values
    assert values == {"draft_model": "mlx-community/tiny-draft", "num_draft_tokens": 5}
    values = command_line_from(parse_args(build_chat_parser(), ["--prompt-lookup", "3"])).values
    assert values == {"prompt_lookup": 3}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--draft-model", "d", "--prompt-lookup", "2"], "--draft-model and --prompt-lookup"),
        (["--prompt-lookup", "0"], "--prompt-lookup must be at least 1"),
        (["--num-draft-tokens", "0"], "--num-draft-tokens must be at least 1"),
        (["--server", "http://127.0.0.1:1", "--prompt-lookup", "2"], "apply to a local model"),
        (["--server", "http://127.0.0.1:1", "--draft-model", "d"], "apply to a local model"),
    ],
)
def test_bad_speculation_flags_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(build_chat_parser(), argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--prompt-lookup", "2"], ["--draft-model", "d"]])
def test_a_constraint_with_speculation_is_a_usage_error(
    flag: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object"}))
    with pytest.raises(SystemExit) as exit_info:
        parse_args(build_chat_parser(), [*flag, "--json-schema", str(schema)])
    assert exit_info.value.code == 2
    assert "cannot take back rejected guesses" in capsys.readouterr().err


def test_the_timing_line_shows_the_acceptance_rate() -> None:
    timing = {
        "prompt_tokens": 10,
        "prompt_tps": 100.0,
        "generation_tokens": 40,
        "generation_tps": 20.0,
        "time_to_first_token": 0.1,
        "total_time": 2.0,
        "draft_tokens": 30,
        "accepted_draft_tokens": 24,
    }
    assert "drafts accepted 24/30 (80%)" in timing_line(timing)
    del timing["draft_tokens"], timing["accepted_draft_tokens"]
    assert "drafts" not in timing_line(timing)


# -- the demo model, greedy: speculation changes how fast, never what -------------------------

# Read before the autouse fixture replaces it with a stand-in folder.
PROMPT = "Repeat after me, twice: the quick brown fox jumps over the lazy dog."
_IDS = re.compile(r"\[debug\] response token ids: (\[.*\])")


def _generate(model: Path, *extra: str) -> tuple[list[list[int]], dict[str, object]]:
    """Each generation's token ids (from --debug-tokens) and the --json output."""
    from mlx_harmony.cli.generate import run_generate

    out, err = io.StringIO(), io.StringIO()
    argv = ["--model", str(model), "--prompt", PROMPT, "--json", "--temperature", "0"]
    argv += ["--max-tokens", "160", "--loop-detection", "off", "--debug-tokens", "out", *extra]
    with contextlib.redirect_stderr(err):  # the debug lines go to the process's stderr
        status = run_generate(argv, stdout=out, stderr=err)
    assert status == 0, err.getvalue()[-2000:]
    ids = [ast.literal_eval(m.group(1)) for m in _IDS.finditer(err.getvalue())]
    assert ids, err.getvalue()[-2000:]
    return ids, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def plain(demo_model: Path) -> tuple[list[list[int]], dict[str, object]]:
    return _generate(demo_model)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--prompt-lookup", "2", "--num-draft-tokens", "4"], id="prompt-lookup"),
        pytest.param(["--draft-model", "SELF", "--num-draft-tokens", "3"], id="draft-model"),
    ],
)
def test_generate_speculating_gives_the_plain_tokens(
    demo_model: Path, plain: tuple[list[list[int]], dict[str, object]], flags: list[str]
) -> None:
    flags = [str(demo_model) if f == "SELF" else f for f in flags]
    ids, data = _generate(demo_model, *flags)
    plain_ids, plain_data = plain
    assert ids == plain_ids, f"{data['analysis']!r} {data['final']!r}\n!=\n{plain_data['final']!r}"
    assert (data["analysis"], data["final"]) == (plain_data["analysis"], plain_data["final"])
    stats = data["stats"]
    assert isinstance(stats, dict)
    assert 0 < stats["accepted_draft_tokens"] <= stats["draft_tokens"]
    assert "draft_tokens" not in plain_data["stats"]  # type: ignore[operator]
    if "--draft-model" in flags:  # the model is its own draft: its guesses are its tokens
        assert stats["accepted_draft_tokens"] == stats["draft_tokens"]


@pytest.mark.slow
def test_chat_with_prompt_lookup_answers_as_without_and_shows_the_rate(
    demo_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlx_harmony.chat_history import load_chat
    from mlx_harmony.cli.launch import locate_model, make_backend
    from mlx_harmony.cli.testing import ENTER, run_chat

    monkeypatch.setenv("MLX_HARMONY_DEMO_MODEL", str(demo_model))
    config = tmp_path / "prompt-config.json"
    config.write_text(json.dumps({"log_timing_stats": True, "loop_detection": "off"}))

    def backend(launch: object) -> object:
        return make_backend(launch, locate_model(launch), on_close=lambda _: None)  # type: ignore[arg-type]

    answers = []
    for name, extra in (("plain", []), ("lookup", ["--prompt-lookup", "2"])):
        chat = tmp_path / f"{name}.json"
        argv = ["--prompt-config", str(config), "--temperature", "0", "--max-tokens", "160"]
        argv += ["--chat", str(chat), *extra]
        run = run_chat(argv, PROMPT + ENTER + "\\quit" + ENTER, backend=backend)
        assert run.status == 0, run.screen
        log = load_chat(chat)
        reply = [(m.channel, m.content) for m in log.messages if m.role == "assistant"]
        answers.append(reply)
        screen = " ".join(run.screen.split())  # lines wrap at the terminal's width
        if extra:
            assert re.search(r"drafts accepted \d+/\d+ \(\d+%\)", screen), run.screen
        else:
            assert "drafts accepted" not in screen
    assert answers[0] == answers[1]
