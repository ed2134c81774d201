import json
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony.demo_model.cli import random_model_main


def _generate(folder: Path, n: int = 3) -> list[int]:
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, tokenizer = load(str(folder))
    prompt = mx.array(tokenizer.encode("Hello"))
    return [
        int(t)
        for (t, _), _ in zip(generate_step(prompt, model, max_tokens=n), range(n), strict=False)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("bits", [None, 8])
def test_random_model_command_writes_a_folder_mlx_lm_loads(
    tmp_path: Path, home: Path, bits: int | None
) -> None:
    out = tmp_path / "random"
    argv = [str(out), "--shape", "tiny", "--set", "num_hidden_layers=4", "--quiet"]
    argv += ["--home", str(home), "--seed", "3"]
    if bits:
        argv += ["--bits", str(bits)]
    assert random_model_main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 4
    assert config["vocab_size"] == 201088
    assert ("quantization" in config) == (bits is not None)
    tokens = _generate(out)
    assert len(tokens) == 3
    assert all(0 <= t < 201088 for t in tokens)


def test_random_model_command_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        random_model_main([str(tmp_path / "x"), "--shape", "gpt-oss-7b"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        random_model_main([str(tmp_path / "x"), "--set", "no_equals_sign"])
    assert exit_.value.code == 2


def test_set_values_are_parsed_as_json() -> None:
    from mlx_harmony.demo_model.cli import _parse_value

    assert _parse_value("4") == 4
    assert _parse_value("1e-5") == 1e-5
    assert _parse_value('["full_attention"]') == ["full_attention"]
    assert _parse_value("yarn") == "yarn"
