"""The batch engine when the model fails: every request ends with the error, whatever stage it
is in (prefilling included), and the engine thread can run a model loaded on another thread."""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import pytest

from mlx_harmony.generate import (
    BatchGenerator,
    BatchRequest,
    BatchTokenGenerator,
    LoadedModel,
    load_model,
)
from mlx_harmony.generate.batch import _new_generation_stream


class _FailingPrefill(nn.Module):
    """The tiny model, except that a prefill chunk (more than one token per row) raises once
    `armed` is set, as a model that runs out of memory mid-prompt does."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.armed = threading.Event()

    @property
    def layers(self) -> Any:
        return self.inner.layers

    def make_cache(self) -> list[Any]:
        return self.inner.make_cache()

    def __call__(self, inputs: mx.array, cache: Any = None) -> mx.array:
        if self.armed.is_set() and inputs.shape[1] > 1:
            raise RuntimeError("simulated failure while prefilling")
        return self.inner(inputs, cache=cache)


def _prompt(n: int) -> list[int]:
    return [1000 + (i * 37) % 5000 for i in range(n)]


def _ends_within(generator: BatchTokenGenerator, prompt: list[int], timeout: float) -> object:
    """What a request's stream ends with (the exception, or "finished"), from another thread;
    pytest fails when it does not end within `timeout` seconds."""
    result: queue.SimpleQueue[object] = queue.SimpleQueue()

    def run() -> None:
        try:
            for _ in generator.stream(prompt_tokens=prompt, max_tokens=4, stop_tokens=()):
                pass
            result.put("finished")
        except Exception as error:
            result.put(error)

    threading.Thread(target=run, daemon=True).start()
    try:
        return result.get(timeout=timeout)
    except queue.Empty:
        pytest.fail(f"the request did not end within {timeout} s: it hangs")


def test_fail_all_ends_a_row_whose_prefill_chunk_raised(tiny: LoadedModel) -> None:
    model = _FailingPrefill(tiny.model)
    engine = BatchGenerator(model, prefill_step_size=8, stream=_new_generation_stream())
    running = engine.insert(BatchRequest(prompt=_prompt(3), max_tokens=50, stop_tokens=()))
    for _ in range(3):  # the short one joins and decodes
        engine.step()
    assert engine.active == 1
    prefilling = engine.insert(BatchRequest(prompt=_prompt(40), max_tokens=5, stop_tokens=()))
    model.armed.set()
    with pytest.raises(RuntimeError, match="simulated failure"):
        engine.step()
    error = RuntimeError("the model failed")
    ended = {o.uid: o.error for o in engine.fail_all(error)}
    assert ended == {running: error, prefilling: error}
    assert not engine.has_work


def test_a_prefilling_request_ends_with_the_error_when_the_step_raises(
    tiny: LoadedModel,
) -> None:
    model = _FailingPrefill(tiny.model)
    failing = replace(tiny, model=model)
    with BatchTokenGenerator(failing, prefill_step_size=8) as generator:
        assert _ends_within(generator, _prompt(5), timeout=60) == "finished"
        model.armed.set()
        ended = _ends_within(generator, _prompt(40), timeout=60)
        assert isinstance(ended, RuntimeError)
        assert "simulated failure while prefilling" in str(ended)
        model.armed.clear()  # the engine started clean: the next request runs
        assert _ends_within(generator, _prompt(40), timeout=60) == "finished"


def test_requests_after_the_engine_thread_died_fail_at_once(tiny: LoadedModel) -> None:
    with BatchTokenGenerator(tiny) as generator:
        assert generator.engine is not None

        engine = generator.engine
        real_fail_all = engine.fail_all
        calls: list[BaseException] = []

        def broken_step() -> list[Any]:
            raise RuntimeError("the model failed")

        def fail_all_fails_once(error: BaseException) -> list[Any]:
            calls.append(error)
            if len(calls) == 1:  # the step's handler itself fails: the thread dies
                raise RuntimeError("the handler failed too")
            return real_fail_all(error)

        engine.step = broken_step  # type: ignore[method-assign]
        engine.fail_all = fail_all_fails_once  # type: ignore[method-assign]
        first = _ends_within(generator, _prompt(5), timeout=60)
        assert isinstance(first, BaseException)
        generator._thread.join(30)
        assert not generator._thread.is_alive()
        later = _ends_within(generator, _prompt(5), timeout=10)
        assert isinstance(later, RuntimeError)
        assert "the batch engine stopped" in str(later)
        assert "the handler failed too" in str(first)


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_a_model_loaded_on_the_main_thread_runs_on_an_engine_thread(
    tiny_model_dir: Any,
) -> None:
    """gpt-oss's YaRN rope frequencies are made lazily when the model is built; unevaluated,
    they belong to the loading thread's stream and another thread fails with "There is no
    Stream(cpu, 0) in current thread". `load_model` evaluates them."""
    loaded = load_model(tiny_model_dir)
    errors: list[BaseException] = []
    out: list[list[float]] = []

    def run() -> None:
        try:
            with mx.stream(mx.new_stream(mx.default_device())):
                logits = loaded.model(mx.array([[1, 2, 3]]))
                out.append(logits[0, -1, :4].tolist())
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(60)
    assert errors == []
    assert len(out) == 1
    assert len(out[0]) == 4
