"""Two conversations that share only their long instructions (past gpt-oss's 128-token sliding
window) through a real server: the second prefills only its own messages, and its usage says
so in ``prompt_tokens_details.cached_tokens``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from mlx_harmony.harmony_format import get_encoding

INSTRUCTIONS = " ".join(
    f"Rule {i}: answer the user about topic number {i} politely and briefly." for i in range(30)
)
TOOLS_NOTE = "You may use no tools. Keep every answer under twenty words."


def _own_tokens(user: str) -> int:
    """The tokens after the shared instructions: the user message and the assistant header."""
    text = f"<|start|>user<|message|>{user}<|end|><|start|>assistant"
    return len(get_encoding().encode(text, allowed_special="all"))


@pytest.mark.slow
@pytest.mark.parametrize("max_concurrency", [8, 1])
def test_a_second_conversation_reuses_the_shared_instructions(
    start_server: Any, demo_model: Path, tmp_path: Path, max_concurrency: int
) -> None:
    """The default server (--max-concurrency 8: the batch engine and its shared prompt
    cache) and one request at a time (--max-concurrency 1: one conversation's cache); both
    checkpoint the sliding-window layers after the system and developer messages."""
    config = tmp_path / "prompt-config.json"
    config.write_text(json.dumps({"loop_detection": "off"}))
    server = start_server(
        real=True,
        model=str(demo_model),
        prompt_config=str(config),
        preload=True,
        max_concurrency=max_concurrency,
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    model = client.models.list().data[0].id

    def messages(user: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "developer", "content": TOOLS_NOTE},
            {"role": "user", "content": user},
        ]

    def ask(user: str) -> Any:
        reply = client.chat.completions.create(
            model=model, messages=messages(user), max_tokens=8, temperature=0
        )
        assert reply.usage is not None
        assert reply.usage.prompt_tokens_details is not None
        return reply.usage

    first = ask("What is the moon made of?")
    second = ask("Name three colours of the rainbow, please.")
    shared = second.prompt_tokens - _own_tokens("Name three colours of the rainbow, please.")
    assert shared == first.prompt_tokens - _own_tokens("What is the moon made of?")
    assert shared > 300  # well past the 128-token sliding window
    assert first.prompt_tokens_details.cached_tokens == 0
    assert second.prompt_tokens_details.cached_tokens == shared
    third = "Is seven a prime number?"
    chunks = client.chat.completions.create(
        model=model,
        messages=messages(third),
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    assert usage[0].prompt_tokens == shared + _own_tokens(third)
    assert usage[0].prompt_tokens_details.cached_tokens == shared
