"""Speculative decoding is token-exact with greedy decoding, across gpt-oss's 128-token window.

The tiny gpt-oss has a 128-token RotatingKVCache on its sliding layers: generations of 300+
tokens wrap it, where rewinding rejected drafts goes wrong if a ring is trimmed (mlx-lm issue
1914). Any stale or missing window position changes the greedy tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
import pytest
from mlx_lm.models.cache import RotatingKVCache

from mlx_harmony.generate import LoadedModel, PromptCache, StopReason
from mlx_harmony.generate.loop import GenerationResult, generate
from mlx_harmony.generate.speculative import DraftModel, PromptLookup, rewind_verified
from mlx_harmony.sampling import make_sampler

N = 320  # past the 128-token window, twice


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 199_000) for _ in range(n)]


def _run(loaded: LoadedModel, prompt: Sequence[int], n: int = N, **kw: Any) -> GenerationResult:
    return generate(
        loaded.model, None, list(prompt), max_tokens=n, stop_tokens=(), detokenize=False, **kw
    )


@pytest.fixture(scope="module")
def plain(tiny: LoadedModel) -> list[int]:
    return _run(tiny, _tokens(40, 0) * 2).tokens


# --- pure parts ---------------------------------------------------------------------------


def test_prompt_lookup_proposes_what_followed_the_latest_earlier_occurrence() -> None:
    lookup = PromptLookup(2, [1, 2, 3, 4, 9, 1, 2, 5, 6, 7, 1])
    assert lookup.propose(3) == []  # the last bigram (7, 1) has not occurred before
    lookup.extend([2])
    assert lookup.propose(3) == [5, 6, 7]  # (1, 2) last seen before 5, not before 3
    assert lookup.propose(1) == [5]
    lookup.extend([5, 6, 7, 1, 2])
    assert lookup.propose(10) == [5, 6, 7, 1, 2]  # runs to the end of the context


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_prompt_lookup_refuses_bad_lengths(bad: object) -> None:
    with pytest.raises(ValueError, match="prompt_lookup must be a positive n-gram length"):
        PromptLookup(bad)  # type: ignore[arg-type]


def _window(c: RotatingKVCache) -> mx.array:
    """What the next token attends to in a rotating layer, oldest first."""
    ordered = c._temporal_order(c.keys)
    n = min(c.offset, c.max_size - 1)
    return ordered[..., ordered.shape[2] - n :, :]


@pytest.mark.parametrize(("before", "fed", "drop"), [(200, 5, 3), (200, 5, 0), (10, 4, 2)])
def test_rewinding_a_wrapped_ring_keeps_the_window(before: int, fed: int, drop: int) -> None:
    """A ring that took `before` single writes, then `fed` at once and dropped `drop`, serves
    the next tokens as a ring that only ever saw the kept ones."""
    mx.random.seed(0)
    data = mx.random.normal((1, 1, before + fed + 2, 4))
    spec, ref = RotatingKVCache(max_size=16), RotatingKVCache(max_size=16)
    for i in range(before):
        spec.update_and_fetch(data[..., i : i + 1, :], data[..., i : i + 1, :])
        ref.update_and_fetch(data[..., i : i + 1, :], data[..., i : i + 1, :])
    spec.update_and_fetch(data[..., before : before + fed, :], data[..., before : before + fed, :])
    rewind_verified([spec], fed, drop)
    for i in range(before, before + fed - drop):
        ref.update_and_fetch(data[..., i : i + 1, :], data[..., i : i + 1, :])
    assert spec.offset == ref.offset
    assert mx.array_equal(_window(spec), _window(ref))
    nxt = data[..., -2:-1, :]
    got = spec.update_and_fetch(nxt, nxt)[0]
    want = ref.update_and_fetch(nxt, nxt)[0]
    assert mx.array_equal(spec._temporal_order(got), ref._temporal_order(want))


def test_rewind_refuses_dropping_every_verified_token() -> None:
    with pytest.raises(ValueError, match=r"can drop 0\.\.2 of 3"):
        rewind_verified([], 3, 3)


# --- greedy output is the target's own, token for token -------------------------------------


def test_prompt_lookup_greedy_is_token_identical(
    tiny: LoadedModel, plain: list[int], assert_same_tokens: Any
) -> None:
    result = _run(tiny, _tokens(40, 0) * 2, prompt_lookup=2)
    assert_same_tokens(tiny, result.tokens, plain)
    stats = result.stats
    assert 0 < stats.accepted_draft_tokens <= stats.draft_tokens
    assert stats.draft_acceptance_rate == stats.accepted_draft_tokens / stats.draft_tokens


@pytest.mark.slow
def test_self_draft_greedy_is_token_identical(
    tiny: LoadedModel, plain: list[int], assert_same_tokens: Any
) -> None:
    result = _run(tiny, _tokens(40, 0) * 2, draft_model=tiny, num_draft_tokens=4)
    assert_same_tokens(tiny, result.tokens, plain)
    # The target is its own draft: (nearly) every guess is right.
    assert result.stats.draft_tokens >= (N - 1) // 5
    assert result.stats.draft_acceptance_rate > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("draft", ["llama", "other_gpt_oss"])
def test_other_draft_greedy_is_token_identical(
    request: pytest.FixtureRequest,
    tiny: LoadedModel,
    plain: list[int],
    draft: str,
    assert_same_tokens: Any,
) -> None:
    """A different random model guesses wrong almost always: every round rewinds."""
    if draft == "llama":
        draft_model: Any = request.getfixturevalue("llama")
    else:
        from mlx_harmony.demo_model.random_model import build_random_model

        draft_model = build_random_model("tiny", seed=7)[0]
    result = _run(tiny, _tokens(40, 0) * 2, draft_model=draft_model, num_draft_tokens=3)
    assert_same_tokens(tiny, result.tokens, plain)
    assert result.stats.draft_tokens > N // 2
    assert result.stats.accepted_draft_tokens < result.stats.draft_tokens


def test_sampler_path_with_one_candidate_is_greedy(
    tiny: LoadedModel, plain: list[int], assert_same_tokens: Any
) -> None:
    """The sampler sees one row per verified position; top_k=1 must give the greedy tokens,
    and the log-probabilities handed out are the target's."""
    sampler = make_sampler(temperature=1.0, top_k=1, seed=0)
    result = _run(tiny, _tokens(40, 0) * 2, 60, prompt_lookup=2, sampler=sampler)
    assert_same_tokens(tiny, result.tokens, plain[:60])


def test_logprobs_match_the_plain_loop(tiny: LoadedModel) -> None:
    prompt = _tokens(30, 3) * 2
    events = list(
        _stream(tiny, prompt, 20, logprobs=True, compiled=False)  # the eager step's numerics
    )
    spec = list(_stream(tiny, prompt, 20, logprobs=True, draft_model=tiny))
    assert [e.token for e in spec] == [e.token for e in events]
    for a, b in zip(spec[:-1], events[:-1], strict=True):
        assert a.logprobs is not None
        assert b.logprobs is not None
        assert mx.allclose(a.logprobs, b.logprobs, atol=1e-4).item()


def _stream(loaded: LoadedModel, prompt: Sequence[int], n: int, **kw: Any) -> list[Any]:
    from mlx_harmony.generate.loop import stream_generate

    return list(
        stream_generate(
            loaded.model, None, list(prompt), max_tokens=n, stop_tokens=(), detokenize=False, **kw
        )
    )


# --- stops and the prompt cache ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lookup", "draft"])
@pytest.mark.parametrize("turn2", ["extends", "replaces_last"])
def test_next_turn_through_the_prompt_cache_is_token_identical(
    tiny: LoadedModel,
    plain: list[int],
    kind: str,
    turn2: str,
    assert_same_tokens: Any,
    assert_same_cache: Any,
) -> None:
    """Turn one stops on a token past the window wrap; turn two extends it, or replaces its
    last token (the Harmony <|return|> -> <|end|> case), and must equal a fresh run of the same
    prompt, caches included."""
    spec: dict[str, Any] = (
        {"prompt_lookup": 2} if kind == "lookup" else {"draft_model": DraftModel(tiny.model)}
    )
    prompt = _tokens(40, 0) * 2
    # The random model repeats itself: stop on the last new token past the window wrap.
    at = max(i for i in range(140, 260) if plain[i] not in plain[:i])
    cache = PromptCache(tiny.model)
    first = generate(
        tiny.model,
        None,
        prompt,
        prompt_cache=cache,
        max_tokens=N,
        stop_tokens=[plain[at]],
        detokenize=False,
        **spec,
    )
    assert first.stop_reason is StopReason.STOP
    assert_same_tokens(tiny, first.tokens, plain[: at + 1])
    done = prompt + first.tokens
    prompt2 = done + _tokens(20, 5) if turn2 == "extends" else done[:-1] + _tokens(20, 6)
    again = generate(
        tiny.model, None, prompt2, prompt_cache=cache, max_tokens=150, stop_tokens=(),
        detokenize=False, **spec,
    )  # fmt: skip
    # Nothing recomputed: at most the stop token (never fed when it was the target's own pick).
    assert again.stats.reused_prompt_tokens >= len(done) - 1 - (turn2 == "replaces_last")
    fresh_cache = PromptCache(tiny.model)
    fresh = generate(
        tiny.model, None, prompt2, prompt_cache=fresh_cache, max_tokens=150, stop_tokens=(),
        detokenize=False,
    )  # fmt: skip
    assert_same_tokens(tiny, again.tokens, fresh.tokens)
    assert_same_cache(cache, fresh_cache)


# --- refusals ------------------------------------------------------------------------------


def test_bad_options_are_refused(tiny: LoadedModel) -> None:
    prompt = _tokens(10, 1)
    with pytest.raises(ValueError, match="draft_model or prompt_lookup, not both"):
        _run(tiny, prompt, 5, draft_model=tiny, prompt_lookup=2)
    with pytest.raises(ValueError, match="compiled=True does not apply while speculating"):
        _run(tiny, prompt, 5, prompt_lookup=2, compiled=True)
    with pytest.raises(ValueError, match="num_draft_tokens must be a positive integer"):
        _run(tiny, prompt, 5, prompt_lookup=2, num_draft_tokens=0)
    with pytest.raises(ValueError, match="prompt_lookup must be a positive n-gram length"):
        _run(tiny, prompt, 5, prompt_lookup=0)
    with pytest.raises(TypeError, match="draft_model must be a DraftModel"):
        _run(tiny, prompt, 5, draft_model=3)


# --- through TokenGenerator ----------------------------------------------------------------


@pytest.mark.slow
def test_token_generator_speculates_over_turns(tiny: LoadedModel, assert_same_tokens: Any) -> None:
    """Two chat turns with loop detection on (the default): the same tokens and stop reasons as
    without speculation, and the acceptance counts in the stats."""
    from mlx_harmony.generate import TokenGenerator

    plain = TokenGenerator(tiny)
    spec = TokenGenerator(tiny, prompt_lookup=2, num_draft_tokens=4)
    prompt = _tokens(40, 0) * 2
    for _ in range(2):
        want = list(plain.generate(prompt_tokens=prompt, max_tokens=200, stop_tokens=()))
        got = list(spec.generate(prompt_tokens=prompt, max_tokens=200, stop_tokens=()))
        assert_same_tokens(tiny, got, want)
        assert spec.last_stats is not None
        assert plain.last_stats is not None
        assert spec.last_stats.stop_reason is plain.last_stats.stop_reason
        assert spec.last_stats.reused_prompt_tokens == plain.last_stats.reused_prompt_tokens
        assert 0 < spec.last_stats.accepted_draft_tokens <= spec.last_stats.draft_tokens
        assert plain.last_stats.draft_tokens == 0
        prompt = prompt + want + _tokens(10, 9)


def test_token_generator_refuses_bad_speculation(tiny: LoadedModel) -> None:
    from mlx_harmony.generate import TokenGenerator
    from mlx_harmony.generate.constrain import ConstraintSpec

    with pytest.raises(ValueError, match="draft_model or prompt_lookup, not both"):
        TokenGenerator(tiny, draft_model=tiny, prompt_lookup=2)
    with pytest.raises(ValueError, match="num_draft_tokens must be a positive integer"):
        TokenGenerator(tiny, prompt_lookup=2, num_draft_tokens=0)
    with pytest.raises(ValueError, match="prompt_lookup must be a positive n-gram length"):
        TokenGenerator(tiny, prompt_lookup=-2)
    spec = TokenGenerator(tiny, prompt_lookup=2)
    with pytest.raises(ValueError, match="constraint cannot be combined with speculative"):
        spec.stream(prompt_tokens=[1, 2, 3], constraint=ConstraintSpec("json_object"))
