"""End to end on the trained demo model, when demo-model provides it: a Harmony chat with
prompt-cache reuse, token-exact against a fresh cache."""

from __future__ import annotations

import pytest

from mlx_harmony.generate import CacheReuseMode, StopReason, TokenGenerator


@pytest.fixture(scope="module")
def demo() -> TokenGenerator:
    module = pytest.importorskip("mlx_harmony.demo_model")
    ensure = getattr(module, "ensure_demo_model", None)
    if ensure is None:
        pytest.skip("mlx_harmony.demo_model has no ensure_demo_model yet")
    return TokenGenerator(ensure(), loop_detection="cheap")


@pytest.mark.slow
def test_a_harmony_chat_stops_on_return_and_reuses_its_cache(demo: TokenGenerator) -> None:
    from mlx_harmony.harmony_format import Message, parse_completion, render_prompt

    messages = [Message.user("What is the moon?")]
    first = list(demo.stream(prompt_tokens=render_prompt(messages), max_tokens=400))
    stats = first[-1].stats
    assert stats is not None
    assert first[-1].stop_reason is StopReason.STOP
    assert stats.stop_token in (200002, 200012)
    completion = [e.token for e in first if e.token is not None]
    parsed = parse_completion(completion)
    messages += list(parsed.messages)
    messages.append(Message.user("Tell me about bees."))
    prompt = render_prompt(messages)
    second = list(demo.generate(prompt_tokens=prompt, max_tokens=400))
    reused = demo.last_stats
    assert reused is not None
    assert reused.cache_reuse is not CacheReuseMode.FRESH
    assert reused.reused_prompt_tokens > 0
    fresh = TokenGenerator(demo.loaded, prompt_cache=False, loop_detection="cheap")
    assert list(fresh.generate(prompt_tokens=prompt, max_tokens=400)) == second
