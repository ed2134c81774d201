"""Speculative decoding: cheap guesses of the next tokens, checked by the target in one pass.

Two ways to guess: a small *draft model* (mlx-lm's `--draft-model`), or *prompt lookup*, which
proposes the tokens that followed the most recent earlier occurrence of the context's last
n-gram (no second model; it pays off where the output repeats its input: editing, agents that
quote code). Either way the target runs once over ``[last token, draft...]`` and keeps the
drafts up to the first one it disagrees with, plus its own token there.

Acceptance follows mlx-lm's `speculative_generate_step`: the target picks (argmax, or its
sampler) a token at every verified position, and a draft token is kept while it equals the
target's pick. With greedy decoding the output is token-identical to the target alone; with
sampling every token is a sample of the target's own distribution given the tokens before it
(the draft only decides how many positions one pass verifies), so the distribution is
preserved exactly. The sampler's random stream is consumed differently, so a seeded run gives
other (equally distributed) tokens than a seeded run without speculation.

Rewinding rejected drafts, and gpt-oss's 128-token sliding-window layers (mlx-lm issue 1914):
mlx-lm trims a `RotatingKVCache` only before it wraps, since a ring that has wrapped overwrote
positions the trimmed tokens evicted. We never trim a ring:

- The target verifies ``1 + d`` tokens in one multi-token write. A rotating layer then keeps
  ``window - 1 + (1 + d)`` positions in time order (mlx-lm's `_update_concat`), so dropping the
  ``d - n`` rejected ones is a slice off the end that leaves at least the ``window - 1``
  positions the next token needs. The layer is then cut back to its last ``window`` positions in
  time order: the layout a run of single-token writes leaves, so the prompt cache's next-turn
  rules (drop one more token after a single-token write) hold unchanged.
- The draft model writes its guesses one at a time. Its rotating layers are snapshotted
  (references, not copies) before the first guess is fed; when a guess is rejected they are
  restored and the accepted guesses are fed again in one multi-token write with the next token.

Speculation runs the eager model (not the compiled decode step of `compiled.py`: its static
buffers take one token per step), and only models whose every layer cache is a `KVCache`,
`QuantizedKVCache` or `RotatingKVCache` (a recurrent state cannot be rewound).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import RotatingKVCache

from .cache import _ALWAYS_TRIMMABLE, PromptCache, maybe_quantize_kv_cache
from .loading import LoadedModel, load_model
from .prefill import snapshot_untrimmable

__all__ = [
    "DEFAULT_NUM_DRAFT_TOKENS",
    "DraftModel",
    "PromptLookup",
    "SpeculationCounts",
    "SpeculationOptions",
    "check_speculation_cache",
    "load_draft_model",
    "rewind_verified",
    "speculation_options",
    "speculative_generate_step",
]

DEFAULT_NUM_DRAFT_TOKENS = 3
"""mlx-lm's server default for `--num-draft-tokens`."""

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass(slots=True)
class SpeculationCounts:
    """Draft tokens proposed and accepted in one generation (acceptance rate = accepted /
    drafted)."""

    drafted: int = 0
    accepted: int = 0


def check_speculation_cache(caches: Sequence[Any], *, what: str = "the model") -> None:
    """Refuse caches that cannot rewind rejected drafts (recurrent states, cache lists)."""
    for i, c in enumerate(caches):
        if not isinstance(c, (*_ALWAYS_TRIMMABLE, RotatingKVCache)):
            raise ValueError(
                f"speculative decoding needs caches that can drop rejected tokens, but layer {i} "
                f"of {what} uses a {type(c).__name__}; drop draft_model / prompt_lookup for "
                "this model"
            )


def _cut_ring(c: RotatingKVCache, drop: int) -> None:
    """Drop the last `drop` positions of a rotating layer whose last write was a multi-token
    write (time order, no free slots), then keep only its last `max_size` positions."""
    keys, values = c.keys, c.values
    assert keys is not None
    assert values is not None
    assert c._idx == keys.shape[2], "the last write was not a multi-token write"
    end = keys.shape[2] - drop
    c.offset -= drop
    if end > c.max_size:
        tail = c.max_size - c.keep
        if c.keep:
            keys = mx.concatenate([keys[..., : c.keep, :], keys[..., end - tail : end, :]], axis=2)
            values = mx.concatenate(
                [values[..., : c.keep, :], values[..., end - tail : end, :]], axis=2
            )
        else:
            keys, values = keys[..., end - tail : end, :], values[..., end - tail : end, :]
        end = c.max_size
    else:
        keys, values = keys[..., :end, :], values[..., :end, :]
    c.keys, c.values, c._idx = keys, values, end


def rewind_verified(caches: Sequence[Any], fed: int, drop: int) -> None:
    """After one write of `fed` tokens, drop its last `drop` (rejected drafts) from every layer.

    Trimmable layers move their offset; a rotating layer is cut as `_cut_ring` says, which is
    exact after a multi-token write whatever the ring's state (wrapped or not).
    """
    if drop < 0 or drop >= fed:
        raise ValueError(f"can drop 0..{fed - 1} of {fed} verified tokens, got {drop}")
    for c in caches:
        if isinstance(c, RotatingKVCache):
            if fed > 1:
                _cut_ring(c, drop)
        elif drop:
            c.trim(drop)


class DraftModel:
    """A draft model and its prompt cache, kept across calls so a chat's next turn prefills the
    draft only for the new tokens (as `PromptCache` does for the target). It must use the
    target's tokenizer."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.cache = PromptCache(model)
        check_speculation_cache(self.cache.caches, what="the draft model")


def load_draft_model(
    draft: DraftModel | LoadedModel | nn.Module | str | Path,
) -> DraftModel:
    """A `DraftModel` from a loaded model, a module, or a local path / Hugging Face repo."""
    if isinstance(draft, DraftModel):
        return draft
    if isinstance(draft, LoadedModel):
        return DraftModel(draft.model)
    if isinstance(draft, nn.Module):
        return DraftModel(draft)
    if isinstance(draft, (str, Path)):
        return DraftModel(load_model(draft).model)
    raise TypeError(
        f"draft_model must be a DraftModel, LoadedModel, nn.Module, path or repo id, got "
        f"{type(draft).__name__}"
    )


class SpeculationOptions(TypedDict, total=False):
    """`stream_generate`'s speculation keywords, checked (empty: no speculation)."""

    draft_model: DraftModel
    prompt_lookup: int
    num_draft_tokens: int


def speculation_options(
    *,
    draft_model: DraftModel | LoadedModel | nn.Module | str | Path | None = None,
    num_draft_tokens: int = DEFAULT_NUM_DRAFT_TOKENS,
    prompt_lookup: int | None = None,
) -> SpeculationOptions:
    """Check the speculation settings once (a generator's set-up) and load the draft model;
    the result goes to every `stream_generate` call, so the draft's cache serves each turn."""
    if not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be a positive integer, got {num_draft_tokens!r}")
    if draft_model is not None and prompt_lookup is not None:
        raise ValueError("pass draft_model or prompt_lookup, not both")
    if prompt_lookup is not None:
        PromptLookup(prompt_lookup)  # a clear error for a bad length, now
        return {"prompt_lookup": prompt_lookup, "num_draft_tokens": num_draft_tokens}
    if draft_model is not None:
        return {"draft_model": load_draft_model(draft_model), "num_draft_tokens": num_draft_tokens}
    return {}


class PromptLookup:
    """Prompt-lookup drafting: the tokens that followed the most recent earlier occurrence of
    the context's last `n` tokens. An index from each n-gram to where it last ended keeps a
    lookup O(1) however long the context."""

    def __init__(self, n: int, tokens: Sequence[int] = ()) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"prompt_lookup must be a positive n-gram length, got {n!r}")
        self.n = n
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        """Append `tokens` to the context; every n-gram but the last one is indexed."""
        n, ctx, index = self.n, self.tokens, self._index
        for t in tokens:
            if len(ctx) >= n:
                index[tuple(ctx[len(ctx) - n :])] = len(ctx)
            ctx.append(int(t))

    def propose(self, k: int) -> list[int]:
        """Up to `k` tokens that followed the last n-gram's previous occurrence (none if it has
        not occurred before)."""
        ctx = self.tokens
        if k <= 0 or len(ctx) < self.n:
            return []
        start = self._index.get(tuple(ctx[len(ctx) - self.n :]))
        return [] if start is None else ctx[start : start + k]


class _ModelDrafter:
    """Drives a `DraftModel` through one generation: guesses, rewinds, commits its cache."""

    def __init__(self, draft: DraftModel, prompt: Sequence[int], prefill_step_size: int) -> None:
        self.draft = draft
        self.prompt = list(prompt)
        self.prefill_step_size = prefill_step_size
        self.pending: list[int] = []
        """Context tokens the draft's caches do not hold yet."""
        self._base = 0
        self._guessed = 0
        self._snapshot: dict[int, Any] | None = None

    def prefill(self) -> None:
        """Feed the prompt as the target's loop does (its last token alone, then a checkpoint),
        reusing what the draft's prompt cache holds."""
        cache = self.draft.cache
        reused = cache.reuse(self.prompt).reused
        rest = self.prompt[reused:]
        model, caches = self.draft.model, cache.caches
        for i in range(0, len(rest) - 1, self.prefill_step_size):
            chunk = rest[i : min(i + self.prefill_step_size, len(rest) - 1)]
            model(mx.array(chunk)[None], cache=caches)
            mx.eval([c.state for c in caches])
        model(mx.array(rest[-1:])[None], cache=caches)
        cache.checkpoint(len(self.prompt))

    def propose(self, k: int) -> mx.array:
        """`k` greedy guesses, lazily (the target's pass evaluates them with itself)."""
        caches, model = self.draft.cache.caches, self.draft.model
        y = model(mx.array(self.pending)[None], cache=caches)[0, -1].argmax()
        self._base = self.draft.cache.offset
        self.pending = []
        guesses = [y]
        self._snapshot = snapshot_untrimmable(caches) if k > 1 else None
        for _ in range(k - 1):
            y = model(y.reshape(1, 1), cache=caches)[0, -1].argmax()
            guesses.append(y)
        self._guessed = k - 1
        return mx.stack(guesses).astype(mx.uint32)

    def accept(self, drafts: list[int], n: int, token: int) -> None:
        """`n` guesses were kept and the target said `token` next."""
        fed = self._guessed
        if n < fed:
            self._rewind()
            self.pending = [*drafts[:n], token]
        else:
            self.pending = [*drafts[fed:n], token]
        self._guessed = 0
        self._snapshot = None

    def _rewind(self) -> None:
        """Back to the caches as they were before the guesses were fed."""
        caches = self.draft.cache.caches
        snapshot = self._snapshot or {}
        for i, c in enumerate(caches):
            if i in snapshot:
                caches[i] = snapshot[i]
            else:
                c.trim(self._guessed)

    def finish(self, tokens: Sequence[int]) -> None:
        """Record what the draft's caches hold for the next call (guesses never handed out are
        dropped first)."""
        if self._guessed:
            self._rewind()
            self._guessed = 0
        self.draft.cache.commit(tokens, single_tail=False)


def _prefill(
    model: nn.Module,
    caches: list[Any],
    tokens: mx.array,
    *,
    prefill_step_size: int,
    quantize: Callable[[], None],
    should_stop: Callable[[], bool] | None,
    progress: Callable[[int, int], None] | None,
    total: int,
) -> bool:
    """Feed `tokens` in chunks; False when `should_stop` said stop between chunks."""
    done = 0
    while done < tokens.size:
        if should_stop is not None and should_stop():
            return False
        n = min(prefill_step_size, tokens.size - done)
        model(tokens[done : done + n][None], cache=caches)
        quantize()
        mx.eval([c.state for c in caches])
        done += n
        if progress is not None:
            progress(done, total)
        mx.clear_cache()
    return not (should_stop is not None and should_stop())


def speculative_generate_step(
    prompt: Sequence[int],
    model: nn.Module,
    *,
    cache: list[Any],
    history: Sequence[int],
    draft_model: DraftModel | None = None,
    prompt_lookup: int | None = None,
    num_draft_tokens: int = DEFAULT_NUM_DRAFT_TOKENS,
    sampler: Sampler | None = None,
    logits_processors: Sequence[LogitsProcessor] | None = None,
    max_tokens: int = 256,
    prefill_step_size: int = 2048,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    quantized_kv_start: int = 0,
    logprobs: bool = False,
    prompt_progress_callback: Callable[[int, int], None] | None = None,
    prompt_end_callback: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    stream: mx.Stream | mx.ThreadLocalStream | None = None,
    counts: SpeculationCounts | None = None,
) -> Generator[tuple[int, mx.array | None], None, None]:
    """`generate_step` with speculation: yield (token, log-probabilities or None) for `prompt`
    (the tokens `cache` does not hold yet), continuing `cache` in place.

    `history` is what `cache` already holds (the prompt's reused prefix). Exactly one of
    `draft_model` and `prompt_lookup` (the n-gram length) is given; `num_draft_tokens` guesses
    are verified per target pass; the draft model prefills ``history + prompt``, reusing its own
    prompt cache. `counts` receives the drafted and accepted numbers. When the
    generator is closed, the caches hold a prefix of the tokens it yielded.
    """
    if (draft_model is None) == (prompt_lookup is None):
        raise ValueError("pass exactly one of draft_model and prompt_lookup")
    if not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be a positive integer, got {num_draft_tokens!r}")
    if len(prompt) == 0:
        raise ValueError("prompt must hold at least one token to generate from")
    if max_tokens == 0 or max_tokens < -1:
        raise ValueError(f"max_tokens must be positive (or -1 for no limit), got {max_tokens}")
    check_speculation_cache(cache)
    from .loop import generation_stream

    stream = generation_stream if stream is None else stream
    counts = SpeculationCounts() if counts is None else counts
    processors = list(logits_processors or ())
    tokens_so_far = [*history, *prompt]
    lookup = PromptLookup(prompt_lookup, tokens_so_far) if prompt_lookup is not None else None
    drafter = (
        _ModelDrafter(draft_model, tokens_so_far, prefill_step_size)
        if draft_model is not None
        else None
    )
    need_scores = logprobs or sampler is not None

    def quantize() -> None:
        maybe_quantize_kv_cache(
            cache,
            kv_bits=kv_bits,
            kv_group_size=kv_group_size,
            quantized_kv_start=quantized_kv_start,
        )

    def verify(feed: mx.array, fed_before: int) -> tuple[mx.array, mx.array | None]:
        """The target's token (and log-probabilities) after each of `feed`'s tokens."""
        logits = model(feed[None], cache=cache)[0]
        quantize()
        if processors:
            rows = []
            for i in range(feed.size):
                row = logits[i : i + 1]
                fed = cast("list[int]", feed[: i + 1].tolist())
                context = mx.array(tokens_so_far[:fed_before] + fed)
                for processor in processors:
                    row = processor(context, row)
                rows.append(row)
            logits = mx.concatenate(rows, axis=0)
        if not need_scores:
            return mx.argmax(logits, axis=-1), None
        scores = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = sampler(scores) if sampler is not None else mx.argmax(scores, axis=-1)
        return picked, scores

    total = len(prompt)
    with mx.stream(stream):
        if prompt_progress_callback is not None:
            prompt_progress_callback(0, total)
        if not _prefill(
            model,
            cache,
            mx.array(list(prompt[:-1])),
            prefill_step_size=prefill_step_size,
            quantize=quantize,
            should_stop=should_stop,
            progress=prompt_progress_callback,
            total=total,
        ):
            return
        picked, scores = verify(mx.array(list(prompt[-1:])), len(tokens_so_far) - 1)
        if prompt_end_callback is not None:
            prompt_end_callback()
        if drafter is not None:
            drafter.prefill()
        token = cast(int, picked.item())
        if prompt_progress_callback is not None:
            prompt_progress_callback(total, total)
        produced = 1
        # Set per round; the finally rewinds what the consumer never took.
        fed = drafted = accepted = taken = 0
        try:
            yield token, None if scores is None else scores[0]
            tokens_so_far.append(token)
            if lookup is not None:
                lookup.extend([token])
            elif drafter is not None:
                drafter.pending = [token]
            while max_tokens == -1 or produced < max_tokens:
                left = num_draft_tokens if max_tokens == -1 else max_tokens - produced - 1
                k = min(num_draft_tokens, left)
                if lookup is not None:
                    guess = lookup.propose(k)
                    drafts_array = mx.array(guess, mx.uint32)
                elif k > 0:
                    assert drafter is not None
                    drafts_array = drafter.propose(k)
                else:
                    drafts_array = mx.array([], mx.uint32)
                feed = mx.concatenate([mx.array([token], mx.uint32), drafts_array])
                picked, scores = verify(feed, len(tokens_so_far) - 1)
                mx.eval(picked, drafts_array)
                drafts: list[int] = drafts_array.tolist()  # pyright: ignore[reportAssignmentType]
                picks: list[int] = picked.tolist()  # pyright: ignore[reportAssignmentType]
                fed, drafted, taken = feed.size, len(drafts), 0
                accepted = 0
                while accepted < drafted and picks[accepted] == drafts[accepted]:
                    accepted += 1
                counts.drafted += drafted
                for i in range(accepted + 1):
                    taken = i + 1
                    counts.accepted += i < accepted
                    yield picks[i], None if scores is None else scores[i]
                rewind_verified(cache, fed, drafted - accepted)
                fed = 0
                token = picks[accepted]
                new = picks[: accepted + 1]
                tokens_so_far.extend(new)
                produced += accepted + 1
                if lookup is not None:
                    lookup.extend(new)
                elif drafter is not None and drafted:
                    drafter.accept(drafts, accepted, token)
                elif drafter is not None:
                    drafter.pending.append(token)
                if produced % 256 < accepted + 1:
                    mx.clear_cache()
        finally:
            if fed:
                # Closed mid-round: keep the drafts the consumer took (and their target pass).
                rewind_verified(cache, fed, drafted - min(taken, accepted))
            if drafter is not None:
                drafter.finish(tokens_so_far)
