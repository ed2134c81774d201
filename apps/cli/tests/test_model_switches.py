"""The model switches (--kv-bits, --adapter-path, --chat-template, --prompt-cache-file) reach the
prompt config, and mlx-harmony-cache-prompt writes a cache that --prompt-cache-file loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_harmony.cli import cache_prompt
from mlx_harmony.cli.options import build_generate_parser, command_line_from, parse_args


def test_flags_become_prompt_config_values(tmp_path: Path) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    cache = tmp_path / "c.safetensors"
    cache.write_bytes(b"")
    argv = ["--kv-bits", "8", "--kv-group-size", "32", "--quantized-kv-start", "256"]
    argv += ["--chat-template", str(template), "--prompt-cache-file", str(cache)]
    argv += ["--adapter-path", str(tmp_path)]
    values = command_line_from(parse_args(build_generate_parser(), argv)).values
    assert values == {
        "kv_bits": 8,
        "kv_group_size": 32,
        "quantized_kv_start": 256,
        "chat_template": str(template),
        "prompt_cache_file": str(cache),
        "adapter_path": str(tmp_path),
    }


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kv-bits", "3"], "invalid choice"),
        (["--kv-bits", "8", "--max-kv-size", "512"], "cannot be combined"),
        (["--prompt-cache-file", "missing.safetensors"], "is not a file"),
        (["--adapter-path", "missing-folder"], "is not a folder"),
        (["--server", "http://127.0.0.1:1", "--kv-bits", "8"], "apply to a local model"),
    ],
)
def test_bad_model_flags_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(build_generate_parser(), argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cache_prompt_refuses_flags_that_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cache_prompt.main(["-o", str(tmp_path / "c.safetensors"), "--temperature", "0.5"])
    assert "--temperature do not change a cached prompt" in capsys.readouterr().err


def test_the_cached_prefix_is_what_two_conversations_share() -> None:
    def render(text: str) -> list[int]:
        return [1, 2, 3, *(ord(c) for c in text), 9]

    assert cache_prompt.cached_prefix(render) == [1, 2, 3]
    assert cache_prompt.cached_prefix(render, "ab") == [1, 2, 3, 97, 98]


def _random_model(folder: Path, seed: int) -> str:
    from mlx_harmony.demo_model.random_model import build_random_model, save_model

    model, config = build_random_model("tiny", seed=seed)
    return str(save_model(model, config, folder, cache_dir=folder.parent / "tok"))


@pytest.mark.slow
def test_cache_prompt_file_is_used_by_generate_and_refused_for_another_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from mlx_harmony.cli.generate import main as generate_main

    model = _random_model(tmp_path / "a", 0)
    out = tmp_path / "a.safetensors"
    assert cache_prompt.main(["-o", str(out), "--model", model, "--prompt", "Remember 42."]) == 0
    assert "tokens cached" in capsys.readouterr().err
    argv = ["--model", model, "--prompt", "Remember 42. What is it?", "--max-tokens", "8"]
    argv += ["--temperature", "0", "--json"]
    assert generate_main([*argv, "--prompt-cache-file", str(out)]) == 0
    cached = json.loads(capsys.readouterr().out)
    assert generate_main(argv) == 0
    fresh = json.loads(capsys.readouterr().out)
    assert (cached["final"], cached["analysis"]) == (fresh["final"], fresh["analysis"])
    other = tmp_path / "b.safetensors"
    assert cache_prompt.main(["-o", str(other), "--model", _random_model(tmp_path / "b", 1)]) == 0
    assert generate_main([*argv, "--prompt-cache-file", str(other)]) == 2
    assert "was made for another model" in capsys.readouterr().err
