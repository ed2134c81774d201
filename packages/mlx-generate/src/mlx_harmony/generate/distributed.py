"""Run one `BatchGenerator` sharded over the ranks of an `mx.distributed` group, in lockstep.

Rank 0 owns the requests. At each step it sends the control messages it has (new requests
with their prompt tokens, sampling parameters and seeds; removals; prompt-cache clears;
shutdown) to every rank with two collectives: a 3-int header `all_sum`'d from rank 0 (zeros
elsewhere), then, only when the header says so, the payload bytes as a uint8 array. Every rank
applies them at the start of the next step, in the same order, so the batch, the prompt cache
and each request's PRNG key are the same everywhere, and then all run the same engine step;
the model's own collectives (tensor or pipeline parallel) do the rest. A step with nothing new
costs one 12-byte all_sum that no rank waits for (see `_Lockstep.step`). Ranks other than 0
run `run_follower`: no HTTP, no tokenizer work.

What rank 0 must not leave to chance, it decides and sends: a request without a seed gets one
(so every rank samples alike), and a cancellation is noticed on rank 0 and sent as a removal
(the engine on every rank sees ``cancel=None``). Logits processors given as callables cannot
travel and are refused; those of `SamplingParams` are rebuilt on each rank.

Failures: a collective whose peer died raises on the ranks that see it (the ring backend's
"connection to a peer was lost"); a peer that hangs makes the collective wait forever, so a
watchdog thread bounds each step (``step_timeout_s``). Either way `DistributedEngine` calls
``on_failure`` once (to end the requests in flight) and the process exits with
`EXIT_RANK_FAILURE` at most ``grace_s`` later. While idle, rank 0 sends an empty step every
``heartbeat_s``, so a follower whose rank 0 vanished notices within
``heartbeat_s + step_timeout_s``.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import mlx.core as mx

from .batch import (
    DEFAULT_PREFILL_BATCH_SIZE,
    BatchGenerator,
    BatchOutput,
    BatchRequest,
    BatchStats,
    BatchTokenGenerator,
)
from .generator import GeneratorOptions, _Housekeeping
from .loading import LoadedModel
from .shared_cache import SharedPromptCache
from .stats import StopReason

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "EXIT_RANK_FAILURE",
    "DistributedEngine",
    "RankFailedError",
    "ShardedBatchTokenGenerator",
    "broadcast_bytes",
    "make_engine",
    "run_follower",
]

EXIT_RANK_FAILURE = 75
"""The exit status of a rank that stops because another rank died or hung."""

_PROTOCOL = 0x4D48_0001
"""Header tag: a follower that reads anything else is out of step (or another version)."""


class RankFailedError(RuntimeError):
    """A rank died, hung or fell out of step; the group cannot go on."""


@dataclass(frozen=True, slots=True)
class _Header:
    tag: int
    step: int
    payload: int


# -- the watchdog ----------------------------------------------------------------------------


class _Watchdog:
    """Bounds the time of each guarded section; past it, reports and ends the process (a
    thread stuck in a collective cannot be interrupted any other way)."""

    def __init__(
        self, rank: int, on_timeout: Callable[[RankFailedError], None], grace_s: float = 0.0
    ) -> None:
        self.rank = rank
        self.on_timeout = on_timeout
        self.grace_s = grace_s
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._what = ""
        self._thread = threading.Thread(target=self._watch, name="mlx-harmony-watchdog")
        self._thread.daemon = True
        self._thread.start()

    @contextmanager
    def guard(self, what: str, timeout_s: float) -> Iterator[None]:
        with self._lock:
            exiting = self._what == "exit"  # a pending exit outlives every later section
            if not exiting:
                self._deadline, self._what = time.monotonic() + timeout_s, what
        try:
            yield
        finally:
            with self._lock:
                if self._what != "exit":
                    self._deadline = None

    def exit_after(self, grace_s: float) -> None:
        """Whatever happens next, end the process within `grace_s`."""
        with self._lock:
            self._deadline, self._what = time.monotonic() + grace_s, "exit"

    def _watch(self) -> None:
        while True:
            time.sleep(0.05)
            with self._lock:
                deadline, what = self._deadline, self._what
            if deadline is None or time.monotonic() < deadline:
                continue
            if what != "exit":
                failure = RankFailedError(
                    f"rank {self.rank}: {what} did not finish in time: another rank died or "
                    "hangs (with the ring backend a hung peer blocks its collectives forever)"
                )
                print(f"mlx-harmony: {failure}", file=sys.stderr, flush=True)
                try:
                    self.on_timeout(failure)
                except BaseException as error:  # the exit below matters more
                    print(f"mlx-harmony: on_failure raised {error!r}", file=sys.stderr)
                if self.grace_s > 0:  # time for the requests' error answers to go out
                    self.exit_after(self.grace_s)
                    continue
            os._exit(EXIT_RANK_FAILURE)


# -- the control channel ---------------------------------------------------------------------


def _send_header(header: _Header | None, group: mx.distributed.Group) -> mx.array:
    """Queue the header's all_sum without waiting for it (rank 0 never needs the sum)."""
    values = [header.tag, header.step, header.payload] if header is not None else [0, 0, 0]
    summed = mx.distributed.all_sum(mx.array(values, dtype=mx.int32), group=group)
    mx.async_eval(summed)
    return summed


def _exchange_payload(data: bytes | None, size: int, group: mx.distributed.Group) -> bytes:
    array = (
        mx.array(cast(Any, memoryview(data)), dtype=mx.uint8)
        if data is not None
        else mx.zeros((size,), dtype=mx.uint8)
    )
    summed = mx.distributed.all_sum(array, group=group)
    mx.eval(summed)
    return bytes(memoryview(cast(Any, summed)))


def broadcast_bytes(data: bytes | None, group: mx.distributed.Group) -> bytes:
    """Rank 0's `data` on every rank (the others pass None): its length, then its bytes, each
    one `all_sum`. Every rank must call it, in the same order; for one-off
    messages before the engine runs (a launch plan), not per step. It runs on the default
    stream, as the engine's control messages do."""
    if (data is None) != (group.rank() != 0):
        raise ValueError(f"rank {group.rank()} passes {'no ' if data is None else ''}data")
    size = mx.distributed.all_sum(mx.array([len(data or b"")], dtype=mx.int32), group=group)
    (n,) = cast(list[int], size.tolist())
    return _exchange_payload(data, n, group) if n else b""


def _request_message(uid: int, request: BatchRequest) -> list[Any]:
    sampling = request.sampling
    return [
        "insert",
        uid,
        [int(t) for t in request.prompt],
        request.max_tokens,
        sampling.model_dump(mode="json") if sampling is not None else None,
        sorted(int(t) for t in request.stop_tokens),
        request.logprobs,
    ]


def _request_from_message(message: list[Any]) -> BatchRequest:
    from mlx_harmony.sampling import SamplingParams

    _, uid, prompt, max_tokens, sampling, stops, logprobs = message
    return BatchRequest(
        prompt=prompt,
        max_tokens=max_tokens,
        sampling=SamplingParams.model_validate(sampling) if sampling is not None else None,
        stop_tokens=stops,
        logprobs=logprobs,
        uid=uid,
    )


class _Lockstep:
    """The engine side every rank shares: apply the step's messages, then step."""

    def __init__(
        self,
        engine: BatchGenerator,
        group: mx.distributed.Group,
        *,
        step_timeout_s: float,
        heartbeat_s: float,
        grace_s: float,
        on_failure: Callable[[RankFailedError], None] | None,
    ) -> None:
        if step_timeout_s <= 0 or heartbeat_s <= 0 or grace_s <= 0:
            raise ValueError(
                "step_timeout_s, heartbeat_s and grace_s must be positive, got "
                f"{step_timeout_s}, {heartbeat_s} and {grace_s}"
            )
        self.engine = engine
        self.group = group
        self.rank = group.rank()
        self.step_timeout_s = step_timeout_s
        self.heartbeat_s = heartbeat_s
        self.grace_s = grace_s
        self.steps = 0
        self.shut_down = False
        self._header: mx.array | None = None
        self._outgoing: tuple[list[list[Any]], bytes] = ([], b"")
        self._on_failure = on_failure
        self._failed = False
        self._watchdog = _Watchdog(self.rank, self._report, grace_s)

    def _report(self, failure: RankFailedError) -> None:
        if self._failed:
            return
        self._failed = True
        if self._on_failure is not None:
            self._on_failure(failure)

    def _fail(self, what: str, error: BaseException) -> RankFailedError:
        failure = RankFailedError(f"rank {self.rank}: {what} failed: {error}")
        self._watchdog.exit_after(self.grace_s)
        self._report(failure)
        return failure

    def _apply(self, messages: list[list[Any]]) -> list[BatchOutput]:
        engine = self.engine
        outputs = []
        for message in messages:
            kind = message[0]
            if kind == "insert":
                request = _request_from_message(message)
                uid = request.uid
                if engine.insert(request) != uid:
                    raise RankFailedError(f"rank {self.rank}: request uid {uid} out of step")
            elif kind == "remove":
                if engine.remove(message[1]):
                    engine.stats.cancelled += 1
                    outputs.append(BatchOutput(message[1], None, None, StopReason.CANCELLED))
            elif kind == "clear_prompt_cache":
                if engine.prompt_cache is not None:
                    engine.prompt_cache.clear()
            elif kind == "shutdown":
                self.shut_down = True
            else:
                raise RankFailedError(f"rank {self.rank}: unknown control message {kind!r}")
        return outputs

    def _receive(self) -> list[list[Any]]:
        """The messages of the previous step: rank 0 knows them and only sends the payload;
        the others read the header (queued a step ago, so it is there by now) and the payload."""
        assert self._header is not None
        if self.rank == 0:
            messages, data = self._outgoing
            if data:
                _exchange_payload(data, len(data), self.group)
            return messages
        tag, step, size = cast(list[int], self._header.tolist())
        if tag != _PROTOCOL or step != self.steps - 1:
            raise RankFailedError(
                f"rank {self.rank}: control header {(tag, step, size)} does not match step "
                f"{self.steps - 1}: the ranks run different versions or fell out of step"
            )
        return json.loads(_exchange_payload(None, size, self.group)) if size else []

    def step(self, messages: list[list[Any]] | None) -> list[BatchOutput]:
        """One lockstep step on any rank: apply the previous step's messages, queue this
        step's (rank 0 passes them, the others None), then run the engine step.

        Messages take effect one step after they are sent: each rank then reads a header that
        was queued before the last forward pass, so no rank waits for that pass before
        building the next one (the engine's pipelining survives), and a step with nothing new
        costs one 12-byte all_sum that nobody waits for.
        """
        self.steps += 1
        timeout = self.step_timeout_s + (self.heartbeat_s if self.rank else 0.0)
        with self._watchdog.guard(f"step {self.steps}", timeout):
            try:
                with mx.stream(self.engine.stream):
                    outputs = self._apply(self._receive()) if self._header is not None else []
                    if self.shut_down:
                        self._header = None
                        return outputs
                    data = b""
                    if messages:
                        data = json.dumps(messages, separators=(",", ":")).encode()
                    header = _Header(_PROTOCOL, self.steps, len(data)) if self.rank == 0 else None
                    self._header = _send_header(header, self.group)
                    self._outgoing = (messages or [], data)
                    if self.engine.has_work:
                        outputs += self.engine.step()
                return outputs
            except BaseException as error:
                raise self._fail(f"step {self.steps}", error) from error

    def confirm(self) -> None:
        """Rank 0, idle: wait for the last header's all_sum, which every healthy rank ended
        long ago. Rank 0 never waits for a header otherwise, so without this a follower that
        died while the group idles would be found only by the next request."""
        header = self._header
        if header is None or self.shut_down:
            return
        what = f"the heartbeat after step {self.steps}"
        with self._watchdog.guard(what, self.step_timeout_s):
            try:
                with mx.stream(self.engine.stream):
                    mx.eval(header)
            except BaseException as error:
                raise self._fail(what, error) from error

    @property
    def in_flight(self) -> bool:
        """Messages sent but not applied yet: one more step applies them."""
        return bool(self._outgoing[0])


# -- rank 0 ----------------------------------------------------------------------------------


class DistributedEngine:
    """Rank 0's face of the lockstep engine: `BatchGenerator`'s driving interface (`insert`,
    `remove`, `step`, `has_work`, `fail_all`, `stats`) plus `heartbeat`, `clear_prompt_cache`
    and `close`. One thread drives it, as a `BatchGenerator`.

    ``on_failure(error)`` runs once when a rank dies or hangs, from the thread that notices
    (the watchdog's, when the driving thread is stuck in a collective): end the requests in
    flight there (the server answers 503). The process then exits with `EXIT_RANK_FAILURE`
    at most ``grace_s`` later; `step` raises `RankFailedError` meanwhile.
    """

    def __init__(
        self,
        engine: BatchGenerator,
        group: mx.distributed.Group | None = None,
        *,
        step_timeout_s: float = 60.0,
        heartbeat_s: float = 1.0,
        grace_s: float = 5.0,
        on_failure: Callable[[RankFailedError], None] | None = None,
    ) -> None:
        group = group if group is not None else mx.distributed.init()
        if group.rank() != 0:
            raise ValueError(
                f"DistributedEngine runs on rank 0; rank {group.rank()} calls run_follower"
            )
        self._lockstep = _Lockstep(
            engine,
            group,
            step_timeout_s=step_timeout_s,
            heartbeat_s=heartbeat_s,
            grace_s=grace_s,
            on_failure=on_failure,
        )
        self.engine = engine
        self.group = group
        self._uids = 0
        self._pending: list[list[Any]] = []
        self._cancels: dict[int, Callable[[], bool]] = {}
        self._live: set[int] = set()
        self._removing: set[int] = set()
        self._last_exchange = time.monotonic()
        self.closed = False

    @property
    def stats(self) -> BatchStats:
        return self.engine.stats

    @property
    def active(self) -> int:
        return self.engine.active

    @property
    def waiting(self) -> int:
        return self.engine.waiting + sum(1 for m in self._pending if m[0] == "insert")

    @property
    def has_work(self) -> bool:
        return bool(self._pending) or self._lockstep.in_flight or self.engine.has_work

    @property
    def heartbeat_s(self) -> float:
        """How long the driving thread may wait for requests before calling `heartbeat`."""
        return self._lockstep.heartbeat_s

    def insert(self, request: BatchRequest) -> int:
        """Queue `request` for the next step on every rank; returns its uid. A request
        without a seed gets a random one here, so that every rank samples alike."""
        if self.closed:
            raise RuntimeError("the distributed engine is closed")
        if request.logits_processors:
            raise ValueError(
                "logits_processors cannot travel to the other ranks of a sharded model; "
                "use the SamplingParams fields (penalties, logit bias) instead"
            )
        if not len(request.prompt):
            raise ValueError("prompt must hold at least one token to generate from")
        if request.max_tokens == 0 or request.max_tokens < -1:
            raise ValueError(
                f"max_tokens must be positive (or -1 for no limit), got {request.max_tokens}"
            )
        sampling = request.sampling
        if sampling is not None and sampling.temperature != 0 and sampling.seed is None:
            request.sampling = sampling.model_copy(update={"seed": secrets.randbits(62)})
        uid = request.uid = self._uids
        self._uids += 1
        self._pending.append(_request_message(uid, request))
        if request.cancel is not None:
            self._cancels[uid] = request.cancel
        self._live.add(uid)
        return uid

    def remove(self, uid: int) -> None:
        """Drop request `uid` on every rank (it ends CANCELLED a step or two later; tokens
        it makes meanwhile still come out)."""
        if uid in self._live and uid not in self._removing:
            self._removing.add(uid)
            self._pending.append(["remove", uid])

    def clear_prompt_cache(self) -> None:
        """Forget the cached prompt prefixes on every rank at the next step (clearing rank
        0's alone would make the ranks prefill differently and deadlock)."""
        self._pending.append(["clear_prompt_cache"])

    def _messages(self) -> list[list[Any]]:
        for uid, cancel in self._cancels.items():
            if uid not in self._removing and cancel():
                self.remove(uid)
        messages, self._pending = self._pending, []
        return messages

    def step(self) -> list[BatchOutput]:
        """Send this step's messages, apply them and run the step on every rank."""
        if self.closed:
            raise RuntimeError("the distributed engine is closed")
        outputs = self._lockstep.step(self._messages())
        self._last_exchange = time.monotonic()
        for output in outputs:
            if output.finish_reason is not None or output.error is not None:
                self._live.discard(output.uid)
                self._cancels.pop(output.uid, None)
                self._removing.discard(output.uid)
        return outputs

    def heartbeat(self) -> None:
        """An empty step when none ran for ``heartbeat_s``: call it while idle, so followers
        know rank 0 lives and a dead follower is found without waiting for a request."""
        if time.monotonic() - self._last_exchange >= self._lockstep.heartbeat_s:
            self._lockstep.confirm()
            self.step()

    def fail_all(self, error: BaseException) -> list[BatchOutput]:
        """End every request on rank 0 with `error` (after a failure: the group is lost)."""
        outputs = [BatchOutput(uid, None, error=error) for uid in sorted(self._live)]
        self._live.clear()
        self._cancels.clear()
        self._removing.clear()
        self._pending.clear()
        self.engine.fail_all(error)
        return outputs

    def close(self) -> None:
        """Tell every rank to stop (their `run_follower` returns 0)."""
        if self.closed:
            return
        self._pending.append(["shutdown"])
        while not self._lockstep.shut_down:  # sent, then applied a step later
            self.step()
        self.closed = True


# -- other ranks -----------------------------------------------------------------------------


def run_follower(
    engine: BatchGenerator,
    group: mx.distributed.Group | None = None,
    *,
    step_timeout_s: float = 60.0,
    heartbeat_s: float = 1.0,
    grace_s: float = 5.0,
) -> int:
    """A rank other than 0: receive each step's messages and run the same step, until rank 0
    shuts down (returns 0). A failure of rank 0 or another rank ends the process with
    `EXIT_RANK_FAILURE`. Use the same timeouts as rank 0's `DistributedEngine`."""
    group = group if group is not None else mx.distributed.init()
    if group.rank() == 0:
        raise ValueError("run_follower runs on ranks other than 0; rank 0 drives DistributedEngine")
    lockstep = _Lockstep(
        engine,
        group,
        step_timeout_s=step_timeout_s,
        heartbeat_s=heartbeat_s,
        grace_s=grace_s,
        on_failure=None,
    )
    try:
        while not lockstep.shut_down:
            lockstep.step(None)
    except RankFailedError as failure:
        print(f"mlx-harmony: {failure}", file=sys.stderr, flush=True)
        return EXIT_RANK_FAILURE
    return 0


def make_engine(
    model: Any,
    *,
    max_batch_size: int = 8,
    prefill_step_size: int = 1024,
    prefill_batch_size: int = DEFAULT_PREFILL_BATCH_SIZE,
    prompt_cache_size: int = 16,
    prompt_cache_bytes: int | None = None,
    reseed_each_turn: bool = True,
) -> BatchGenerator:
    """The engine every rank builds alike (as `BatchTokenGenerator` does): pass these same
    values to `check_same_model`'s options so that a rank built differently is named."""
    return BatchGenerator(
        model,
        max_batch_size=max_batch_size,
        prefill_step_size=prefill_step_size,
        prefill_batch_size=prefill_batch_size,
        prompt_cache=SharedPromptCache(max_entries=prompt_cache_size, max_bytes=prompt_cache_bytes),
        reseed_each_turn=reseed_each_turn,
    )


# -- rank 0 behind TokenGenerator's interface --------------------------------------------------


class ShardedBatchTokenGenerator(BatchTokenGenerator):
    """`BatchTokenGenerator` for rank 0 of a sharded model: the same `stream()` for any number
    of threads, with the engine thread driving a `DistributedEngine` (heartbeats while idle,
    prompt-cache clears sent to every rank). Pass the `LoadedModel` of `load_sharded`; the
    other ranks run `run_follower(make_engine(loaded.model, **engine_options), group)` with
    the same engine options.

    When a rank dies or hangs, every request in flight (and every later one) ends with the
    `RankFailedError` as its error, `failure` holds it, ``on_failure(error)`` runs (say so to
    the user; it must not block), and the process exits with `EXIT_RANK_FAILURE` within
    ``grace_s``.
    """

    def __init__(
        self,
        model: LoadedModel,
        options: GeneratorOptions | None = None,
        *,
        group: mx.distributed.Group | None = None,
        step_timeout_s: float = 60.0,
        heartbeat_s: float = 1.0,
        grace_s: float = 5.0,
        max_batch_size: int = 8,
        prefill_step_size: int = 1024,
        prefill_batch_size: int = DEFAULT_PREFILL_BATCH_SIZE,
        prompt_cache_size: int = 16,
        prompt_cache_bytes: int | None = None,
        on_failure: Callable[[RankFailedError], None] | None = None,
    ) -> None:
        if not isinstance(model, LoadedModel):
            raise TypeError(
                "ShardedBatchTokenGenerator takes the LoadedModel of load_sharded, not a path: "
                "every rank must load its own shard first"
            )
        self.group = group if group is not None else mx.distributed.init()
        self.failure: RankFailedError | None = None
        self._on_failure = on_failure
        # The engine thread's; retune() changes its options.
        self._housekeeping = _Housekeeping(options if options is not None else GeneratorOptions())
        self._timeouts = {
            "step_timeout_s": step_timeout_s,
            "heartbeat_s": heartbeat_s,
            "grace_s": grace_s,
        }
        self._outboxes: dict[int, queue.SimpleQueue[BatchOutput]] = {}
        self._outbox_lock = threading.Lock()
        self._clear_asked = threading.Event()
        super().__init__(
            model,
            options,
            max_batch_size=max_batch_size,
            prefill_step_size=prefill_step_size,
            prefill_batch_size=prefill_batch_size,
            prompt_cache_size=prompt_cache_size,
            prompt_cache_bytes=prompt_cache_bytes,
        )

    def retune(self, options: GeneratorOptions) -> None:
        """Take rank 0's per-call values of `options` (loop detection, cache clearing, memory
        logs) for the next requests, e.g. after a chat's ``\\set``. ``reseed_each_turn`` and
        the load-time options (`GeneratorOptions.LOAD_TIME`) were built into every rank's
        engine: a change raises ValueError."""
        for name in ("reseed_each_turn", *GeneratorOptions.LOAD_TIME):
            if getattr(options, name) != getattr(self.options, name):
                raise ValueError(
                    f"{name} is fixed on every rank of a sharded model when it loads "
                    f"({getattr(self.options, name)!r}); set it back, or launch again with "
                    f"{name}={getattr(options, name)!r}"
                )
        self.options = options
        self.loop_detector = options.loop_detector()
        self._housekeeping.options = options

    def reset_cache(self) -> None:
        """Forget every cached prompt prefix, on every rank at the same step."""
        self._clear_asked.set()

    def _fail_in_flight(self, failure: RankFailedError) -> None:
        self.failure = failure
        self._closed = True
        with self._outbox_lock:
            for uid, box in self._outboxes.items():
                box.put(BatchOutput(uid, None, error=failure))
            self._outboxes.clear()
        while True:  # submissions the engine thread never took
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item.outbox.put(BatchOutput(-1, None, error=failure))
        if self._on_failure is not None:
            self._on_failure(failure)

    def _take_submissions(self, dist: DistributedEngine) -> bool:
        """Insert what arrived (waiting up to a heartbeat when idle); False on close()."""
        try:
            item = (
                self._inbox.get_nowait()
                if dist.has_work
                else self._inbox.get(timeout=dist.heartbeat_s)
            )
            while True:
                if item is None:
                    return False
                try:
                    uid = dist.insert(item.request)
                    with self._outbox_lock:
                        self._outboxes[uid] = item.outbox
                except Exception as error:
                    item.outbox.put(BatchOutput(-1, None, error=error))
                item = self._inbox.get_nowait()
        except queue.Empty:
            return True

    def _serve_requests(self, engine: BatchGenerator) -> bool:
        """Drive the lockstep engine until `close`; False when a rank was lost instead."""
        dist = DistributedEngine(
            engine, self.group, **self._timeouts, on_failure=self._fail_in_flight
        )
        housekeeping = self._housekeeping
        try:
            while self._take_submissions(dist):
                if self._clear_asked.is_set():
                    self._clear_asked.clear()
                    dist.clear_prompt_cache()
                if not dist.has_work:
                    dist.heartbeat()
                    continue
                for output in dist.step():
                    with self._outbox_lock:
                        box = self._outboxes.get(output.uid)
                        ended = output.finish_reason is not None or output.error is not None
                        if box is not None and ended:
                            del self._outboxes[output.uid]
                    if box is None:
                        continue
                    box.put(output)
                    if ended:
                        housekeeping.after_generation()
                if housekeeping.options.clear_cache_tokens:
                    housekeeping.after_tokens(engine.stats.generated_tokens)
            dist.close()
        except RankFailedError:
            return False  # on_failure ended the requests; the watchdog ends the process
        shutdown = RuntimeError("the batch generator was closed")
        with self._outbox_lock:
            for output in dist.fail_all(shutdown):
                box = self._outboxes.pop(output.uid, None)
                if box is not None:
                    box.put(output)
        return True
