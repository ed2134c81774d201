"""``--chat-template-args JSON`` (mlx-lm's flag): a JSON object that becomes the prompt config's
``chat_template_args``; bad JSON is a usage error, and so is a key gpt-oss cannot use."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_harmony.cli.generate import main
from mlx_harmony.cli.options import build_generate_parser, command_line_from, parse_args


def test_the_flag_becomes_the_config_key() -> None:
    argv = ["--chat-template-args", '{"enable_thinking": false, "persona": "a pirate"}']
    values = command_line_from(parse_args(build_generate_parser(), argv)).values
    assert values == {"chat_template_args": {"enable_thinking": False, "persona": "a pirate"}}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--chat-template-args", "{enable_thinking: false}"], "not valid JSON"),
        (["--chat-template-args", '["a"]'], "expected a JSON object"),
        (
            ["--server", "http://127.0.0.1:1", "--chat-template-args", "{}"],
            "apply to a local model",
        ),
    ],
)
def test_bad_values_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(build_generate_parser(), argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err


@pytest.fixture(scope="module")
def gpt_oss_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    model, config = build_random_model("tiny", seed=0)
    root = tmp_path_factory.mktemp("gpt-oss")
    return save_model(model, config, root / "model", cache_dir=root / "cache")


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_key_gpt_oss_cannot_use_is_a_usage_error(
    gpt_oss_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--prompt", "Hi", "--model", str(gpt_oss_dir), "--max-tokens", "2"]
    status = main([*argv, "--chat-template-args", '{"enable_thinking": false}'])
    err = capsys.readouterr().err
    assert status == 2
    assert "'enable_thinking' has no meaning for gpt-oss" in err
    assert "reasoning_effort, model_identity" in err
    status = main([*argv, "--chat-template-args", '{"reasoning_effort": "high"}', "--json"])
    assert status == 0, capsys.readouterr().err
