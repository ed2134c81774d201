import pytest

from mlx_harmony.demo_model.check import check_structure
from mlx_harmony.harmony_format import get_encoding

ANSWER = (
    "<|channel|>analysis<|message|>Think.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>Answer.<|return|>"
)
CALL = (
    "<|channel|>analysis<|message|>Think.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_current_time "
    "<|constrain|>json<|message|>{}<|call|>"
)


def ids(text: str) -> list[int]:
    return list(get_encoding().encode(text, allowed_special="all"))


def test_accepts_the_two_shapes() -> None:
    assert check_structure(ids(ANSWER), "answer")
    assert check_structure(ids(CALL), "call")
    assert not check_structure(ids(ANSWER), "call")
    assert not check_structure(ids(CALL), "answer")


@pytest.mark.parametrize(
    "text",
    [
        ANSWER.removesuffix("<|return|>"),  # cut off
        ANSWER.replace("<|return|>", "<|end|>"),  # ends a message, not the answer
        "<|channel|>final<|message|>Answer.<|return|>",  # no analysis
        ANSWER.replace("Think.", ""),  # empty analysis
        ANSWER.replace("Answer.", ""),  # empty final
        ANSWER.replace("Answer.", "Ans<|start|>wer."),  # a special token inside the text
        ANSWER.replace(
            "<|return|>", "<|end|><|start|>assistant<|channel|>final<|message|>x<|return|>"
        ),
    ],
)
def test_rejects_broken_answers(text: str) -> None:
    assert not check_structure(ids(text), "answer")


@pytest.mark.parametrize(
    "text",
    [
        CALL.replace("get_current_time", "get_weather"),
        CALL.replace("{}", '{"tz": "UTC"}'),
        CALL.removesuffix("<|call|>"),
        CALL.replace("<|call|>", "<|return|>"),
    ],
)
def test_rejects_other_calls(text: str) -> None:
    assert not check_structure(ids(text), "call")


def test_unknown_expectation_is_an_error() -> None:
    with pytest.raises(ValueError, match="expect must be"):
        check_structure(ids(ANSWER), "final")
