"""The chat and the one-shot command know when a launcher started them as one of several
ranks; started alone they go on without importing MLX for it, and refuse the sharding flags.
What cannot work sharded is refused by flag name before any rank loads the model."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from mlx_harmony.cli.generate import run_generate
from mlx_harmony.cli.launch import CliError, ModelLocation, prepare
from mlx_harmony.cli.options import build_generate_parser, parse_args
from mlx_harmony.cli.sharding import (
    _refusals,
    add_sharding_options,
    launched_group,
    line_input,
)


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLX_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_no_launcher_no_group(alone: None) -> None:
    assert launched_group() is None


def test_one_rank_under_a_launcher_runs_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # a group of one: nothing to shard
    assert launched_group() is None
    assert "mlx.core" in sys.modules


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--pipeline"], "--pipeline"), (["--step-timeout", "30"], "--step-timeout")],
)
def test_sharding_flags_alone_are_refused(alone: None, flags: list[str], named: str) -> None:
    with pytest.raises(CliError, match=f"{named} apply to a model sharded") as caught:
        run_generate(["--prompt", "hi", *flags], stdout=io.StringIO(), stderr=io.StringIO())
    assert caught.value.exit_status == 2


def test_a_step_timeout_must_be_positive(alone: None) -> None:
    with pytest.raises(CliError, match="--step-timeout must be positive, got -1"):
        run_generate(["--prompt", "hi", "--step-timeout", "-1"], stdout=io.StringIO())


def _refused(argv: list[str], location: ModelLocation | None = None) -> str:
    parser = build_generate_parser()
    add_sharding_options(parser)
    launch = prepare(parse_args(parser, argv), chat_files=False)
    where = location or ModelLocation(name="/m", label="m", path=Path("/m"))
    return "; ".join(_refusals(launch, where, 2))


def test_nothing_refused_by_default() -> None:
    assert _refused([]) == ""


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--kv-bits", "8"], "--kv-bits (kv_bits in the prompt config)"),
        (["--max-kv-size", "512"], "--max-kv-size (max_kv_size in the prompt config)"),
        (["--mlock"], "--mlock (mlock in the prompt config)"),
        (["--prompt-lookup", "3"], "--prompt-lookup (prompt_lookup in the prompt config)"),
        (["--adapter-path", "."], "--adapter-path (adapter_path in the prompt config)"),
    ],
)
def test_what_cannot_run_sharded_is_named(argv: list[str], named: str) -> None:
    message = _refused(argv)
    assert named in message
    assert message.endswith("(a model sharded over 2 ranks)")


def test_a_grammar_and_a_server_are_refused(tmp_path: Path) -> None:
    grammar = tmp_path / "g.lark"
    grammar.write_text('start: "yes" | "no"')
    assert "--grammar: the grammar mask cannot travel" in _refused(["--grammar", str(grammar)])
    server = ModelLocation(name=None, label="s", server="http://127.0.0.1:1")
    assert "--server: under mlx.launch" in _refused([], server)


def test_line_input_sends_each_line_and_ends_with_ctrl_d() -> None:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.output import DummyOutput

    with line_input(io.StringIO("first\nsecond\n")) as pipe:
        session: PromptSession[str] = PromptSession(input=pipe, output=DummyOutput())
        got = [session.prompt(), session.prompt()]
        with pytest.raises(EOFError):
            session.prompt()
    assert got == ["first", "second"]
