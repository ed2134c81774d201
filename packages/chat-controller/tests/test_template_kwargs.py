"""Chat-template keywords: passed to a native model's template as they are, turned into the
Harmony settings for gpt-oss, refused by name where they cannot mean anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from mlx_harmony.controller import (
    HarmonyAdapter,
    NativeAdapter,
    PromptConfig,
    TemplateKwargsError,
    Turn,
    adapter_for,
    with_template_kwargs,
)
from mlx_harmony.harmony_format import Message, get_encoding

TURNS = [Turn(Message.user("Hi"))]


def _system_message(config: PromptConfig) -> str:
    tokens = HarmonyAdapter().render(TURNS, config=config)
    text = get_encoding().decode(tokens)
    return text[: text.index("<|end|>")]


def test_reasoning_effort_as_a_template_keyword_changes_the_system_message() -> None:
    config = PromptConfig(reasoning_effort="low")
    assert "Reasoning: low" in _system_message(config)
    keyword = config.updated(chat_template_args={"reasoning_effort": "high"})
    assert "Reasoning: high" in _system_message(keyword)
    folded = with_template_kwargs(config, {"reasoning_effort": "high"}, harmony=True)
    assert folded.reasoning_effort == "high"
    assert folded.chat_template_args == {}


def test_model_identity_and_knowledge_cutoff_map_to_their_fields() -> None:
    folded = with_template_kwargs(
        PromptConfig(),
        {"model_identity": "You are Tiny.", "knowledge_cutoff": "2025-01"},
        harmony=True,
    )
    system = _system_message(folded)
    assert system.startswith("<|start|>system<|message|>You are Tiny.")
    assert "Knowledge cutoff: 2025-01" in system


def test_a_key_gpt_oss_cannot_use_is_refused_by_name_with_the_accepted_ones() -> None:
    config = PromptConfig(chat_template_args={"enable_thinking": False})
    with pytest.raises(TemplateKwargsError, match="'enable_thinking'") as caught:
        with_template_kwargs(config, {}, harmony=True)
    assert caught.value.key == "enable_thinking"
    assert "reasoning_effort, model_identity, knowledge_cutoff" in str(caught.value)
    with pytest.raises(TemplateKwargsError, match="enable_thinking"):
        HarmonyAdapter().render(TURNS, config=config)  # never silently ignored


def test_a_bad_harmony_value_names_the_keyword() -> None:
    with pytest.raises(TemplateKwargsError, match="'reasoning_effort'") as caught:
        with_template_kwargs(PromptConfig(), {"reasoning_effort": "extreme"}, harmony=True)
    assert caught.value.key == "reasoning_effort"


def test_later_keywords_update_earlier_ones_key_by_key() -> None:
    base = PromptConfig(chat_template_args={"enable_thinking": False, "style": "terse"})
    merged = with_template_kwargs(base, {"enable_thinking": True}, harmony=False)
    assert merged.chat_template_args == {"enable_thinking": True, "style": "terse"}
    assert with_template_kwargs(base, {}, harmony=False) is base


def test_arguments_the_chat_sets_itself_are_refused() -> None:
    with pytest.raises(ValidationError, match="'tools' is an argument of apply_chat_template"):
        PromptConfig(chat_template_args={"tools": []})
    with pytest.raises(TemplateKwargsError) as caught:
        with_template_kwargs(PromptConfig(), {"add_generation_prompt": False}, harmony=False)
    assert caught.value.key == "add_generation_prompt"


def test_a_native_template_gets_the_keywords() -> None:
    seen: list[dict[str, Any]] = []

    def template(messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        seen.append(kwargs)
        return [1, 2, 3]

    adapter = NativeAdapter(apply_chat_template=template, decode=lambda t: "", stop_tokens={9})
    seen.clear()  # the adapter probes its template once when it is made
    config = PromptConfig(chat_template_args={"enable_thinking": False})
    adapter.render(TURNS, config=config)
    assert seen == [{"enable_thinking": False}]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama folder in the Hugging Face layout (mlx-lm reads its template)."""
    from mlx_harmony.demo_model.random_model import save_random_llama

    cache = tmp_path_factory.mktemp("tokenizer-cache")
    return save_random_llama(tmp_path_factory.mktemp("llama"), cache_dir=cache)


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_real_template_renders_differently_with_a_keyword(llama_dir: Path) -> None:
    """A tiny Llama whose chat template reads a keyword of its own (mlx-lm's tokenizer sets
    ``enable_thinking`` itself, so a template keyword nobody sets is the clearer test)."""
    from mlx_harmony.generate import GeneratorOptions, TokenGenerator

    template = (
        "{%- for message in messages %}<|start|>{{ message.role }}<|message|>"
        "{{ message.content }}<|end|>{%- endfor %}"
        "{%- if persona is defined %}"
        "<|start|>system<|message|>Speak as {{ persona }}.<|end|>{%- endif %}"
        "{%- if add_generation_prompt %}<|start|>assistant{%- endif %}"
    )
    generator = TokenGenerator(llama_dir, GeneratorOptions(chat_template=template))
    adapter = adapter_for(generator)
    plain = generator.decode(adapter.render(TURNS, config=PromptConfig()))
    pirate = PromptConfig(chat_template_args={"persona": "a pirate"})
    rendered = generator.decode(adapter.render(TURNS, config=pirate))
    assert "Speak as" not in plain
    assert "<|start|>system<|message|>Speak as a pirate.<|end|>" in rendered
    assert rendered.endswith("<|start|>assistant")


def test_a_requests_effort_field_wins_and_a_keywords_effort_is_reported() -> None:
    from mlx_harmony.controller import with_request_template_kwargs

    server = PromptConfig(chat_template_args={"reasoning_effort": "high"})
    kept = with_request_template_kwargs(server, {}, reasoning_effort=None)
    assert kept.reasoning_effort == "high"  # what an answer reports is what gpt-oss is told
    asked = with_request_template_kwargs(server, {}, reasoning_effort="low")
    assert asked.chat_template_args == {"reasoning_effort": "low"}
    assert "Reasoning: low" in _system_message(asked)
    native = with_request_template_kwargs(
        PromptConfig(), {"reasoning_effort": "minimal"}, reasoning_effort=None
    )
    assert native.chat_template_args == {"reasoning_effort": "minimal"}  # a template's own value
