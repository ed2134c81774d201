"""The flags: one per sampling parameter, checked by SamplingParams; the others map to
prompt-config keys; usage errors name the flag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlx_harmony.cli.options import (
    GENERATION_FLAGS,
    SAMPLING_FLAGS,
    build_chat_parser,
    build_generate_parser,
    command_line_from,
    parse_args,
)
from mlx_harmony.sampling import SamplingParams

# A value for every sampling flag, and what SamplingParams makes of it.
SAMPLING_VALUES: dict[str, tuple[list[str], object]] = {
    "--temperature": (["0.5"], 0.5),
    "--top-p": (["0.9"], 0.9),
    "--top-k": (["40"], 40),
    "--min-p": (["0.05"], 0.05),
    "--min-tokens-to-keep": (["2"], 2),
    "--xtc-probability": (["0.5"], 0.5),
    "--xtc-threshold": (["0.2"], 0.2),
    "--xtc-special-tokens": (["200002", "200012"], (200002, 200012)),
    "--repetition-penalty": (["1.1"], 1.1),
    "--repetition-context-size": (["64"], 64),
    "--presence-penalty": (["0.5"], 0.5),
    "--presence-context-size": (["32"], 32),
    "--frequency-penalty": (["-0.5"], -0.5),
    "--frequency-context-size": (["16"], 16),
    "--logit-bias": (["1234=-100", "99=2.5"], {1234: -100.0, 99: 2.5}),
    "--seed": (["7"], 7),
}


def test_every_sampling_parameter_has_a_flag() -> None:
    assert set(SAMPLING_FLAGS.values()) == set(SamplingParams.model_fields)
    assert set(SAMPLING_VALUES) == set(SAMPLING_FLAGS)
    parser = build_chat_parser()
    for flag in SAMPLING_FLAGS:
        assert flag in parser._option_string_actions


@pytest.mark.parametrize("flag", sorted(SAMPLING_VALUES))
def test_each_sampling_flag_sets_its_value(flag: str) -> None:
    words, expected = SAMPLING_VALUES[flag]
    args = parse_args(build_chat_parser(), [flag, *words])
    values = command_line_from(args).values
    name = SAMPLING_FLAGS[flag]
    assert values == {name: expected}
    assert getattr(SamplingParams(**values), name) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--top-p", "0"], r"--top-p: top_p must be in \(0, 1\]"),
        (["--temperature", "-1"], r"--temperature: .*temperature"),
        (["--min-p", "2"], r"--min-p: "),
        (["--presence-penalty", "3"], r"--presence-penalty: "),
        (["--logit-bias", "12"], r"TOKEN_ID=BIAS"),
        (["--seed", "-3"], r"--seed: "),
        (["--max-tokens", "0"], r"--max-tokens must be at least 1"),
        (["--max-kv-size", "0"], r"--max-kv-size must be at least 1"),
        (["--reasoning-effort", "huge"], r"invalid choice"),
        (["--loop-detection", "always"], r"invalid choice"),
        (["--debug-tokens", "all"], r"invalid choice"),
    ],
)
def test_bad_values_are_usage_errors_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(build_chat_parser(), argv)
    assert exit_.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_generation_flags_map_to_prompt_config_keys() -> None:
    args = parse_args(
        build_chat_parser(),
        [
            "--max-tokens",
            "128",
            "--reasoning-effort",
            "HIGH",
            "--performance-mode",
            "--loop-detection",
            "full",
            "--max-kv-size",
            "4096",
            "--mlock",
        ],
    )
    values = command_line_from(args).values
    assert values == {
        "max_tokens": 128,
        "reasoning_effort": "high",
        "performance_mode": True,
        "loop_detection": "full",
        "max_kv_size": 4096,
        "mlock": True,
    }
    model_keys = {"kv_bits", "kv_group_size", "quantized_kv_start", "adapter_path"}
    model_keys |= {"chat_template", "prompt_cache_file"}  # test_model_switches.py
    model_keys |= {"chat_template_args"}  # test_template_kwargs_cli.py
    model_keys |= {"draft_model", "num_draft_tokens", "prompt_lookup"}  # test_speculative_cli.py
    assert set(values) | model_keys == set(GENERATION_FLAGS.values())
    assert command_line_from(parse_args(build_chat_parser(), ["--no-performance-mode"])).values == {
        "performance_mode": False
    }


def test_tool_flags_are_three_valued() -> None:
    line = command_line_from(parse_args(build_chat_parser(), ["--python", "--no-browser"]))
    assert line.tools == {"browser": False, "python": True, "apply_patch": None}
    line = command_line_from(parse_args(build_chat_parser(), ["--apply-patch", "--model", "m"]))
    assert line.tools["apply_patch"] is True
    assert line.model == "m"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--chat", "a.json", "--save-conversation", "b.json"], "--chat loads and saves"),
        (["--chat", "a.json", "--load-conversation", "b.json"], "--chat loads and saves"),
        (["--server", "http://127.0.0.1:1", "--python"], "apply to a local model"),
    ],
)
def test_conflicting_flags(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(build_chat_parser(), argv)
    assert message in capsys.readouterr().err


def test_server_takes_a_model_name() -> None:
    line = command_line_from(
        parse_args(build_chat_parser(), ["--server", "http://h:1", "--model", "m"])
    )
    assert (line.server, line.model) == ("http://h:1", "m")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(build_chat_parser(), ["--version"])
    assert exit_.value.code == 0
    assert re.fullmatch(r"mlx-harmony-chat \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_the_tests_cover_every_flag() -> None:
    """Each option of both commands appears in some test of this folder."""
    sources = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    flags = {
        flag
        for parser in (build_chat_parser(), build_generate_parser())
        for flag in parser._option_string_actions
        if flag.startswith("--") and flag != "--help"
    }
    negations = {f for f in flags if f.startswith("--no-") and "--" + f[5:] in flags}
    missing = sorted(f for f in flags - negations if f'"{f}"' not in sources)
    assert not missing, f"flags no test uses: {missing}"


def test_python_unsandboxed_is_a_flag_of_its_own() -> None:
    args = parse_args(build_chat_parser(), ["--python", "--python-unsandboxed"])
    assert args.python is True
    assert args.python_unsandboxed is True
    assert parse_args(build_chat_parser(), []).python_unsandboxed is False
