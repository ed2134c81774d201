"""Continuous batching: many generations share each decode step of one model.

`BatchGenerator` is the engine, driven by one thread: `insert` requests at any time, call
`step` in a loop. Each step runs one decode step for every running request (one forward pass
over the batch) and then at most `prefill_step_size` prompt tokens of newcomers, in chunks
taken round-robin across them (a newcomer's first chunk comes first), so a long prompt never
stalls the running requests for more than a chunk, nor a short newcomer for more than one: the
short one starts at the next step and joins while the long one is still prefilling. A newcomer
is prefilled in its own single-sequence cache (the same cache and chunks as a lone generation)
and joins the batch when only its last prompt token is left, which the next batched step feeds.
Newcomers whose whole rest fits in one chunk (and holds no message boundary to checkpoint) are
prefilled together instead, up to ``prefill_batch_size`` of them in one right-padded forward
pass over their merged caches (mlx-lm's batch prefill), then handed their own caches back: many
short prompts arriving at once cost one pass, not one step each. Finished, cancelled and failed
requests leave the batch at the step that finds them; the rest go on.

Steps are pipelined as in mlx-lm: the next forward pass is queued before the tokens of the
current one are read back, so the device works while Python hands tokens out.

Each request has its own sampler with its own PRNG key, its own logits processors, stop tokens
and token limit, so its output does not depend on what else runs: under greedy sampling a
request gives the same tokens batched as alone (tested). gpt-oss's sliding-window layers batch
through mlx-lm's `BatchRotatingKVCache`.

`BatchTokenGenerator` puts the engine on its own thread behind `TokenGenerator`'s interface:
`stream()` may be called from many threads at once, and each call is one request in the batch.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, RotatingKVCache, TokenBuffer

from .cache import make_cache
from .detokenizer import token_bytes_table
from .emit import StreamEvent, TokenEvents
from .generator import (
    GeneratorOptions,
    ModelFacts,
    _Housekeeping,
    _unwire_memory,
    _wire_memory,
    load_for_options,
)
from .loading import LoadedModel
from .loop import (
    Cancel,
    LogitsProcessor,
    Sampler,
    _as_cancel_check,
    _new_generation_stream,
    release_thread_streams,
)
from .loop_detection import LoopDetectionMode, LoopDetector
from .prefill import BoundaryCheckpoints, harmony_message_boundaries
from .shared_cache import SharedPromptCache
from .stats import CacheReuseMode, GenerationStats, StopReason

logger = logging.getLogger("mlx_harmony.generate")

if TYPE_CHECKING:
    from mlx_harmony.sampling import SamplingParams

    from .constrain import ConstraintSpec

__all__ = [
    "DEFAULT_PREFILL_BATCH_SIZE",
    "BatchGenerator",
    "BatchOutput",
    "BatchRequest",
    "BatchStats",
    "BatchTokenGenerator",
    "PrefillInfo",
]


DEFAULT_PREFILL_BATCH_SIZE = 8
"""Newcomers prefilled together in one forward pass at most (mlx-lm's prompt concurrency)."""

_BATCHABLE_CACHES = (KVCache, RotatingKVCache)
"""Layer caches whose batch forms (mlx-lm's) take a right-padded prefill."""


@dataclass(eq=False)
class BatchRequest:
    """One generation to run in the batch. ``sampling=None`` (or temperature 0) is greedy;
    ``max_tokens=-1`` never stops on length; ``cancel`` is checked at every step."""

    prompt: Sequence[int]
    max_tokens: int = 256
    sampling: SamplingParams | None = None
    logits_processors: Sequence[LogitsProcessor] = ()
    stop_tokens: Iterable[int] = ()
    logprobs: bool = False
    cancel: Callable[[], bool] | None = None
    checkpoints: Sequence[int] = ()
    """Prompt offsets where the prefill snapshots the sliding-window layers for the shared
    cache (`harmony_message_boundaries(prompt, max_boundaries=2)` for Harmony prompts), so a
    later conversation with the same system and developer messages reuses them."""
    uid: int = -1
    """Set by `BatchGenerator.insert`."""


@dataclass(frozen=True, slots=True)
class PrefillInfo:
    """How a request's prompt got into the cache; on the request's first output."""

    prompt_tokens: int
    reused_prompt_tokens: int
    cache_reuse: CacheReuseMode
    queued_s: float
    prefill_s: float


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """A token of request `uid`, or (token None) the end of a request that made no new token."""

    uid: int
    token: int | None
    logprobs: mx.array | None = None
    finish_reason: StopReason | None = None
    prefill: PrefillInfo | None = None
    error: BaseException | None = None


@dataclass
class BatchStats:
    """What the engine did, for benchmarks and the server's health route."""

    steps: int = 0
    generated_tokens: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    finished: int = 0
    cancelled: int = 0
    max_batch: int = 0
    batch_token_sum: int = 0
    """Sum over steps of the batch size: / steps is the mean batch."""
    prefills_together: int = 0
    """Forward passes that prefilled several newcomers at once."""
    rows_prefilled_together: int = 0

    @property
    def mean_batch(self) -> float:
        return self.batch_token_sum / self.steps if self.steps else 0.0


@dataclass(eq=False)
class _Row:
    request: BatchRequest
    prompt: list[int]
    submitted: float
    cache: list[Any] | None = None
    done: int = 0
    """Prompt tokens in `cache` (prefill progress)."""
    last_chunk: int = 0
    reused: int = 0
    reuse_mode: CacheReuseMode = CacheReuseMode.FRESH
    prefill_started: float = 0.0
    prefill_s: float = 0.0
    sampler: Sampler | None = None
    processors: list[LogitsProcessor] = field(default_factory=list)
    history: TokenBuffer | None = None
    generated: int = 0
    fresh: bool = True
    """The row's pending input is its last prompt token, not a generated one."""
    stops: frozenset[int] = frozenset()
    marks: BoundaryCheckpoints = field(default_factory=lambda: BoundaryCheckpoints(()))
    """Where the prefill stops to snapshot the sliding-window layers (`_start` sets it)."""

    def cancelled(self) -> bool:
        check = self.request.cancel
        return check is not None and bool(check())


_MAX_SEED_CHAINS = 1024
"""Seeds whose key chain `BatchGenerator` remembers (least recently used ones are forgotten)."""


class BatchGenerator:
    """The continuous-batching engine; see the module docstring. One thread drives it."""

    def __init__(
        self,
        model: nn.Module,
        *,
        max_batch_size: int = 8,
        prefill_step_size: int = 1024,
        prefill_batch_size: int = DEFAULT_PREFILL_BATCH_SIZE,
        prompt_cache: SharedPromptCache | None = None,
        stream: mx.Stream | mx.ThreadLocalStream | None = None,
        reseed_each_turn: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if prefill_step_size < 1:
            raise ValueError(f"prefill_step_size must be positive, got {prefill_step_size}")
        if prefill_batch_size < 1:
            raise ValueError(f"prefill_batch_size must be >= 1, got {prefill_batch_size}")
        self.model = model
        self.max_batch_size = max_batch_size
        self.prefill_step_size = prefill_step_size
        self.prefill_batch_size = prefill_batch_size
        self.prompt_cache = prompt_cache
        self.stream = stream if stream is not None else _new_generation_stream()
        self.stats = BatchStats()
        self.reseed_each_turn = reseed_each_turn
        self._chains: OrderedDict[int, mx.array] = OrderedDict()
        self._uids = 0
        self._waiting: deque[_Row] = deque()
        self._prefilling: deque[_Row] = deque()
        """Newcomers holding a slot and a cache, in round-robin order."""
        self._rows: list[_Row] = []
        self._cache: list[Any] | None = None
        self._y: mx.array | None = None
        self._scores: list[mx.array | None] = []

    # -- state ---------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Requests decoding in the batch."""
        return len(self._rows)

    @property
    def waiting(self) -> int:
        """Requests not yet in the batch (the one prefilling included)."""
        return len(self._waiting) + len(self._prefilling)

    @property
    def has_work(self) -> bool:
        return bool(self._rows or self._waiting or self._prefilling)

    # -- requests --------------------------------------------------------------------------------

    def insert(self, request: BatchRequest) -> int:
        """Queue `request`; returns its uid. It joins the batch when a slot is free."""
        prompt = [int(t) for t in request.prompt]
        if not prompt:
            raise ValueError("prompt must hold at least one token to generate from")
        if request.max_tokens == 0 or request.max_tokens < -1:
            raise ValueError(
                f"max_tokens must be positive (or -1 for no limit), got {request.max_tokens}"
            )
        request.uid = self._uids
        self._uids += 1
        self._waiting.append(_Row(request, prompt, time.perf_counter()))
        return request.uid

    def remove(self, uid: int) -> bool:
        """Drop request `uid` wherever it is; True when it was there."""
        for row in self._waiting:
            if row.request.uid == uid:
                self._waiting.remove(row)
                return True
        for row in self._prefilling:
            if row.request.uid == uid:
                self._prefilling.remove(row)
                return True
        for i, row in enumerate(self._rows):
            if row.request.uid == uid:
                self._drop([j for j in range(len(self._rows)) if j != i])
                return True
        return False

    def fail_all(self, error: BaseException) -> list[BatchOutput]:
        """End every request with `error` (after the model itself failed) and start clean."""
        rows = [*self._rows, *self._waiting, *self._prefilling]
        self._waiting.clear()
        self._prefilling.clear()
        self._rows = []
        self._cache = None
        self._y = None
        self._scores = []
        return [BatchOutput(r.request.uid, None, error=error) for r in rows]

    # -- the step ------------------------------------------------------------------------------

    def step(self) -> list[BatchOutput]:
        """One decode step for the batch and one prefill chunk; the tokens it produced."""
        with mx.stream(self.stream):
            outputs = self._decode() if self._rows else []
            outputs += self._prefill()
        return outputs

    def _decode(self) -> list[BatchOutput]:
        rows = self._rows
        assert self._y is not None
        next_y, next_scores = self._forward(self._y)
        mx.async_eval(next_y, *(s for s in next_scores if s is not None))
        tokens = cast("list[int]", self._y.tolist())  # a 1-D array of token ids
        scores = self._scores
        stats = self.stats
        stats.steps += 1
        stats.batch_token_sum += len(rows)
        stats.max_batch = max(stats.max_batch, len(rows))
        outputs: list[BatchOutput] = []
        keep: list[int] = []
        for i, row in enumerate(rows):
            if row.cancelled():
                stats.cancelled += 1
                outputs.append(BatchOutput(row.request.uid, None, None, StopReason.CANCELLED))
                continue
            if row.fresh:  # its last prompt token went in: nothing to hand out yet
                row.fresh = False
                keep.append(i)
                continue
            token = tokens[i]
            row.generated += 1
            stats.generated_tokens += 1
            reason = None
            if token in row.stops:
                reason = StopReason.STOP
            elif row.generated == row.request.max_tokens:
                reason = StopReason.LENGTH
            info = None
            if row.generated == 1:  # the request's first output says how its prompt went in
                info = PrefillInfo(
                    len(row.prompt),
                    row.reused,
                    row.reuse_mode,
                    row.prefill_started - row.submitted,
                    row.prefill_s,
                )
            outputs.append(BatchOutput(row.request.uid, token, scores[i], reason, info))
            if reason is None:
                keep.append(i)
            else:
                stats.finished += 1
        self._y, self._scores = next_y, next_scores
        if len(keep) < len(rows):
            self._drop(keep)
        if stats.steps % 256 == 0:
            mx.clear_cache()
        return outputs

    def _drop(self, keep: list[int]) -> None:
        if not keep:
            self._rows = []
            self._cache = None
            self._y = None
            self._scores = []
            return
        self._rows = [self._rows[i] for i in keep]
        assert self._cache is not None
        assert self._y is not None
        for c in self._cache:
            c.filter(keep)
        self._y = self._y[mx.array(keep)]
        self._scores = [self._scores[i] for i in keep]

    def _forward(self, y: mx.array) -> tuple[mx.array, list[mx.array | None]]:
        rows = self._rows
        logits = self.model(y[:, None], cache=self._cache)[:, -1, :]
        if any(row.processors for row in rows):
            histories = [
                row.history.update_and_fetch(y[i : i + 1]) if row.history is not None else None
                for i, row in enumerate(rows)
            ]
            # Submitted before the forward pass (which the first constraint submits): every
            # row's processors then read their history without waiting for the step.
            mx.async_eval([h for h in histories if h is not None])
            parts = []
            for i, row in enumerate(rows):
                part = logits[i : i + 1]
                tokens = histories[i]
                if tokens is not None:
                    for processor in row.processors:
                        part = processor(tokens, part)
                parts.append(part)
            logits = mx.concatenate(parts, axis=0)
        samplers = [row.sampler for row in rows]
        wants = [row.request.logprobs or row.sampler is not None for row in rows]
        if not any(wants):
            return mx.argmax(logits, axis=-1), [None] * len(rows)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        if all(s is None for s in samplers):
            next_y = mx.argmax(logits, axis=-1)
        else:
            next_y = mx.concatenate(
                [
                    s(logprobs[i : i + 1]) if s is not None else mx.argmax(logits[i : i + 1], -1)
                    for i, s in enumerate(samplers)
                ]
            )
        scores = [logprobs[i] if row.request.logprobs else None for i, row in enumerate(rows)]
        return next_y, scores

    # -- prefill -----------------------------------------------------------------------------------

    def _prefill(self) -> list[BatchOutput]:
        """Prefill newcomers: at most `prefill_step_size` tokens per step, one chunk at a time
        round-robin across them; a newcomer whose prompt is in its cache joins the batch, and
        the step ends there so it decodes at once. Newcomers whose whole rest fits in one
        chunk go in together (`_prefill_together`)."""
        outputs = self._admit()
        group = self._prefill_group()
        if len(group) > 1:
            return outputs + self._prefill_together(group)
        budget = self.prefill_step_size
        rotation = self._prefilling
        for _ in range(len(rotation)):
            if budget <= 0:
                break
            row = rotation.popleft()
            try:
                target = len(row.prompt) - 1
                if row.done < target:
                    assert row.cache is not None  # `_start` gave the row its cache
                    n = min(self.prefill_step_size, target - row.done, budget)
                    n = row.marks.clip(row.done, n)
                    chunk = mx.array(row.prompt[row.done : row.done + n])
                    self.model(chunk[None], cache=row.cache)
                    mx.eval([c.state for c in row.cache])
                    mx.clear_cache()
                    row.done += n
                    row.marks.after_chunk(row.done, row.cache)
                    row.last_chunk = n
                    budget -= n
                    self.stats.prefilled_tokens += n
                    if row.cancelled():
                        outputs.append(self._cancelled(row))
                        continue
                    if row.done < target:
                        rotation.append(row)  # the back of the rotation
                        continue
                self._join(row)
            except BaseException:
                if not any(r is row for r in self._rows):
                    rotation.appendleft(row)  # still a request: `fail_all` must end it too
                raise
            if budget < self.prefill_step_size:
                break  # the newcomer decodes at the next step, before another chunk
        return outputs

    def _prefill_group(self) -> list[_Row]:
        """The newcomers to prefill in one forward pass: from the head of the rotation, those
        whose rest (but the last token) fits in one chunk with no message boundary before its
        end, with plain or rotating KV caches, up to `prefill_batch_size` rows and
        `prefill_step_size` tokens counting the padding."""
        group: list[_Row] = []
        width = 0
        for row in self._prefilling:
            rest = len(row.prompt) - 1 - row.done
            batchable = (
                rest >= 1
                and row.marks.clip(row.done, rest) == rest
                and all(type(c) in _BATCHABLE_CACHES for c in row.cache or ())
            )
            if not batchable:
                if not group:
                    return []  # the head goes alone: the rotation's order holds
                continue
            if (len(group) + 1) * max(width, rest) > self.prefill_step_size:
                break
            group.append(row)
            width = max(width, rest)
            if len(group) == self.prefill_batch_size:
                break
        return group

    def _prefill_together(self, group: list[_Row]) -> list[BatchOutput]:
        """Prefill `group`'s rests in one forward pass over their merged caches (right-padded,
        as mlx-lm's batch prefill), hand each row its own caches back and join them all."""
        for row in group:
            self._prefilling.remove(row)
        pending = list(group)
        outputs: list[BatchOutput] = []
        try:
            rests = [len(row.prompt) - 1 - row.done for row in group]
            width = max(rests)
            layers = [row.cache for row in group]
            assert all(c is not None for c in layers)  # `_start` gave every row its cache
            merged = [
                caches[0].merge(list(caches))
                for caches in zip(*cast("list[list[Any]]", layers), strict=True)
            ]
            padding = [width - n for n in rests]
            for c in merged:
                c.prepare(lengths=rests, right_padding=padding)
            tokens = mx.array(
                [
                    row.prompt[row.done : row.done + n] + [0] * (width - n)
                    for row, n in zip(group, rests, strict=True)
                ]
            )
            self.model(tokens, cache=merged)
            mx.eval([c.state for c in merged])
            for c in merged:
                c.finalize()
            mx.eval([c.state for c in merged])
            mx.clear_cache()
            self.stats.prefilled_tokens += sum(rests)
            self.stats.prefills_together += 1
            self.stats.rows_prefilled_together += len(group)
            for i, (row, n) in enumerate(zip(group, rests, strict=True)):
                row.cache = [c.extract(i) for c in merged]
                row.done += n
                row.last_chunk = n
            for row in group:
                if row.cancelled():
                    outputs.append(self._cancelled(row))
                else:
                    self._join(row)
                pending.remove(row)
        except BaseException:
            self._prefilling.extendleft(reversed(pending))  # `fail_all` must end them too
            raise
        return outputs

    def _admit(self) -> list[BatchOutput]:
        """Start newcomers while slots are free (running and prefilling rows hold one each);
        each goes to the front of the rotation so its first chunk comes next."""
        outputs: list[BatchOutput] = []
        admitted: list[_Row] = []
        while self._waiting and (
            len(self._rows) + len(self._prefilling) + len(admitted) < self.max_batch_size
        ):
            row = self._waiting.popleft()
            if row.cancelled():
                outputs.append(self._cancelled(row))
                continue
            try:
                self._start(row)
            except BaseException:
                self._waiting.appendleft(row)  # `fail_all` ends it with the others
                self._prefilling.extendleft(reversed(admitted))
                raise
            admitted.append(row)
        self._prefilling.extendleft(reversed(admitted))
        return outputs

    def _cancelled(self, row: _Row) -> BatchOutput:
        self.stats.cancelled += 1
        return BatchOutput(row.request.uid, None, None, StopReason.CANCELLED)

    def _start(self, row: _Row) -> None:
        request = row.request
        row.prefill_started = time.perf_counter()
        row.stops = frozenset(int(t) for t in request.stop_tokens)
        hit = self.prompt_cache.fetch(row.prompt) if self.prompt_cache is not None else None
        if hit is not None:
            row.cache, row.reused, row.done = hit.caches, hit.reused, hit.reused
            row.reuse_mode = CacheReuseMode.TRIM if hit.trimmed else CacheReuseMode.EXTEND
            self.stats.reused_tokens += hit.reused
        else:
            row.cache = make_cache(self.model)
        row.marks = BoundaryCheckpoints(
            request.checkpoints, start=row.done, end=len(row.prompt) - 1
        )
        processors = list(request.logits_processors or ())
        sampling = request.sampling
        if sampling is not None:
            processors = list(sampling.make_logits_processors() or ()) + processors
            if sampling.temperature != 0:
                row.sampler = sampling.make_sampler(key=self._request_key(sampling.seed))
        row.processors = processors
        if processors:
            row.history = TokenBuffer(row.prompt[:-1])

    def _request_key(self, seed: int | None) -> mx.array:
        """A request's PRNG key: without a seed a random one; with ``reseed_each_turn`` the
        seed's own key (a seeded request repeats itself); else the next key of the seed's
        chain, as `TokenGenerator` does across a session's calls."""
        if seed is None:
            return mx.random.key(secrets.randbits(63))
        if self.reseed_each_turn:
            return mx.random.key(seed)
        key = self._chains.pop(seed, None)
        if key is None:
            key = mx.random.key(seed)
        # The sampler walks 2-way splits of `key`: the third branch never meets its draws.
        self._chains[seed] = mx.random.split(key, 3)[2]
        while len(self._chains) > _MAX_SEED_CHAINS:
            self._chains.popitem(last=False)
        return key

    def _join(self, row: _Row) -> None:
        """The prompt is in the row's cache but for its last token: keep a copy for later
        requests, then merge the row into the batch."""
        assert row.cache is not None
        row.prefill_s = time.perf_counter() - row.prefill_started
        if self.prompt_cache is not None and row.done > row.reused:
            self.prompt_cache.insert(
                row.prompt[: row.done],
                row.cache,
                single_tail=row.last_chunk == 1,
                checkpoints=row.marks.snapshots,
            )
        merged = [c.merge([c]) for c in row.cache]
        row.cache = None
        last = mx.array(row.prompt[-1:], dtype=mx.uint32)
        if self._cache is None:
            self._cache = merged
            self._y = last
            self._scores = [None]
        else:
            for mine, theirs in zip(self._cache, merged, strict=True):
                mine.extend(theirs)
            assert self._y is not None
            self._y = mx.concatenate([self._y.astype(mx.uint32), last])
            self._scores.append(None)
        row.fresh = True
        self._rows.append(row)


class _Submission:
    __slots__ = ("outbox", "request")

    def __init__(self, request: BatchRequest) -> None:
        self.request = request
        self.outbox: queue.SimpleQueue[BatchOutput] = queue.SimpleQueue()


class BatchTokenGenerator(ModelFacts):
    """`TokenGenerator`'s interface over a `BatchGenerator` on its own thread: each `stream()`
    call, from any thread, is one request in the shared batch.

    The engine thread loads the model and makes every MLX call; callers only read tokens and
    turn them into text. Prompt caches come from a `SharedPromptCache` of
    ``prompt_cache_size`` entries and at most ``prompt_cache_bytes`` bytes.

    `GeneratorOptions` apply as in `TokenGenerator`, on the engine thread: ``mlock`` wires
    the weights, ``clear_cache_interval`` counts finished requests, ``clear_cache_tokens``
    the tokens of the whole batch, ``log_memory_stats`` logs after each request. Seeds: with
    ``reseed_each_turn`` a seeded request starts from its seed (the same request gives the
    same answer, OpenAI's ``seed``); without it, requests with the same seed continue one key
    chain (the n-th request with a seed is reproducible from a fresh generator).
    ``max_kv_size`` does not batch: it is refused (use `TokenGenerator`). ``loop_detection``
    given as a keyword is a shorthand for the options' field. ``prefill_batch_size``
    newcomers at most are prefilled in one forward pass (1: one at a time).
    """

    def __init__(
        self,
        model: str | Path | LoadedModel,
        options: GeneratorOptions | None = None,
        *,
        lazy: bool = False,
        revision: str | None = None,
        max_batch_size: int = 8,
        prefill_step_size: int = 1024,
        prefill_batch_size: int = DEFAULT_PREFILL_BATCH_SIZE,
        prompt_cache_size: int = 16,
        prompt_cache_bytes: int | None = None,
        loop_detection: LoopDetector | LoopDetectionMode | str | None = None,
    ) -> None:
        if options is None:
            options = GeneratorOptions(
                loop_detection=LoopDetectionMode.CHEAP if loop_detection is None else loop_detection
            )
        elif loop_detection is not None:
            raise TypeError("pass loop_detection inside GeneratorOptions, not beside options=")
        if options.max_kv_size is not None:
            raise ValueError(
                f"max_kv_size={options.max_kv_size}: a rotating KV cache does not batch; "
                "use TokenGenerator, or leave max_kv_size unset"
            )
        if options.kv_bits is not None:
            raise ValueError(
                f"kv_bits={options.kv_bits}: the batch engine has no quantized KV cache; "
                "use TokenGenerator (one request at a time), or leave kv_bits unset"
            )
        if options.speculates:
            which = "draft_model" if options.draft_model is not None else "prompt_lookup"
            raise ValueError(
                f"{which}: the batch engine does not decode speculatively; use TokenGenerator "
                f"(one request at a time), or leave {which} unset"
            )
        self.options = options
        self.max_batch_size = max_batch_size
        self.prompt_cache = SharedPromptCache(
            max_entries=prompt_cache_size, max_bytes=prompt_cache_bytes
        )
        self.loop_detector = options.loop_detector()
        self._inbox: queue.SimpleQueue[_Submission | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False
        self._submit_lock = threading.Lock()
        self._stopped: BaseException | None = None
        """Why the engine thread ended; requests submitted after it fail with this."""
        self.engine: BatchGenerator | None = None
        self._thread = threading.Thread(
            target=self._serve,
            args=(model, lazy, revision, max_batch_size, prefill_step_size, prefill_batch_size),
            name="mlx-harmony-batch",
            daemon=True,
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    @property
    def stats(self) -> BatchStats:
        assert self.engine is not None
        return self.engine.stats

    def reset_cache(self) -> None:
        """Forget every cached prompt prefix."""
        self.prompt_cache.clear()

    def close(self) -> None:
        """Finish the running requests' current step, end them all, stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        self._thread.join(30)

    def __enter__(self) -> BatchTokenGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the engine thread -------------------------------------------------------------------------

    def _serve(
        self,
        model: str | Path | LoadedModel,
        lazy: bool,
        revision: str | None,
        max_batch_size: int,
        prefill_step_size: int,
        prefill_batch_size: int,
    ) -> None:
        old_wired_limit: int | None = None
        try:
            self.loaded = load_for_options(model, self.options, lazy=lazy, revision=revision)
            if self.options.prompt_cache_file is not None:
                self._insert_saved_cache(self.options.prompt_cache_file)
            if self.options.prompt_cache_dir is not None:
                self._load_cache_dir(Path(self.options.prompt_cache_dir))
            # Text deltas need the token-bytes table: build it once here, not in the first
            # requests' threads.
            token_bytes_table(self.loaded.tokenizer)
            engine = self.engine = BatchGenerator(
                self.loaded.model,
                max_batch_size=max_batch_size,
                prefill_step_size=prefill_step_size,
                prefill_batch_size=prefill_batch_size,
                prompt_cache=self.prompt_cache,
                reseed_each_turn=self.options.reseed_each_turn,
            )
            old_wired_limit = _wire_memory(self.loaded.model) if self.options.mlock else None
        except BaseException as error:
            self._error = error
            return
        finally:
            self._ready.set()
        try:
            clean = self._serve_requests(engine)
            folder = self.options.prompt_cache_dir
            if clean and folder is not None:
                saved = self.prompt_cache.save(folder, loaded=self.loaded)
                logger.info("saved %d prompt caches to %s", len(saved), folder)
        finally:
            _unwire_memory(old_wired_limit)
            release_thread_streams()

    def _insert_saved_cache(self, path: str | Path) -> None:
        """Put a saved prompt cache (``prompt_cache_file``) into the shared cache, so requests
        whose prompt starts with its tokens prefill only the rest."""
        from .prompt_cache_file import PromptCacheFileError, load_prompt_cache_file

        saved = load_prompt_cache_file(path, loaded=self.loaded)
        if saved.kv_bits is not None:
            raise PromptCacheFileError(
                f"prompt cache file {path} holds a {saved.kv_bits}-bit quantized cache, which the "
                "batch engine cannot use; recompute it without kv_bits, or serve one request "
                "at a time"
            )
        self.prompt_cache.insert(
            saved.tokens,
            saved.caches,
            single_tail=saved.single_tail,
            checkpoints=saved.checkpoints,
        )

    def _load_cache_dir(self, folder: Path) -> None:
        """Insert the prompt caches saved in `folder` (made when missing); files for another
        model are skipped with a warning."""
        folder.expanduser().mkdir(parents=True, exist_ok=True)
        result = self.prompt_cache.load(folder, loaded=self.loaded)
        for path, why in result.skipped:
            logger.warning("skipped %s: %s", path, why)
        logger.info("loaded %d prompt caches from %s", result.loaded, folder)

    def _serve_requests(self, engine: BatchGenerator) -> bool:
        """Run the engine until `close`; False when it died of an error instead (logged, and
        every request, waiting or later, ends with it)."""
        outboxes: dict[int, queue.SimpleQueue[BatchOutput]] = {}
        end: BaseException = RuntimeError("the batch generator was closed")
        try:
            self._run_engine(engine, outboxes)
            return True
        except BaseException as error:  # the thread dies: no request may wait for it
            logger.exception("the batch engine stopped")
            end = RuntimeError(f"the batch engine stopped: {error!r}; start the generator again")
            end.__cause__ = error
            return False
        finally:
            self._end_all(engine, outboxes, end)

    def _run_engine(
        self, engine: BatchGenerator, outboxes: dict[int, queue.SimpleQueue[BatchOutput]]
    ) -> None:
        housekeeping = _Housekeeping(self.options)
        every_tokens = self.options.clear_cache_tokens
        while True:
            try:
                item = self._inbox.get(block=not engine.has_work)
                while True:
                    if item is None:
                        return
                    try:
                        outboxes[engine.insert(item.request)] = item.outbox
                    except BaseException as error:
                        item.outbox.put(BatchOutput(-1, None, error=error))
                    item = self._inbox.get_nowait()
            except queue.Empty:
                pass
            try:
                outputs = engine.step()
            except BaseException as error:  # the model failed: end every request with it
                outputs = engine.fail_all(error)
            for output in outputs:
                box = outboxes.get(output.uid)
                if box is None:
                    continue
                box.put(output)
                if output.finish_reason is not None or output.error is not None:
                    del outboxes[output.uid]
                    housekeeping.after_generation()
            if every_tokens:
                housekeeping.after_tokens(engine.stats.generated_tokens)

    def _end_all(
        self,
        engine: BatchGenerator,
        outboxes: dict[int, queue.SimpleQueue[BatchOutput]],
        error: BaseException,
    ) -> None:
        """End every request with `error`: those in the engine, those still in the inbox, and
        (under the lock `_consume` submits under) every later one."""
        with self._submit_lock:
            self._stopped = error
        for output in engine.fail_all(error):
            box = outboxes.pop(output.uid, None)
            if box is not None:
                box.put(output)
        for box in outboxes.values():
            box.put(BatchOutput(-1, None, error=error))
        outboxes.clear()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.outbox.put(BatchOutput(-1, None, error=error))

    # -- generation -----------------------------------------------------------------------------

    def stream(
        self,
        *,
        prompt_tokens: Sequence[int],
        sampling: SamplingParams | None = None,
        max_tokens: int = 512,
        stop_tokens: Iterable[int] | None = None,
        stop_strings: Sequence[str] = (),
        cancel: Cancel = None,
        logits_processors: Sequence[LogitsProcessor] | None = None,
        constraint: ConstraintSpec | None = None,
        loop_detection: LoopDetector | LoopDetectionMode | str | None = None,
        detokenize: bool = True,
        logprobs: bool = False,
        prompt_progress_callback: Callable[[int, int], None] | None = None,
    ) -> Generator[StreamEvent, None, None]:
        """As `TokenGenerator.stream`; safe to call from several threads at once. A
        `constraint` is compiled in the calling thread and masks only this request's row."""
        prompt = self._prompt_ids(prompt_tokens)
        logits_processors = self._with_constraint(logits_processors, constraint)
        if self._closed:
            raise RuntimeError("the batch generator is closed; make a new one")
        stops = self._stop_token_set(stop_tokens)
        events = TokenEvents(
            self.tokenizer,
            stop_tokens=stops,
            stop_strings=stop_strings,
            detokenize=detokenize,
            loop_detection=self.loop_detector if loop_detection is None else loop_detection,
            max_tokens=max_tokens,
        )
        return self._consume(
            prompt,
            events,
            sampling=sampling,
            stops=stops,
            cancel=_as_cancel_check(cancel),
            logits_processors=logits_processors,
            logprobs=logprobs,
            progress=prompt_progress_callback,
        )

    def _consume(
        self,
        prompt: list[int],
        out: TokenEvents,
        *,
        sampling: SamplingParams | None,
        stops: frozenset[int],
        cancel: Callable[[], bool] | None,
        logits_processors: Sequence[LogitsProcessor] | None,
        logprobs: bool,
        progress: Callable[[int, int], None] | None,
    ) -> Generator[StreamEvent, None, None]:
        t_start = time.perf_counter()
        ended = threading.Event()

        def stop_asked() -> bool:
            return ended.is_set() or (cancel is not None and cancel())

        submission = _Submission(
            BatchRequest(
                prompt=prompt,
                max_tokens=out.max_tokens,
                sampling=sampling,
                logits_processors=tuple(logits_processors or ()),
                stop_tokens=stops,
                logprobs=logprobs,
                cancel=stop_asked,
                checkpoints=(
                    harmony_message_boundaries(prompt, max_boundaries=2) if self.is_harmony else ()
                ),
            )
        )
        if progress is not None:
            progress(0, len(prompt))
        info: PrefillInfo | None = None
        t_first = t_end = 0.0
        try:
            with self._submit_lock:
                if self._stopped is not None:
                    raise self._stopped
                self._inbox.put(submission)
            get = submission.outbox.get
            while True:
                output = get()
                if output.error is not None:
                    raise output.error
                if output.prefill is not None:
                    info = output.prefill
                token = output.token
                if token is None:
                    out.cancel()
                    break
                if not t_first:
                    t_first = time.perf_counter()
                    if progress is not None:
                        progress(len(prompt), len(prompt))
                if cancel is not None and cancel():
                    out.cancel(token)
                    break
                event = out.add(token, output.logprobs)
                if event is None:
                    break
                yield event
                if output.finish_reason is not None:  # the engine ended it: a loose end
                    out.cancel()
                    break
            t_end = time.perf_counter()
        finally:
            ended.set()
        final = out.final()
        assert final.stop_reason is not None  # final() always sets it
        completion = out.handed_out
        decode_s = t_end - t_first if completion and t_first else 0.0
        reused = info.reused_prompt_tokens if info is not None else 0
        final.stats = GenerationStats.measured(
            prompt_tokens=len(prompt),
            reused_prompt_tokens=reused,
            prefill_s=info.prefill_s if info is not None else 0.0,
            time_to_first_token_s=t_first - t_start if t_first else 0.0,
            completion_tokens=completion,
            decode_s=decode_s,
            kv_length=len(prompt) + len(out.generated),
            stop_reason=final.stop_reason,
            loop_detection=out.detector.mode.value,
            cache_reuse=info.cache_reuse if info is not None else CacheReuseMode.FRESH,
            stop_token=out.stop_token,
            stop_string=out.stop_string,
        )
        yield final
