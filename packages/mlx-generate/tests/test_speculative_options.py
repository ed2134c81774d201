"""Speculation set up through `GeneratorOptions` (the CLI's and server's way in): it reaches the
generator, is fixed at load, and is not given twice."""

from __future__ import annotations

import dataclasses

import pytest

from mlx_harmony.generate import GeneratorOptions, LoadedModel, TokenGenerator


def test_options_speculate_like_the_keywords(tiny: LoadedModel) -> None:
    prompt = [5000 + i % 7 for i in range(60)]
    by_options = TokenGenerator(tiny, GeneratorOptions(prompt_lookup=2, num_draft_tokens=4))
    by_keywords = TokenGenerator(tiny, prompt_lookup=2, num_draft_tokens=4)
    assert by_options.speculates
    assert not TokenGenerator(tiny).speculates
    want = list(by_keywords.generate(prompt_tokens=prompt, max_tokens=40, stop_tokens=()))
    got = list(by_options.generate(prompt_tokens=prompt, max_tokens=40, stop_tokens=()))
    assert got == want
    assert by_options.last_stats is not None
    assert by_options.last_stats.draft_tokens > 0


def test_speculation_is_given_once_and_fixed_at_load(tiny: LoadedModel) -> None:
    options = GeneratorOptions(prompt_lookup=2)
    with pytest.raises(TypeError, match="inside GeneratorOptions or as keywords, not both"):
        TokenGenerator(tiny, options, prompt_lookup=3)
    generator = TokenGenerator(tiny, options)
    with pytest.raises(ValueError, match="prompt_lookup is set when the model loads"):
        generator.retune(dataclasses.replace(options, prompt_lookup=3))


@pytest.mark.parametrize(
    ("options", "name"),
    [
        (GeneratorOptions(prompt_lookup=2), "prompt_lookup"),
        (GeneratorOptions(draft_model="d"), "draft_model"),
    ],
)
def test_the_batch_engine_refuses_speculation(
    tiny: LoadedModel, options: GeneratorOptions, name: str
) -> None:
    from mlx_harmony.generate import BatchTokenGenerator

    with pytest.raises(ValueError, match=f"{name}: the batch engine does not decode speculatively"):
        BatchTokenGenerator(tiny, options)
