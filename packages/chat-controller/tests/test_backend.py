"""LocalBackend hands the prompt config's generator options to a real generator each turn."""

from __future__ import annotations

import pytest

from mlx_harmony.controller import ChatRequest, LocalBackend, PromptConfig, Turn, TurnDone
from mlx_harmony.controller.testing import Script, ScriptedGenerator
from mlx_harmony.harmony_format import Message

pytest.importorskip("mlx.core")

from mlx_harmony.generate import GeneratorOptions


class Retunable(ScriptedGenerator):
    """A scripted generator that, like TokenGenerator, has options and takes new ones."""

    def __init__(self, scripts: list[Script], options: GeneratorOptions) -> None:
        super().__init__(scripts)
        self.options = options
        self.retuned: list[GeneratorOptions] = []

    def retune(self, options: GeneratorOptions) -> None:
        self.retuned.append(options)
        self.options = options


def test_a_turn_retunes_the_generator_from_the_config_and_keeps_load_time_values() -> None:
    loaded = GeneratorOptions(mlock=True, max_kv_size=512)
    generator = Retunable([Script.harmony("Hi.")], loaded)
    backend = LocalBackend(generator)
    config = PromptConfig(
        clear_cache=True, reseed_each_turn=True, log_memory_stats=True, mlock=False
    )
    events = list(backend.stream_turn(ChatRequest(Turn(Message.user("Hello")), config=config)))
    assert isinstance(events[-1], TurnDone)
    assert generator.retuned == [
        GeneratorOptions(
            mlock=True,
            max_kv_size=512,
            reseed_each_turn=True,
            clear_cache_interval=1,
            log_memory_stats=True,
        )
    ]
