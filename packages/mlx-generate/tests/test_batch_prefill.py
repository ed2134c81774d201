"""Prefill is chunked and interleaved: a short newcomer does not wait behind a long prompt."""

from __future__ import annotations

import random
from typing import Any

from mlx_harmony.generate import (
    BatchGenerator,
    BatchRequest,
    LoadedModel,
    SharedPromptCache,
    TokenGenerator,
)


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 199_000) for _ in range(n)]


def test_a_short_prompt_joins_while_a_long_one_still_prefills(tiny: LoadedModel) -> None:
    long_prompt, short_prompt = _tokens(640, seed=1), _tokens(6, seed=2)
    engine = BatchGenerator(tiny.model, max_batch_size=4, prefill_step_size=64)
    long_uid = engine.insert(BatchRequest(prompt=long_prompt, max_tokens=4))
    engine.step()  # the long prompt's first chunk
    short_uid = engine.insert(BatchRequest(prompt=short_prompt, max_tokens=4))
    tokens: dict[int, list[int]] = {long_uid: [], short_uid: []}
    steps_to_first: dict[int, int] = {}
    step = 0
    while engine.has_work:
        step += 1
        for output in engine.step():
            if output.token is not None:
                tokens[output.uid].append(output.token)
                steps_to_first.setdefault(output.uid, step)
    # one step of the long prompt's chunk at most, one for the short prompt, one decode
    assert steps_to_first[short_uid] <= 3, steps_to_first
    assert steps_to_first[long_uid] >= 640 // 64, steps_to_first
    for uid, prompt in ((long_uid, long_prompt), (short_uid, short_prompt)):
        alone = TokenGenerator(tiny, prompt_cache=False, loop_detection="off")
        want = list(alone.generate(prompt_tokens=prompt, max_tokens=4, stop_tokens=()))
        assert tokens[uid] == want  # interleaving changes nothing in the tokens


def test_newcomers_take_turns_and_respect_the_slots(tiny: LoadedModel) -> None:
    engine = BatchGenerator(tiny.model, max_batch_size=2, prefill_step_size=32)
    for seed in range(3):
        engine.insert(BatchRequest(prompt=_tokens(200, seed=seed), max_tokens=2))
    engine.step()
    assert engine.waiting == 3  # two prefilling (a slot each), one not admitted
    assert engine.stats.prefilled_tokens == 32  # one chunk per step
    engine.step()
    assert engine.stats.prefilled_tokens == 64  # the second newcomer's first chunk
    while engine.has_work:
        engine.step()
    assert engine.stats.max_batch <= 2
    assert engine.active == 0


# -- newcomers prefilled together ----------------------------------------------------------------


def _together(
    loaded: LoadedModel, prompts: list[list[int]], n: int, **options: Any
) -> BatchGenerator:
    """Every prompt inserted at once; the engine's outputs checked against lone runs."""
    engine = BatchGenerator(loaded.model, **options)
    uids = [engine.insert(BatchRequest(prompt=p, max_tokens=n)) for p in prompts]
    tokens: dict[int, list[int]] = {uid: [] for uid in uids}
    while engine.has_work:
        for output in engine.step():
            if output.token is not None:
                tokens[output.uid].append(output.token)
    for uid, prompt in zip(uids, prompts, strict=True):
        alone = TokenGenerator(loaded, prompt_cache=False, loop_detection="off")
        want = list(alone.generate(prompt_tokens=prompt, max_tokens=n, stop_tokens=()))
        assert tokens[uid] == want, f"prompt of {len(prompt)} tokens"
    return engine


def test_short_newcomers_prefill_together_and_give_their_lone_tokens(tiny: LoadedModel) -> None:
    # Different lengths (right padding), two past the 128-token sliding window.
    prompts = [_tokens(n, seed=20 + n) for n in (40, 7, 150, 90, 260)]
    engine = _together(tiny, prompts, 30, max_batch_size=8, prefill_step_size=2048)
    assert engine.stats.prefills_together == 1
    assert engine.stats.rows_prefilled_together == 5


def test_plain_kv_caches_prefill_together_exactly(llama: LoadedModel) -> None:
    prompts = [_tokens(n, seed=40 + n) for n in (5, 50, 90, 33)]
    engine = _together(llama, prompts, 30, max_batch_size=8, prefill_step_size=1024)
    assert engine.stats.rows_prefilled_together == 4


def test_the_group_respects_the_chunk_and_the_batch_size(tiny: LoadedModel) -> None:
    # Six 100-token rests (99 but the last token): 2 fit a 256-token chunk with their padding.
    prompts = [_tokens(100, seed=60 + i) for i in range(6)]
    engine = _together(tiny, prompts, 4, max_batch_size=8, prefill_step_size=256)
    assert engine.stats.prefills_together == 3
    engine = _together(tiny, prompts, 4, max_batch_size=8, prefill_batch_size=4)
    assert engine.stats.rows_prefilled_together == 6  # 4, then 2
    engine = _together(tiny, prompts[:3], 4, max_batch_size=8, prefill_batch_size=1)
    assert engine.stats.prefills_together == 0  # one at a time, as before


def test_a_cached_prefix_and_fresh_prompts_prefill_together(tiny: LoadedModel) -> None:
    # The first turn leaves its prompt in the shared cache; the next turn (a 200-token prefix
    # in the cache, past the window) goes in with two fresh prompts: left and right padding.
    first = _tokens(200, seed=80)
    engine = _together(tiny, [first], 3, prompt_cache=SharedPromptCache())
    cache = engine.prompt_cache
    prompts = [[*first, *_tokens(30, seed=81)], _tokens(60, seed=82), _tokens(140, seed=83)]
    engine = _together(tiny, prompts, 20, prompt_cache=cache)
    assert engine.stats.reused_tokens == 199
    assert engine.stats.rows_prefilled_together == 3
