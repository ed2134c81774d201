"""Prompt-cache reuse is token-exact: a reused cache gives the tokens a fresh cache gives.

The tiny gpt-oss has mlx-lm's layout: a 128-token RotatingKVCache on sliding layers, a KVCache
on full ones. Greedy decoding makes any wrong cache state show up as different tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from mlx_lm.models.cache import (
    KVCache,
    QuantizedKVCache,
    RotatingKVCache,
    can_trim_prompt_cache,
)

from mlx_harmony.generate import (
    CacheReuseMode,
    GenerationStats,
    LoadedModel,
    PromptCache,
    TokenGenerator,
    common_prefix_len,
    stream_generate,
)

WINDOW = 128
RETURN, END = 200002, 200007


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 199_000) for _ in range(n)]


def _run(
    generator: TokenGenerator, prompt: Sequence[int], n: int
) -> tuple[list[int], GenerationStats]:
    tokens = list(generator.generate(prompt_tokens=prompt, max_tokens=n, stop_tokens=()))
    assert generator.last_stats is not None
    return tokens, generator.last_stats


def _fresh(loaded: LoadedModel, prompt: Sequence[int], n: int, **options: object) -> list[int]:
    generator = TokenGenerator(loaded, prompt_cache=False, loop_detection="off", **options)  # type: ignore[arg-type]
    tokens, stats = _run(generator, prompt, n)
    assert stats.cache_reuse is CacheReuseMode.DISABLED
    return tokens


@pytest.fixture
def same_as_fresh(assert_same_tokens, assert_same_cache):
    """Run `prompt` on a fresh cache; the reused run must give the same tokens and end with the
    same cache contents."""

    def check(
        loaded: LoadedModel,
        chat: TokenGenerator,
        prompt: Sequence[int],
        got: list[int],
        **options: object,
    ) -> None:
        fresh = TokenGenerator(loaded, prompt_cache=False, loop_detection="off", **options)  # type: ignore[arg-type]
        want, stats = _run(fresh, prompt, len(got))
        assert stats.cache_reuse is CacheReuseMode.DISABLED
        assert_same_tokens(loaded, got, want)
        assert_same_cache(chat.prompt_cache, fresh.prompt_cache)

    return check


@pytest.fixture
def chat(tiny: LoadedModel) -> TokenGenerator:
    return TokenGenerator(tiny, loop_detection="off")


def test_reuse_past_the_sliding_window_is_token_exact(
    tiny: LoadedModel, chat: TokenGenerator, same_as_fresh
) -> None:
    p1 = _tokens(150, seed=1)
    g1, s1 = _run(chat, p1, 140)
    assert s1.cache_reuse is CacheReuseMode.FRESH
    caches = chat.prompt_cache.caches
    # The scenario really wraps the window: mlx-lm's trim is refused, it would prefill it all.
    assert any(isinstance(c, RotatingKVCache) and c.offset > WINDOW for c in caches)
    assert not can_trim_prompt_cache(caches)
    assert chat.prompt_cache.tokens == p1 + g1[:-1]

    # Harmony drops the previous analysis: the next prompt leaves the completion right away.
    other = g1[0] + 1
    p2 = [*p1, other, *_tokens(40, seed=2)]
    g2, s2 = _run(chat, p2, 30)
    assert s2.cache_reuse is CacheReuseMode.CHECKPOINT
    assert s2.reused_prompt_tokens == len(p1)
    assert s2.prefilled_tokens == 41
    same_as_fresh(tiny, chat, p2, g2)

    # Turn 3 keeps the first token of the completion (<|channel|>, say): common prefix one past
    # the checkpoint, which still serves.
    p3 = [*p2, g2[0], *_tokens(25, seed=3)]
    g3, s3 = _run(chat, p3, 30)
    assert s3.cache_reuse is CacheReuseMode.CHECKPOINT
    assert s3.reused_prompt_tokens == len(p2)
    assert s3.prefilled_tokens == 26
    same_as_fresh(tiny, chat, p3, g3)


def test_the_stop_token_can_be_replaced_after_the_wrap(
    tiny: LoadedModel, chat: TokenGenerator, force_tokens, same_as_fresh
) -> None:
    # openai-harmony keeps every analysis after the first final answer: the next prompt repeats
    # the whole completion, with <|end|> where the model wrote <|return|>.
    p1 = _tokens(120, seed=30)
    completion = [*_tokens(150, seed=31), RETURN]
    g1 = list(
        chat.generate(
            prompt_tokens=p1,
            max_tokens=200,
            stop_tokens=[RETURN],
            logits_processors=[force_tokens(completion, prompt_len=len(p1))],
        )
    )
    assert g1 == completion
    assert chat.prompt_cache.tokens == p1 + completion  # the stop token was fed too
    assert not can_trim_prompt_cache(chat.prompt_cache.caches)
    p2 = [*p1, *completion[:-1], END, *_tokens(20, seed=32)]
    g2, s2 = _run(chat, p2, 20)
    assert s2.cache_reuse is CacheReuseMode.TRIM
    assert s2.reused_prompt_tokens == len(p1) + len(completion) - 1
    assert s2.prefilled_tokens == 21
    same_as_fresh(tiny, chat, p2, g2)

    # Two tokens back is one too many for the wrapped ring: the checkpoint serves instead.
    # (The cache holds g2[:-1]: max_tokens never feeds the last token.)
    p3 = [*p2, *g2[:-3], *_tokens(10, seed=33)]
    g3, s3 = _run(chat, p3, 15)
    assert s3.cache_reuse is CacheReuseMode.CHECKPOINT
    assert s3.reused_prompt_tokens == len(p2)
    same_as_fresh(tiny, chat, p3, g3)


def test_one_token_before_a_wrapped_checkpoint(
    tiny: LoadedModel, chat: TokenGenerator, same_as_fresh
) -> None:
    p1 = _tokens(160, seed=34)
    _run(chat, p1, 20)
    p2 = [*p1[:-1], p1[-1] + 1, *_tokens(10, seed=35)]
    g2, s2 = _run(chat, p2, 20)
    assert s2.cache_reuse is CacheReuseMode.CHECKPOINT
    assert s2.reused_prompt_tokens == len(p1) - 1
    same_as_fresh(tiny, chat, p2, g2)


def test_trimming_a_wrapped_ring_anyway_is_caught(
    tiny: LoadedModel, chat: TokenGenerator, same_as_fresh
) -> None:
    # The negative control: the comparison above sees a wrong sliding-window state.
    p1 = _tokens(150, seed=40)
    g1, _ = _run(chat, p1, 60)
    chat.prompt_cache._trim(30)  # what trimming without the rules would do
    p2 = [*p1, *g1[:29], *_tokens(10, seed=41)]
    g2, stats = _run(chat, p2, 10)
    assert stats.cache_reuse is CacheReuseMode.EXTEND
    with pytest.raises(AssertionError, match="differ"):
        same_as_fresh(tiny, chat, p2, g2)


def test_short_turns_trim_like_mlx_lm(
    tiny: LoadedModel, chat: TokenGenerator, same_as_fresh
) -> None:
    p1 = _tokens(30, seed=4)
    g1, _ = _run(chat, p1, 20)
    assert can_trim_prompt_cache(chat.prompt_cache.caches)  # 49 tokens: nothing wrapped
    p2 = [*p1, g1[0] + 1, *_tokens(10, seed=5)]
    g2, s2 = _run(chat, p2, 20)
    assert s2.cache_reuse is CacheReuseMode.TRIM
    assert s2.reused_prompt_tokens == 30
    same_as_fresh(tiny, chat, p2, g2)


def test_a_prompt_that_extends_the_cache_prefills_only_the_rest(
    tiny: LoadedModel, chat: TokenGenerator, same_as_fresh
) -> None:
    p1 = _tokens(100, seed=6)
    g1, _ = _run(chat, p1, 60)
    p2 = [*p1, *g1, *_tokens(12, seed=7)]
    g2, s2 = _run(chat, p2, 20)
    # The last generated token was never fed (max_tokens), so the cache holds p1 + g1[:-1].
    assert s2.cache_reuse is CacheReuseMode.EXTEND
    assert s2.reused_prompt_tokens == len(p1) + len(g1) - 1
    assert s2.prefilled_tokens == 13
    same_as_fresh(tiny, chat, p2, g2)


def test_a_shorter_prefix_than_a_wrapped_checkpoint_recomputes(
    tiny: LoadedModel, chat: TokenGenerator, same_as_fresh
) -> None:
    p1 = _tokens(150, seed=8)
    _run(chat, p1, 10)
    p2 = [*p1[:100], *_tokens(20, seed=9)]
    g2, s2 = _run(chat, p2, 20)
    assert s2.cache_reuse is CacheReuseMode.RECOMPUTE
    assert s2.reused_prompt_tokens == 0
    assert s2.prefilled_tokens == len(p2)
    same_as_fresh(tiny, chat, p2, g2)


def test_a_checkpoint_taken_before_the_wrap_trims_back(
    tiny: LoadedModel, chat: TokenGenerator, same_as_fresh
) -> None:
    p1 = _tokens(100, seed=10)
    _run(chat, p1, 60)  # 159 tokens: the live sliding layers wrapped, the checkpoint (100) not
    assert not can_trim_prompt_cache(chat.prompt_cache.caches)
    p2 = [*p1[:90], *_tokens(20, seed=11)]
    g2, s2 = _run(chat, p2, 20)
    assert s2.cache_reuse is CacheReuseMode.CHECKPOINT
    assert s2.reused_prompt_tokens == 90
    same_as_fresh(tiny, chat, p2, g2)


def test_the_same_prompt_again_prefills_its_last_token(
    tiny: LoadedModel, chat: TokenGenerator, assert_same_tokens
) -> None:
    p1 = _tokens(40, seed=12)
    g1, _ = _run(chat, p1, 10)
    again, stats = _run(chat, p1, 10)
    assert stats.reused_prompt_tokens == len(p1) - 1
    assert stats.prefilled_tokens == 1
    assert_same_tokens(tiny, again, g1)


def test_nothing_in_common_starts_fresh(chat: TokenGenerator) -> None:
    _run(chat, _tokens(30, seed=13), 5)
    _, stats = _run(chat, _tokens(30, seed=14), 5)
    assert stats.cache_reuse is CacheReuseMode.FRESH
    assert stats.reused_prompt_tokens == 0


def test_breaking_out_early_keeps_the_cache_consistent(
    tiny: LoadedModel, chat: TokenGenerator, same_as_fresh
) -> None:
    p1 = _tokens(140, seed=15)
    taken = []
    for token in chat.generate(prompt_tokens=p1, max_tokens=100, stop_tokens=()):
        taken.append(token)
        if len(taken) == 5:
            break
    assert chat.prompt_cache.tokens == p1 + taken  # all five were fed before they came out
    p2 = [*p1, *taken, *_tokens(8, seed=16)]
    g2, stats = _run(chat, p2, 15)
    assert stats.cache_reuse is CacheReuseMode.EXTEND
    same_as_fresh(tiny, chat, p2, g2)


def test_reuse_off_prefills_everything(tiny: LoadedModel) -> None:
    generator = TokenGenerator(tiny, prompt_cache=False)
    p1 = _tokens(30, seed=17)
    _run(generator, p1, 5)
    _, stats = _run(generator, [*p1, 5], 5)
    assert stats.cache_reuse is CacheReuseMode.DISABLED
    assert stats.prefilled_tokens == 31


@pytest.mark.slow  # seconds: the quick tier stays under its budget
def test_max_kv_size_rotates_every_layer_and_bounds_the_cache(
    tiny: LoadedModel, assert_same_tokens
) -> None:
    generator = TokenGenerator(tiny, max_kv_size=64, loop_detection="off")
    assert all(isinstance(c, RotatingKVCache) for c in generator.prompt_cache.caches)
    p1 = _tokens(40, seed=18)
    g1, s1 = _run(generator, p1, 80)
    assert len(g1) == 80
    assert s1.kv_length == 40 + 79
    for c in generator.prompt_cache.caches:
        assert c.keys.shape[2] <= max(c.max_size, 40)
    # Reuse past the wrap still works, through the checkpoint.
    p2 = [*p1, g1[0] + 1, *_tokens(5, seed=19)]
    _, s2 = _run(generator, p2, 5)
    assert s2.cache_reuse is CacheReuseMode.CHECKPOINT
    assert s2.reused_prompt_tokens == 40

    # While nothing wraps, a rotating cache is exact.
    roomy = TokenGenerator(tiny, max_kv_size=512, loop_detection="off")
    assert_same_tokens(tiny, _run(roomy, p1, 30)[0], _fresh(tiny, p1, 30))


def test_kv_bits_quantizes_and_reuses_exactly(llama: LoadedModel, same_as_fresh) -> None:
    generator = TokenGenerator(llama, kv_bits=8, loop_detection="off")
    assert all(isinstance(c, QuantizedKVCache) for c in generator.prompt_cache.caches)
    p1 = _tokens(60, seed=20)
    g1, _ = _run(generator, p1, 20)
    p2 = [*p1, g1[0] + 1, *_tokens(10, seed=21)]
    g2, s2 = _run(generator, p2, 20)
    assert s2.cache_reuse is CacheReuseMode.TRIM
    assert s2.reused_prompt_tokens == 60
    same_as_fresh(llama, generator, p2, g2, kv_bits=8)


def test_kv_bits_after_a_start_quantizes_on_the_way(llama: LoadedModel) -> None:
    generator = TokenGenerator(llama, kv_bits=4, quantized_kv_start=50, loop_detection="off")
    assert all(type(c) is KVCache for c in generator.prompt_cache.caches)
    tokens, _ = _run(generator, _tokens(40, seed=22), 20)
    assert len(tokens) == 20
    assert all(isinstance(c, QuantizedKVCache) for c in generator.prompt_cache.caches)


def test_kv_bits_is_refused_where_it_cannot_work(tiny: LoadedModel, llama: LoadedModel) -> None:
    with pytest.raises(ValueError, match="does not divide the model's head_dim 16"):
        TokenGenerator(tiny, kv_bits=4)
    with pytest.raises(ValueError, match="cannot be combined"):
        TokenGenerator(llama, kv_bits=4, max_kv_size=256)
    with pytest.raises(ValueError, match="kv_bits must be 4, 8 or None"):
        TokenGenerator(llama, kv_bits=7)
    with pytest.raises(ValueError, match="max_kv_size"):
        TokenGenerator(llama, max_kv_size=2)


def test_a_plain_kv_cache_model_needs_no_checkpoint(llama: LoadedModel) -> None:
    cache = PromptCache(llama.model)
    cache.checkpoint(10)
    assert cache.checkpoint_length is None  # every layer trims: nothing to snapshot


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [
        ([], [1], 0),
        ([1, 2, 3], [1, 2, 3], 3),
        ([1, 2, 3], [1, 2], 2),
        (list(range(2000)), [*range(1500), 7], 1500),
        (list(range(1025)), [*range(1024), 0], 1024),
    ],
)
def test_common_prefix_len(a: list[int], b: list[int], n: int) -> None:
    assert common_prefix_len(a, b) == n
    assert common_prefix_len(b, a) == n


def test_common_prefix_len_of_equal_tokens_in_a_list_and_a_tuple() -> None:
    # The prompt cache keys some prompts as tuples and others as lists: n identical prompts
    # of one request met here and read past the end.
    assert common_prefix_len([1, 2, 3], (1, 2, 3)) == 3
    assert common_prefix_len((1, 2, 3, 4), [1, 2, 9]) == 2


# -- conversations that share only the instructions ----------------------------------------------


def _harmony_like(seed: int, user: int) -> tuple[list[int], int]:
    """System and developer messages (each ending in <|end|>) shared by every conversation of
    one application, then a user message of its own; and where the instructions end."""
    instructions = [*_tokens(70, seed=seed), END, *_tokens(90, seed=seed + 1), END]
    return [*instructions, *_tokens(50, seed=user)], len(instructions)


def test_another_conversation_reuses_the_instructions_past_the_window(
    tiny: LoadedModel, chat: TokenGenerator, same_as_fresh
) -> None:
    a, shared = _harmony_like(50, user=51)
    g1, s1 = _run(chat, a, 40)
    assert s1.cache_reuse is CacheReuseMode.FRESH
    assert chat.prompt_cache.boundary_checkpoints == [71, shared]
    # The live sliding layers wrapped well past the instructions: only a checkpoint serves.
    assert not chat.prompt_cache.can_trim(len(chat.prompt_cache) - shared)

    b, _ = _harmony_like(50, user=52)
    g2, s2 = _run(chat, b, 30)
    assert s2.cache_reuse is CacheReuseMode.CHECKPOINT
    assert s2.reused_prompt_tokens == shared
    assert s2.prefilled_tokens == len(b) - shared
    same_as_fresh(tiny, chat, b, g2)

    # Back to the first conversation: the instructions' checkpoint is still there.
    again, s3 = _run(chat, a, len(g1))
    assert s3.reused_prompt_tokens == shared
    assert again == g1


def test_without_message_boundaries_another_conversation_recomputes(
    chat: TokenGenerator,
) -> None:
    # The negative control: the same prompts with their <|end|> tokens replaced.
    a, _ = _harmony_like(50, user=51)
    b, _ = _harmony_like(50, user=52)
    a = [t if t != END else 7 for t in a]
    b = [t if t != END else 7 for t in b]
    _run(chat, a, 40)
    assert chat.prompt_cache.boundary_checkpoints == []
    _, stats = _run(chat, b, 5)
    assert stats.cache_reuse is CacheReuseMode.RECOMPUTE
    assert stats.reused_prompt_tokens == 0


def test_a_prompt_cache_keeps_the_shortest_boundary_checkpoints(tiny: LoadedModel) -> None:
    cache = PromptCache(tiny.model)
    layers = {0: object()}
    cache.add_checkpoints(dict.fromkeys((500, 40, 300, 90, 1000, 10), layers))
    assert cache.boundary_checkpoints == [10, 40, 90, 300]
    cache.commit(list(range(95)), single_tail=True)  # the caches hold 0 of them: cut to 0
    assert cache.boundary_checkpoints == []


def test_checkpoints_while_speculating_are_refused(tiny: LoadedModel) -> None:
    prompt, shared = _harmony_like(50, user=53)
    events = stream_generate(
        tiny.model, tiny.tokenizer, prompt, max_tokens=4, prompt_lookup=2, checkpoints=[shared]
    )
    with pytest.raises(ValueError, match="checkpoints are taken by the plain prefill"):
        next(events)
