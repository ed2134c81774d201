"""The prompt config's speculative-decoding keys: checked at load, mapped by generator_options()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_harmony.controller import ConfigError, PromptConfig


def test_the_keys_reach_the_generator_options() -> None:
    options = PromptConfig.from_dict(
        {"prompt_lookup": 3, "num_draft_tokens": 6}
    ).generator_options()
    assert (options.prompt_lookup, options.num_draft_tokens, options.draft_model) == (3, 6, None)
    assert options.speculates
    options = PromptConfig.from_dict({"draft_model": "org/draft"}).generator_options()
    assert (options.draft_model, options.num_draft_tokens) == ("org/draft", 3)
    assert not PromptConfig().generator_options().speculates


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"draft_model": "d", "prompt_lookup": 2}, "draft_model and prompt_lookup cannot be"),
        ({"prompt_lookup": 0}, "prompt_lookup"),
        ({"num_draft_tokens": 0}, "num_draft_tokens"),
        ({"draft_model": ""}, "draft_model"),
    ],
)
def test_bad_values_are_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PromptConfig.from_dict(data)


def test_a_relative_draft_folder_is_found_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "drafts" / "small").mkdir(parents=True)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"draft_model": "drafts/small"}))
    assert PromptConfig.from_file(path).draft_model == str(tmp_path / "drafts" / "small")
    path.write_text(json.dumps({"draft_model": "org/repo"}))  # not a folder there: a repo id
    assert PromptConfig.from_file(path).draft_model == "org/repo"


def test_the_model_is_fixed_at_load() -> None:
    from mlx_harmony.generate import GeneratorOptions

    assert {"draft_model", "num_draft_tokens", "prompt_lookup"} <= set(GeneratorOptions.LOAD_TIME)
    with pytest.raises(ValueError, match="cannot be combined"):
        GeneratorOptions(draft_model="d", prompt_lookup=2)
    with pytest.raises(ValueError, match="num_draft_tokens must be a positive integer"):
        GeneratorOptions(num_draft_tokens=0)
