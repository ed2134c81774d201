"""tokenizer.json and the chat template against openai-harmony (through harmony-format)."""

from pathlib import Path

import pytest

from mlx_harmony.demo_model.tokenizer import VOCAB_SIZE, write_tokenizer_files
from mlx_harmony.harmony_format import (
    DeveloperConfig,
    Message,
    SystemConfig,
    get_encoding,
    render_prompt,
)

pytestmark = pytest.mark.slow  # builds tokenizer.json from the vocab once (seconds)

TEXTS = [
    "Hello, world!",
    "What time is it?",
    "  leading spaces and trailing  ",
    "numbers 1234567 and 3.14159, dates 2025-11-21T13:47:00",
    "Ünïcödé, 日本語のテキスト, emoji 🎉👍🏽, Ελληνικά",
    "code:\n    def f(x):\n        return x**2\n\n\n",
    "it's they're we'll I'D",
    "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Yo<|return|>",
    "<|channel|>commentary to=functions.get_current_time <|constrain|>json<|message|>{}<|call|>",
    "tabs\tand\r\nwindows newlines",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache: Path) -> Path:
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(folder, cache_dir=tokenizer_cache)
    return folder


@pytest.fixture(scope="module")
def hf(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


@pytest.mark.parametrize("text", TEXTS)
def test_tokenizer_json_encodes_like_openai_harmony(hf, text: str) -> None:
    expected = get_encoding().encode(text, allowed_special="all")
    got = hf.encode(text, add_special_tokens=False)
    assert got == expected, f"{hf.convert_ids_to_tokens(got)} != {expected}"
    assert hf.decode(got) == text


def test_special_tokens_have_their_harmony_ids(hf) -> None:
    encoding = get_encoding()
    for name in ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>"]:
        assert hf.convert_tokens_to_ids(name) == encoding.encode(name, allowed_special="all")[0]
    assert len(hf) == VOCAB_SIZE


def _template(hf, messages, **kwargs) -> list[int]:
    out = hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False, **kwargs
    )
    return list(out)


def _show(tokens: list[int]) -> str:
    return get_encoding().decode(tokens)


@pytest.mark.parametrize(
    ("messages", "kwargs", "harmony", "system", "developer"),
    [
        ([{"role": "user", "content": "Hi"}], {}, [Message.user("Hi")], SystemConfig(), None),
        (
            [{"role": "user", "content": "What time is it?"}],
            {"reasoning_effort": "high", "conversation_start_date": "2025-11-21"},
            [Message.user("What time is it?")],
            SystemConfig(reasoning_effort="high", conversation_start_date="2025-11-21"),
            None,
        ),
        (
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi there."},
                {"role": "user", "content": "Tell me a joke."},
            ],
            {"reasoning_effort": "low"},
            [
                Message.user("Hello"),
                Message.assistant("Hi there."),
                Message.user("Tell me a joke."),
            ],
            SystemConfig(reasoning_effort="low"),
            DeveloperConfig(instructions="Be brief."),
        ),
    ],
)
def test_chat_template_renders_what_harmony_format_renders(
    hf, messages, kwargs, harmony, system, developer
) -> None:
    expected = render_prompt(harmony, system=system, developer=developer)
    got = _template(hf, messages, **kwargs)
    assert got == expected, f"\n{_show(got)!r}\n!=\n{_show(expected)!r}"


def test_generation_config_stops_on_return_and_call(folder: Path) -> None:
    import json

    config = json.loads((folder / "generation_config.json").read_text())
    assert {200002, 200012} <= set(config["eos_token_id"])


def test_a_second_cache_folder_in_one_process_copies_the_first_build(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merges are built once per process: a new cache folder gets the same bytes."""
    from mlx_harmony.demo_model import tokenizer

    def rebuild(_vocab: Path) -> str:
        raise AssertionError("the merges were built again")

    monkeypatch.setattr(tokenizer, "_build_tokenizer_json", rebuild)
    write_tokenizer_files(tmp_path / "model", cache_dir=tmp_path / "other-cache")
    built = (tmp_path / "other-cache" / "o200k_harmony-tokenizer.json").read_bytes()
    assert built == (folder / "tokenizer.json").read_bytes()
    assert (tmp_path / "model" / "tokenizer.json").read_bytes() == built
