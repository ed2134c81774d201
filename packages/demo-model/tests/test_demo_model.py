"""The real demo model (built once per session, see conftest): loading, structure, sampling."""

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_harmony.demo_model import (
    CHECK_CASES,
    DEMO_RECIPE,
    TIME_TOOL,
    check_structure,
    read_build_record,
)
from mlx_harmony.demo_model.check import generate_completion
from mlx_harmony.harmony_format import (
    CALL,
    RETURN,
    DeveloperConfig,
    Message,
    SystemConfig,
    get_encoding,
    parse_completion,
    render_prompt,
)

pytestmark = pytest.mark.slow

TOOLS = DeveloperConfig(tools=(TIME_TOOL,))
# Unseen by training and by the build's self-check.
ANSWER_PROMPTS = [
    ([Message.user("Tell me something nice about Tuesdays.")], SystemConfig(), None),
    ([Message.user("hi")], SystemConfig(reasoning_effort="low"), TOOLS),
    ([Message.user("Explain how a bicycle works.")], SystemConfig(), TOOLS),
]
TIME_PROMPTS = [
    ([Message.user("What time is it?")], SystemConfig(), TOOLS),
    ([Message.user("Hey, can you check what time it is?")], SystemConfig(), TOOLS),
]


@pytest.fixture(scope="module")
def loaded(demo_model: Path):
    from mlx_lm import load

    return load(str(demo_model))


def _text(tokens) -> str:
    return get_encoding().decode(list(tokens))


def test_folder_loads_with_mlx_lm_load_and_load_model(demo_model: Path, loaded) -> None:
    from mlx_lm.utils import load_model

    model, tokenizer = loaded
    assert model.args.vocab_size == 201088
    assert model.model_type == "gpt_oss"
    assert tokenizer.eos_token_id == RETURN
    again, config = load_model(demo_model)
    assert config["vocab_size"] == 201088
    probe = mx.array([[200006, 1428, 200008, 13225]])
    assert mx.allclose(model(probe), again(probe)).item()


def test_build_record_names_the_recipe_and_seed(demo_model: Path) -> None:
    record = read_build_record(demo_model)
    assert record is not None
    assert record["recipe_fingerprint"] == DEMO_RECIPE.fingerprint()
    assert record["seed"] == 0
    assert record["steps"] == DEMO_RECIPE.steps
    assert [c["name"] for c in record["self_check"]] == [c.name for c in CHECK_CASES]


@pytest.mark.parametrize(("messages", "system", "developer"), ANSWER_PROMPTS)
def test_greedy_answer_has_analysis_final_return(loaded, messages, system, developer) -> None:
    model, _ = loaded
    prompt = render_prompt(messages, system=system, developer=developer)
    out, _ = generate_completion(model, prompt)
    assert check_structure(out, "answer"), _text(out)
    parsed = parse_completion(out)
    assert parsed.analysis, _text(out)
    assert parsed.final, _text(out)
    assert parsed.stop_token == RETURN, _text(out)


@pytest.mark.parametrize(("messages", "system", "developer"), TIME_PROMPTS)
def test_time_question_calls_get_current_time(loaded, messages, system, developer) -> None:
    model, _ = loaded
    out, _ = generate_completion(model, render_prompt(messages, system=system, developer=developer))
    assert check_structure(out, "call"), _text(out)
    parsed = parse_completion(out)
    assert parsed.stop_token == CALL
    assert [c.recipient for c in parsed.tool_calls] == ["functions.get_current_time"], _text(out)


def test_chat_template_prompt_gets_the_same_answer(loaded) -> None:
    """Peers (mlx-lm's server) render through the chat template: same tokens, same output."""
    model, tokenizer = loaded
    templated = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me something nice about Tuesdays."}],
        add_generation_prompt=True,
    )
    assert list(templated) == render_prompt(
        [Message.user("Tell me something nice about Tuesdays.")]
    )
    out, _ = generate_completion(model, templated)
    assert check_structure(out, "answer"), _text(out)


def test_sampling_at_temperature_one_keeps_unseen_ids_unlikely(demo_model: Path, loaded) -> None:
    """Full-vocab softmax at T=1: the ~200k ids training never used share little probability."""
    from mlx_lm.sample_utils import make_sampler

    model, _ = loaded
    seen = read_build_record(demo_model)["trained_token_ids"]
    unseen_mask = np.ones(201088, bool)
    unseen_mask[seen] = False
    unseen = mx.array(np.flatnonzero(unseen_mask))
    sampler = make_sampler(temp=1.0)
    good, worst = 0, 0.0
    cases = ANSWER_PROMPTS + TIME_PROMPTS
    for i in range(16):
        mx.random.seed(i)
        messages, system, developer = cases[i % len(cases)]
        prompt = render_prompt(messages, system=system, developer=developer)
        out, mass = generate_completion(model, prompt, sampler=sampler, unseen=unseen)
        worst = max(worst, mass)
        expect = "call" if (messages, system, developer) in TIME_PROMPTS else "answer"
        good += check_structure(out, expect)
    assert worst < 0.05
    assert good >= 12, f"only {good} of 16 samples kept the structure"
