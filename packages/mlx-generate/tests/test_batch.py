"""Continuous batching: a request's tokens do not depend on what else is in the batch.

Greedy decoding on the tiny random gpt-oss makes any wrong cache row, mask or padding show up
as different tokens; prompts longer than the 128-token sliding window and generations that
cross it exercise mlx-lm's `BatchRotatingKVCache` under our scheduler.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import mlx.core as mx
import pytest

from mlx_harmony.generate import (
    BatchGenerator,
    BatchRequest,
    BatchTokenGenerator,
    CacheReuseMode,
    LoadedModel,
    SharedPromptCache,
    StopReason,
    TokenGenerator,
)
from mlx_harmony.sampling import SamplingParams


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 199_000) for _ in range(n)]


def _alone(loaded: LoadedModel, prompt: Sequence[int], n: int, **kwargs: object) -> list[int]:
    generator = TokenGenerator(loaded, prompt_cache=False, loop_detection="off")
    return list(generator.generate(prompt_tokens=prompt, max_tokens=n, stop_tokens=(), **kwargs))


def _drive(
    engine: BatchGenerator,
    requests: Sequence[BatchRequest],
    *,
    every: int = 0,
) -> dict[int, list[int]]:
    """Run to the end; with ``every``, insert one request every `every` steps (staggered)."""
    pending = list(requests)
    out: dict[int, list[int]] = {}
    step = 0
    while pending or engine.has_work:
        if pending and (every == 0 or step % every == 0):
            batch = pending if every == 0 else pending[:1]
            for request in batch:
                out[engine.insert(request)] = []
            del pending[: len(batch)]
        for output in engine.step():
            if output.token is not None:
                out[output.uid].append(output.token)
        step += 1
    return out


@pytest.mark.slow
@pytest.mark.parametrize("every", [0, 9])
def test_greedy_batched_equals_alone_across_the_sliding_window(
    tiny: LoadedModel, every: int
) -> None:
    lengths = [20, 140, 300, 7, 260]
    prompts = [_tokens(n, seed=i) for i, n in enumerate(lengths)]
    want = [_alone(tiny, p, 150) for p in prompts]
    engine = BatchGenerator(tiny.model, max_batch_size=3, prefill_step_size=64)
    got = _drive(engine, [BatchRequest(prompt=p, max_tokens=150) for p in prompts], every=every)
    assert [got[uid] for uid in sorted(got)] == want
    assert engine.stats.max_batch == 3
    assert engine.active == 0
    assert engine.waiting == 0


def test_greedy_batched_equals_alone_on_plain_kv_caches(llama: LoadedModel) -> None:
    prompts = [_tokens(n, seed=10 + n) for n in (5, 50, 90)]
    want = [_alone(llama, p, 40) for p in prompts]
    engine = BatchGenerator(llama.model, max_batch_size=8)
    got = _drive(engine, [BatchRequest(prompt=p, max_tokens=40) for p in prompts], every=4)
    assert [got[uid] for uid in sorted(got)] == want


def test_seeded_sampling_and_processors_are_per_request(tiny: LoadedModel) -> None:
    """Each request draws from its own key: batched, a seeded request repeats its lone run."""
    prompts = [_tokens(30, seed=1), _tokens(45, seed=2), _tokens(12, seed=3)]
    params = [
        SamplingParams(temperature=0.9, seed=7),
        None,
        SamplingParams(temperature=0.7, top_k=20, repetition_penalty=1.3, seed=11),
    ]
    want = [_alone(tiny, p, 30, sampling=s) for p, s in zip(prompts, params, strict=True)]
    engine = BatchGenerator(tiny.model, max_batch_size=4)
    got = _drive(
        engine,
        [
            BatchRequest(prompt=p, max_tokens=30, sampling=s)
            for p, s in zip(prompts, params, strict=True)
        ],
    )
    assert [got[uid] for uid in sorted(got)] == want
    assert want[0] != _alone(tiny, prompts[0], 30)  # the draw did something


def test_stops_and_limits_retire_one_request_without_disturbing_the_rest(
    tiny: LoadedModel,
) -> None:
    long_prompt, short_prompt = _tokens(40, seed=5), _tokens(25, seed=6)
    long_want = _alone(tiny, long_prompt, 60)
    short_want = _alone(tiny, short_prompt, 60)
    stop = short_want[10]
    engine = BatchGenerator(tiny.model)
    requests = [
        BatchRequest(prompt=long_prompt, max_tokens=60),
        BatchRequest(prompt=short_prompt, max_tokens=60, stop_tokens=[stop]),
        BatchRequest(prompt=short_prompt, max_tokens=4),
    ]
    reasons: dict[int, StopReason] = {}
    tokens: dict[int, list[int]] = {}
    for request in requests:
        tokens[engine.insert(request)] = []
    while engine.has_work:
        for output in engine.step():
            assert output.token is not None
            tokens[output.uid].append(output.token)
            if output.finish_reason is not None:
                reasons[output.uid] = output.finish_reason
    assert tokens[0] == long_want
    assert reasons[0] is StopReason.LENGTH
    assert tokens[1] == short_want[: short_want.index(stop) + 1]
    assert reasons[1] is StopReason.STOP
    assert tokens[2] == short_want[:4]
    assert reasons[2] is StopReason.LENGTH


def test_cancel_and_remove_leave_the_others_exact(tiny: LoadedModel) -> None:
    prompts = [_tokens(30, seed=20), _tokens(50, seed=21), _tokens(70, seed=22)]
    want = _alone(tiny, prompts[2], 40)
    flag = threading.Event()
    engine = BatchGenerator(tiny.model)
    cancelled = engine.insert(BatchRequest(prompt=prompts[0], max_tokens=40, cancel=flag.is_set))
    removed = engine.insert(BatchRequest(prompt=prompts[1], max_tokens=40))
    kept = engine.insert(BatchRequest(prompt=prompts[2], max_tokens=40))
    got: dict[int, list[int]] = {cancelled: [], removed: [], kept: []}
    ends: dict[int, StopReason | None] = {}
    while engine.has_work:
        for output in engine.step():
            if output.token is not None:
                got[output.uid].append(output.token)
            if output.finish_reason is not None:
                ends[output.uid] = output.finish_reason
        if len(got[cancelled]) == 3:
            flag.set()
        if len(got[removed]) == 5 and removed not in ends:
            assert engine.remove(removed)
            ends[removed] = None
    assert ends[cancelled] is StopReason.CANCELLED
    assert len(got[cancelled]) == 3
    assert len(got[removed]) == 5
    assert ends[removed] is None  # removed by the caller: no output at all
    assert got[kept] == want
    assert engine.stats.cancelled == 1
    assert not engine.remove(removed)


def test_shared_prompt_cache_serves_the_next_turn_exactly(tiny: LoadedModel) -> None:
    shared = SharedPromptCache(max_entries=4)
    first = _tokens(200, seed=30)
    engine = BatchGenerator(tiny.model, prompt_cache=shared, prefill_step_size=64)
    reply = _drive(engine, [BatchRequest(prompt=first, max_tokens=20)])[0]
    second = [*first, *reply, *_tokens(30, seed=31)]
    want = _alone(tiny, second, 25)
    infos = []
    uid = engine.insert(BatchRequest(prompt=second, max_tokens=25))
    got: list[int] = []
    while engine.has_work:
        for output in engine.step():
            if output.prefill is not None:
                infos.append(output.prefill)
            got.append(output.token)  # type: ignore[arg-type]
    assert got == want
    assert uid == 1
    assert infos[0].reused_prompt_tokens == len(first) - 1  # all but the last prompt token
    assert infos[0].cache_reuse is CacheReuseMode.EXTEND
    assert shared.hits == 1
    assert len(shared) == 2


def test_shared_prompt_cache_trims_only_what_it_can(tiny: LoadedModel) -> None:
    from mlx_harmony.generate import make_cache

    shared = SharedPromptCache(max_entries=8)
    short = _tokens(100, seed=40)  # inside the window: every layer can trim
    long = _tokens(300, seed=41)  # the sliding layers wrapped
    for tokens in (short, long):
        cache = make_cache(tiny.model)
        tiny.model(mx.array(tokens)[None], cache=cache)
        mx.eval([c.state for c in cache])
        shared.insert(tokens, cache, single_tail=False)
    hit = shared.fetch([*short[:60], 5, 6, 7])
    assert hit is not None
    assert (hit.reused, hit.trimmed) == (60, 40)
    assert all(c.offset == 60 for c in hit.caches)
    assert shared.fetch([*long[:200], 5, 6]) is None  # a wrapped ring cannot go back 100
    extended = shared.fetch([*long, 1, 2, 3])
    assert extended is not None
    assert (extended.reused, extended.trimmed) == (300, 0)


def test_shared_prompt_cache_is_bounded_by_entries_and_bytes(tiny: LoadedModel) -> None:
    from mlx_harmony.generate import make_cache

    def filled(tokens: list[int]) -> list[object]:
        cache = make_cache(tiny.model)
        tiny.model(mx.array(tokens)[None], cache=cache)
        mx.eval([c.state for c in cache])
        return cache

    prompts = [_tokens(50, seed=50 + i) for i in range(4)]
    caches = [filled(p) for p in prompts]
    size = sum(c.nbytes for c in caches[0])
    by_count = SharedPromptCache(max_entries=2)
    by_bytes = SharedPromptCache(max_entries=10, max_bytes=int(size * 2.5))
    for shared in (by_count, by_bytes):
        for p, c in zip(prompts, caches, strict=True):
            shared.insert(p, c, single_tail=False)
        assert len(shared) == 2
        assert shared.evictions == 2
        assert shared.fetch([*prompts[0], 1]) is None  # the oldest went first
        assert shared.fetch([*prompts[3], 1]) is not None
    assert by_bytes.nbytes <= size * 2.5
    assert SharedPromptCache(max_entries=0).fetch(prompts[0]) is None


def test_threaded_streams_match_their_lone_runs(tiny: LoadedModel) -> None:
    prompts = [_tokens(10 + 17 * i, seed=60 + i) for i in range(8)]
    solo = TokenGenerator(tiny, prompt_cache=False, loop_detection="off")
    want = [
        "".join(e.text for e in solo.stream(prompt_tokens=p, max_tokens=24, stop_tokens=()))
        for p in prompts
    ]
    results: list[tuple[str, object] | None] = [None] * len(prompts)
    with BatchTokenGenerator(tiny, max_batch_size=4, loop_detection="off") as batch:

        def run(i: int) -> None:
            events = list(batch.stream(prompt_tokens=prompts[i], max_tokens=24, stop_tokens=()))
            results[i] = ("".join(e.text for e in events), events[-1].stats)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert batch.stats.max_batch == 4
        assert batch.engine is not None
        assert batch.engine.active == 0
    for (text, stats), expected in zip(results, want, strict=True):  # type: ignore[misc]
        assert text == expected
        assert stats.completion_tokens == 24  # type: ignore[attr-defined]
        assert stats.stop_reason is StopReason.LENGTH  # type: ignore[attr-defined]


def test_stream_stop_strings_and_closing_free_the_slot(tiny: LoadedModel) -> None:
    prompt = _tokens(20, seed=70)
    with BatchTokenGenerator(tiny, loop_detection="off") as batch:
        full = "".join(
            e.text for e in batch.stream(prompt_tokens=prompt, max_tokens=30, stop_tokens=())
        )
        stop = full[len(full) // 2 : len(full) // 2 + 3]
        events = list(
            batch.stream(prompt_tokens=prompt, max_tokens=30, stop_tokens=(), stop_strings=[stop])
        )
        assert events[-1].stop_reason is StopReason.STOP
        assert "".join(e.text for e in events) == full[: full.index(stop)]
        stream = batch.stream(prompt_tokens=prompt, max_tokens=200, stop_tokens=())
        next(stream)
        stream.close()  # the consumer went away: the engine drops the request
        for _ in range(200):
            assert batch.engine is not None
            if not batch.engine.has_work:
                break
            threading.Event().wait(0.01)
        assert not batch.engine.has_work
        assert batch.stats.cancelled >= 2


def test_a_failing_step_ends_every_stream_with_the_error(tiny: LoadedModel) -> None:
    def boom(history: mx.array, logits: mx.array) -> mx.array:
        raise RuntimeError("processor failed")

    with BatchTokenGenerator(tiny, loop_detection="off") as batch:
        with pytest.raises(RuntimeError, match="processor failed"):
            list(batch.stream(prompt_tokens=_tokens(10, seed=80), logits_processors=[boom]))
        # the engine starts clean: the next request runs
        events = list(batch.stream(prompt_tokens=_tokens(10, seed=81), max_tokens=3))
        assert events[-1].stats is not None
    with pytest.raises(RuntimeError, match="closed"):
        batch.stream(prompt_tokens=[1, 2, 3])
