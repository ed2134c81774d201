"""Command-line options of mlx-harmony-server that need no model."""

import pytest

from mlx_harmony.server.cli import build_parser, main
from mlx_harmony.server.settings import ServerSettings


def test_profiles_file_is_an_alias_of_profiles() -> None:
    parser = build_parser()
    assert parser.parse_args(["--profiles-file", "p.json"]).profiles == "p.json"
    assert parser.parse_args(["--profiles", "p.json"]).profiles == "p.json"


def test_prompt_concurrency_reaches_the_settings_and_needs_the_batch_engine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    assert parser.parse_args(["--prompt-concurrency", "3"]).prompt_concurrency == 3
    assert parser.parse_args([]).prompt_concurrency is None
    assert ServerSettings(prompt_concurrency=3).prompt_concurrency == 3
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--prompt-concurrency", "0"])
    assert exit_info.value.code == 2
    assert main(["--max-concurrency", "1", "--prompt-concurrency", "4"]) == 2
    assert "--prompt-concurrency prefills the batch engine" in capsys.readouterr().err
