"""Prefill is chunked and interleaved: a short newcomer does not wait behind a long prompt."""

from __future__ import annotations

import random

from mlx_harmony.generate import BatchGenerator, BatchRequest, LoadedModel, TokenGenerator


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
