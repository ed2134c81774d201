"""Real models through the real generation loop: a tiny random gpt-oss (Harmony plumbing), a
tiny random Llama (native plumbing) and, when it can be built, the trained demo model.

The random models are made to write scripted Harmony completions by a logits processor that
forces each token, so the prompt cache, stop tokens, loop detector and stats are mlx-generate's
own while the content stays predictable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

mx = pytest.importorskip("mlx.core")

from mlx_harmony.chat_history import load_chat, new_chat, save_chat  # noqa: E402
from mlx_harmony.controller import (  # noqa: E402
    FinishReason,
    HarmonyAdapter,
    LocalBackend,
    NativeAdapter,
    PromptConfig,
    RetryEvent,
    RetryReason,
    ToolRegistry,
    Turn,
    adapter_for,
    run_chat_turn,
)
from mlx_harmony.harmony_format import FunctionTool, Message, get_encoding, render_completion  # noqa: E402


def _force(script: Sequence[int], prompt_len: int) -> Callable[[Any, Any], Any]:
    script = list(script)

    def processor(history: Any, logits: Any) -> Any:
        i = history.size - prompt_len
        token = script[i % len(script)]
        return mx.where(mx.arange(logits.shape[-1]) == token, 0.0, -mx.inf)[None]

    return processor


class Forced:
    """A TokenGenerator whose model writes `scripts[i]` on its i-th call (cycling a script
    with ``cycle=True`` to make a loop)."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator
        self.scripts: list[list[int]] = []
        self.calls: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.generator, name)

    def stream(self, *, prompt_tokens: Sequence[int], **options: Any) -> Any:
        self.calls.append({"prompt_tokens": list(prompt_tokens), **options})
        script = self.scripts.pop(0)
        return self.generator.stream(
            prompt_tokens=prompt_tokens,
            logits_processors=[_force(script, len(prompt_tokens))],
            **options,
        )


@pytest.fixture(scope="session")
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="session")
def gpt_oss(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache: Path) -> Any:
    random_model = pytest.importorskip("mlx_harmony.demo_model.random_model")
    from mlx_harmony.generate import load_model

    build_random_model, save_model = random_model.build_random_model, random_model.save_model
    model, config = build_random_model("tiny", seed=0)
    folder = save_model(
        model, config, tmp_path_factory.mktemp("gpt-oss"), cache_dir=tokenizer_cache
    )
    return load_model(folder)


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache: Path) -> Any:
    from mlx_harmony.generate import load_model

    random_model = pytest.importorskip("mlx_harmony.demo_model.random_model")
    folder = random_model.save_random_llama(
        tmp_path_factory.mktemp("llama"), cache_dir=tokenizer_cache, num_hidden_layers=2
    )
    return load_model(folder)


def tokens(text: str) -> list[int]:
    return list(get_encoding().encode(text, allowed_special="all"))


@pytest.fixture
def python_tools() -> Any:
    with ToolRegistry.from_flags(python=True) as tools:
        yield tools


def test_harmony_turns_with_a_tool_round_cache_reuse_and_a_loop_retry(
    gpt_oss: Any, tmp_path: Path, python_tools: ToolRegistry
) -> None:
    from mlx_harmony.generate import TokenGenerator

    forced = Forced(TokenGenerator(gpt_oss))
    adapter = adapter_for(forced)
    assert isinstance(adapter, HarmonyAdapter)
    config = PromptConfig(temperature=0.0, max_tokens=200)
    log = new_chat()

    tools = python_tools  # the same tools all session: a stable prompt prefix
    forced.scripts.append(
        render_completion([Message.analysis("Greet."), Message.assistant("Hello.")])
    )
    first = run_chat_turn(forced, adapter, "Hi", config=config, tools=tools, log=log)
    assert first.final == "Hello."
    assert first.finish_reason is FinishReason.STOP
    assert first.generations[0].prompt_tokens == len(forced.calls[0]["prompt_tokens"])

    forced.scripts += [
        render_completion(
            [Message.tool_call("python", "print(6 * 7)", channel="analysis", constrain=None)]
        ),
        render_completion([Message.assistant("It is 42.")]),
    ]
    second = run_chat_turn(
        forced, adapter, "6*7?", history=[first.turn], config=config, tools=tools, log=log
    )
    assert second.final == "It is 42."
    assert second.tool_rounds == 1
    assert second.generations[0].reused_prompt_tokens >= len(forced.calls[0]["prompt_tokens"])
    assert second.generations[1].reused_prompt_tokens >= len(forced.calls[1]["prompt_tokens"])
    assert second.generations[1].cache_reuse in ("extend", "checkpoint", "trim")

    # a real loop: the detector stops it, the retry runs with a stronger penalty, then the
    # next call is back to the user's settings
    loop_unit = tokens("<|channel|>final<|message|>") + tokens(" spam eggs ham") * 2
    forced.scripts += [
        loop_unit[:3] + loop_unit[3:] * 60,
        render_completion([Message.assistant("Calm.")]),
    ]
    events: list[Any] = []
    third = run_chat_turn(
        forced,
        adapter,
        "Sing",
        history=[first.turn, second.turn],
        config=config.updated(loop_detection="full"),
        tools=tools,
        on_event=events.append,
    )
    retry = next(e for e in events if isinstance(e, RetryEvent))
    assert retry.reason is RetryReason.LOOP
    assert forced.calls[-1]["sampling"].repetition_penalty == pytest.approx(1.2)
    assert third.final == "Calm."
    save_chat(log, tmp_path / "chat.json")
    assert len(load_chat(tmp_path / "chat.json").messages) == 6


def test_native_model_through_its_chat_template(llama: Any) -> None:
    from mlx_harmony.generate import TokenGenerator

    forced = Forced(TokenGenerator(llama))
    adapter = adapter_for(forced)
    assert isinstance(adapter, NativeAdapter)
    forced.scripts.append([*tokens("Hi there, friend."), 199999])
    result = run_chat_turn(
        forced,
        adapter,
        "Hello",
        config=PromptConfig(temperature=0.0, developer_instructions="Be nice."),
    )
    assert result.final == "Hi there, friend."
    assert result.finish_reason is FinishReason.STOP
    prompt = get_encoding().decode(forced.calls[0]["prompt_tokens"])
    assert "# Instructions\n\nBe nice." in prompt
    assert prompt.endswith("<|start|>user<|message|>Hello<|end|><|start|>assistant")


# -- the trained demo model ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("MLX_HARMONY_DEMO_MODEL")
    if env:
        return Path(env)
    try:
        from mlx_harmony.demo_model import demo_model_for_tests  # type: ignore[attr-defined]
    except ImportError:
        pytest.skip("mlx_harmony.demo_model.demo_model_for_tests is not available yet")
    if "MLX_HARMONY_HOME" not in os.environ:
        # The home demo_model_for_tests builds in: later suites that build the demo model in
        # the default home (the server's) find this one instead of building a second.
        home = Path(tmp_path_factory.getbasetemp()) / "mlx-harmony-home"
        os.environ["MLX_HARMONY_HOME"] = str(home)
    return Path(demo_model_for_tests(tmp_path_factory))


@pytest.fixture(scope="session")
def demo_backend(demo_model_path: Path) -> Any:
    from mlx_harmony.generate import TokenGenerator

    return LocalBackend(TokenGenerator(demo_model_path))


TIME_TOOL = FunctionTool("get_current_time", "Gets the current time.")


def test_demo_model_answers_with_analysis_and_final(demo_backend: LocalBackend) -> None:
    config = PromptConfig(temperature=0.0, max_tokens=200)
    generator, adapter = demo_backend.generator, demo_backend.adapter
    first = run_chat_turn(generator, adapter, "Hello!", config=config)
    assert first.finish_reason is FinishReason.STOP
    assert first.final.strip()
    assert first.analysis.strip()
    second = run_chat_turn(
        generator, adapter, "Tell me about the moon.", history=[first.turn], config=config
    )
    assert second.final.strip()
    assert second.reused_prompt_tokens > 0


def test_demo_model_calls_the_time_function_and_uses_its_result(demo_backend: LocalBackend) -> None:
    config = PromptConfig(temperature=0.0, max_tokens=200)
    generator, adapter = demo_backend.generator, demo_backend.adapter
    result = run_chat_turn(
        generator, adapter, "What time is it?", config=config, function_tools=[TIME_TOOL]
    )
    assert result.finish_reason is FinishReason.TOOL_CALLS
    assert [c.recipient for c in result.tool_calls] == ["functions.get_current_time"]
    turn = Turn(
        result.turn.user,
        (*result.turn.replies, Message.tool_result("get_current_time", '{"time": "14:05"}')),
    )
    done = run_chat_turn(generator, adapter, turn, config=config, function_tools=[TIME_TOOL])
    assert done.finish_reason is FinishReason.STOP
    assert done.final.strip()
