"""The compiled, static-shape decode step: token-identical to mlx-lm and to the eager loop across
the 128-token window wrap and bucket changes (buckets of 64, 128, 256, ... positions here), and
the caches it writes back are the eager loop's."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import pytest

from mlx_harmony.generate import LoadedModel, PromptCache
from mlx_harmony.generate import compiled as compiled_module
from mlx_harmony.generate.compiled import StaticDecoder, compiled_decode_unsupported_reason
from mlx_harmony.generate.loop import generate_step, stream_generate
from mlx_harmony.sampling import make_repetition_penalty, make_sampler

BUCKET = 64


def _prompt(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(199_998) for _ in range(n)]


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the compiled steps taken, to prove the compiled path ran."""
    count = [0]
    original = StaticDecoder.step

    def counted(self: StaticDecoder, token: mx.array) -> mx.array:
        count[0] += 1
        return original(self, token)

    monkeypatch.setattr(StaticDecoder, "step", counted)
    return count


def _tokens(model: Any, prompt: list[int], n: int, **options: Any) -> list[int]:
    cache = PromptCache(model)
    options.setdefault("min_bucket", BUCKET)
    return [
        event.token
        for event in stream_generate(
            model,
            None,
            prompt,
            prompt_cache=cache,
            max_tokens=n,
            stop_tokens=(),
            detokenize=False,
            **options,
        )
        if event.token is not None
    ]


def _mlx_lm_tokens(model: Any, prompt: list[int], n: int) -> list[int]:
    from mlx_lm.generate import generate_step as mlx_lm_step

    return [int(t) for t, _ in mlx_lm_step(mx.array(prompt), model, max_tokens=n)]


@pytest.mark.parametrize("n", [170, pytest.param(530, marks=pytest.mark.slow)])
def test_greedy_tokens_match_mlx_lm_past_the_window_and_bucket_changes(
    tiny: LoadedModel, n: int, steps: list[int], assert_same_tokens: Callable[..., None]
) -> None:
    prompt = _prompt(100)  # bucket 128 first, then 256 (and 512, 1024 with 530 tokens)
    got = _tokens(tiny.model, prompt, n, compiled=True)
    assert steps[0] == n - 1  # every token after the first came from the compiled step
    assert_same_tokens(tiny, got, _mlx_lm_tokens(tiny.model, prompt, n))


@pytest.mark.slow
def test_sampling_processors_and_logprobs_match_the_eager_loop(
    tiny: LoadedModel, steps: list[int], assert_same_tokens: Callable[..., None]
) -> None:
    prompt = _prompt(40, seed=1)
    n = 200  # past the window (128) and the buckets 64 -> 128 -> 256
    runs = []
    for compiled in (True, False):
        events = list(
            stream_generate(
                tiny.model,
                None,
                prompt,
                max_tokens=n,
                stop_tokens=(),
                detokenize=False,
                logprobs=True,
                sampler=make_sampler(temperature=1.0, top_p=0.95, seed=5),
                logits_processors=[make_repetition_penalty(1.3, context_size=32)],
                compiled=compiled,
                min_bucket=BUCKET,
            )
        )
        runs.append(events[:-1])
    assert steps[0] == n - 1
    compiled_run, eager_run = runs
    assert_same_tokens(tiny, [e.token for e in compiled_run], [e.token for e in eager_run])
    for a, b in zip(compiled_run, eager_run, strict=True):
        assert a.logprobs is not None
        assert b.logprobs is not None
        assert mx.array_equal(a.logprobs, b.logprobs)


@pytest.mark.slow  # seconds: the quick tier stays under its budget
@pytest.mark.parametrize("output", ["logprobs", "token"])
def test_seeded_sampling_and_greedy_logprobs_match_the_eager_loop(
    tiny: LoadedModel, output: str, assert_same_tokens: Callable[..., None]
) -> None:
    prompt = _prompt(20, seed=2)
    n = 200
    runs = []
    for compiled in (True, False):
        sampler = make_sampler(temperature=0.8, seed=11) if output == "logprobs" else None
        runs.append(_tokens(tiny.model, prompt, n, sampler=sampler, compiled=compiled))
    assert_same_tokens(tiny, *runs)


@pytest.mark.slow
def test_written_back_caches_equal_the_eager_loop_and_serve_the_next_turn(
    tiny: LoadedModel,
    steps: list[int],
    assert_same_cache: Callable[[object, object], None],
    assert_same_tokens: Callable[..., None],
) -> None:
    first = _prompt(90, seed=3)
    caches = {True: PromptCache(tiny.model), False: PromptCache(tiny.model)}
    answers: dict[bool, list[list[int]]] = {True: [], False: []}
    for compiled, cache in caches.items():
        prompt = list(first)
        for _turn in range(3):  # each turn wraps the window; the next prompt drops the answer
            tokens = [
                e.token
                for e in stream_generate(
                    tiny.model,
                    None,
                    prompt,
                    prompt_cache=cache,
                    max_tokens=150,
                    stop_tokens=(),
                    detokenize=False,
                    compiled=compiled,
                    min_bucket=BUCKET,
                )
                if e.token is not None
            ]
            answers[compiled].append(tokens)
            prompt = prompt + tokens[:-1] + _prompt(5, seed=len(prompt))
    assert steps[0] == 3 * 149
    for a, b in zip(answers[True], answers[False], strict=True):
        assert_same_tokens(tiny, a, b)
    assert_same_cache(caches[True], caches[False])
    assert caches[True].checkpoint_length == caches[False].checkpoint_length


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_closing_early_writes_back_what_was_fed(tiny: LoadedModel) -> None:
    prompt = mx.array(_prompt(30, seed=4))
    caches = {}
    firsts = {}
    for compiled in (True, False):
        cache = tiny.model.make_cache()
        gen = generate_step(
            prompt, tiny.model, cache=cache, max_tokens=300, compiled=compiled, min_bucket=8
        )
        firsts[compiled] = [next(gen)[0] for _ in range(150)]
        gen.close()
        caches[compiled] = cache
    assert firsts[True] == firsts[False]
    for a, b in zip(caches[True], caches[False], strict=True):
        # The step after the 150th token was queued: that token is in the caches too.
        assert a.offset == b.offset == prompt.size + 150
        for x, y in zip(a.keys_and_values(), b.keys_and_values(), strict=True):
            assert x.shape == y.shape
            assert mx.abs(x - y).max().item() < 1e-5
    # Either step continues from what was written back, with the same tokens.
    token = mx.array([firsts[True][-1]])
    rest = [
        [t for t, _ in generate_step(token, tiny.model, cache=caches[c], max_tokens=20, compiled=c)]
        for c in (False, True)
    ]
    assert rest[0] == rest[1]


def test_where_it_does_not_apply_the_loop_is_eager(
    tiny: LoadedModel, llama: LoadedModel, steps: list[int]
) -> None:
    llama_cache = llama.model.make_cache()
    assert "llama" in (compiled_decode_unsupported_reason(llama.model, llama_cache) or "")
    with pytest.raises(ValueError, match=r"compiled=True.*llama"):
        _tokens(llama.model, _prompt(10), 5, compiled=True)
    with pytest.raises(ValueError, match="RotatingKVCache"):
        list(
            stream_generate(
                tiny.model,
                None,
                _prompt(10),
                max_tokens=5,
                stop_tokens=(),
                compiled=True,
                detokenize=False,
                max_kv_size=64,
            )
        )
    # compiled=None falls back: same tokens as mlx-lm, no compiled step taken.
    prompt = _prompt(10)
    got = _tokens(llama.model, prompt, 20)
    assert got == _mlx_lm_tokens(llama.model, prompt, 20)
    assert steps[0] == 0


def test_bad_bucket_is_refused(tiny: LoadedModel) -> None:
    with pytest.raises(ValueError, match="min_bucket must be positive"):
        _tokens(tiny.model, _prompt(5), 3, min_bucket=0)


def test_compiled_steps_are_shared_per_model(tiny: LoadedModel) -> None:
    _tokens(tiny.model, _prompt(5), 3)
    assert id(tiny.model) in compiled_module._COMPILED


@pytest.mark.slow
def test_demo_model_greedy_tokens_match_mlx_lm(
    steps: list[int], assert_same_tokens: Callable[..., None]
) -> None:
    module = pytest.importorskip("mlx_harmony.demo_model")
    from mlx_harmony.generate import load_model
    from mlx_harmony.harmony_format import Message, render_prompt

    loaded = load_model(module.ensure_demo_model(progress=False))
    prompt = render_prompt([Message.user("What time is it? Tell me a long story about it.")])
    n = 600  # the demo model's window is 16 tokens; buckets change at 64, 128, 256, 512
    got = _tokens(loaded.model, list(prompt), n, compiled=True)
    assert steps[0] == n - 1
    assert_same_tokens(loaded, got, _mlx_lm_tokens(loaded.model, list(prompt), n))


def test_attention_spans_round_the_position_up() -> None:
    # Within the first 16 * min_bucket positions the grain is min_bucket; past it, 1/16 bucket.
    assert compiled_module._span_for(1, 1024, 1024) == 1024
    assert compiled_module._span_for(2049, 4096, 1024) == 3072
    assert compiled_module._span_for(32769, 65536, 1024) == 32768 + 4096
    assert compiled_module._span_for(65536, 65536, 1024) == 65536
    assert compiled_module._span_for(17, 32, 4) == 20


@pytest.mark.slow
def test_greedy_tokens_match_mlx_lm_across_attention_spans(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch, assert_same_tokens: Callable[..., None]
) -> None:
    seen: list[tuple[int, int, int]] = []
    original = StaticDecoder._use_span

    def spy(self: StaticDecoder) -> None:
        original(self)
        seen.append((self.offset, self.span, self.bucket))

    monkeypatch.setattr(StaticDecoder, "_use_span", spy)
    prompt = _prompt(10, seed=6)
    n = 250  # buckets 16 -> 32 -> ... -> 256, spans of 2 (min_bucket) then bucket / 16
    got = _tokens(tiny.model, prompt, n, compiled=True, min_bucket=2)
    assert_same_tokens(tiny, got, _mlx_lm_tokens(tiny.model, prompt, n))
    assert len(seen) > 20  # the step changed span many times, mostly within a bucket
    for offset, span, bucket in seen:
        assert offset < span <= bucket
        assert span - offset <= max(bucket // compiled_module.SPANS_PER_BUCKET, 2)
    assert any(span < bucket for _, span, bucket in seen)


def test_on_cuda_the_default_is_eager_and_compiled_true_still_compiles(
    tiny: LoadedModel, steps: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlx_harmony.generate import loop

    monkeypatch.setattr(loop, "on_cuda", lambda: True)
    prompt = _prompt(10)
    eager = _tokens(tiny.model, prompt, 12)
    assert steps[0] == 0
    assert _tokens(tiny.model, prompt, 12, compiled=True) == eager
    assert steps[0] > 0
