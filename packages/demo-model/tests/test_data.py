import random
from collections import Counter

from mlx_harmony.demo_model.check import check_structure
from mlx_harmony.demo_model.data import TIME_TOOL, make_example, make_examples
from mlx_harmony.harmony_format import get_encoding, parse_completion

EXPECT = {"general": "answer", "no_tool": "answer", "time_answer": "answer", "time_call": "call"}


def _text(tokens) -> str:
    return get_encoding().decode(list(tokens))


def test_same_seed_same_examples_other_seed_others() -> None:
    assert make_examples(7, 20) == make_examples(7, 20)
    assert make_examples(7, 20) != make_examples(8, 20)


def test_every_kind_appears_and_its_completion_has_the_demo_structure() -> None:
    examples = make_examples(0, 200)
    assert set(Counter(e.kind for e in examples)) == set(EXPECT)
    for e in examples:
        completion = e.tokens[e.prompt_length :]
        assert check_structure(completion, EXPECT[e.kind]), _text(completion)


def test_the_time_call_parses_as_a_call_to_get_current_time() -> None:
    example = next(e for e in make_examples(1, 50) if e.kind == "time_call")
    parsed = parse_completion(example.tokens[example.prompt_length :])
    assert [c.recipient for c in parsed.tool_calls] == [f"functions.{TIME_TOOL.name}"]
    assert parsed.tool_calls[0].arguments == "{}"


def test_the_tool_answer_says_the_time_from_the_tool_result() -> None:
    example = next(e for e in make_examples(2, 80) if e.kind == "time_answer")
    prompt, completion = _text(example.tokens[: example.prompt_length]), example.tokens
    final = parse_completion(completion[example.prompt_length :]).final
    assert final.startswith("It is ")
    assert final.removeprefix("It is ").rstrip(".").split(":")[0] in prompt


def test_question_span_is_the_last_user_message() -> None:
    for e in make_examples(3, 40):
        start, end = e.question
        prompt = _text(e.tokens[: e.prompt_length])
        question = _text(e.tokens[start:end])
        assert prompt.rsplit("<|start|>user<|message|>", 1)[1].startswith(question + "<|end|>")


def test_the_render_cache_does_not_change_prompts() -> None:
    rng = random.Random(5)
    fresh = [make_example(rng) for _ in range(30)]  # a new renderer for each example
    assert make_examples(5, 30) == fresh


def test_no_system_rate_drops_the_system_message_only() -> None:
    with_system = make_examples(4, 30)
    without = make_examples(4, 30, no_system_rate=1.0)
    for a, b in zip(with_system, without, strict=True):
        assert _text(a.tokens).startswith("<|start|>system")
        assert not _text(b.tokens).startswith("<|start|>system")
        assert _text(a.tokens).endswith(_text(b.tokens))
