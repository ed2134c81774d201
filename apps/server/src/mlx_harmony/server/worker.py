"""The model worker: one thread that owns the model and runs every MLX call, fed by a queue.

One thread, the dispatcher, loads the model and hands out the work. With a batching generator
(mlx-generate's `BatchTokenGenerator`, which keeps every MLX call on its own engine thread), up
to ``max_concurrency`` turns run at once, each on a thread of its own that only reads tokens and
parses them, and their tokens decode together in one batch. With a one-at-a-time generator
(`TokenGenerator`, or ``--max-concurrency 1``) the dispatcher runs each turn itself, as mlx-lm's
server does.

Requests beyond the running ones wait in a bounded `FairQueue`, round-robin across clients; a
full queue answers 503 with ``Retry-After``. The worker pushes each turn's events into the
request's `EventChannel` as they happen; a request that goes away sets its job's cancel flag,
which the generation checks at every step, so it leaves the batch at the next one.

Consecutive requests of one conversation share the prompt prefix, so the prompt cache serves
them (``prompt_tokens_details.cached_tokens`` says how much): the batching generator keeps an
LRU of prefixes shared by every conversation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, TypedDict, TypeVar, cast

from mlx_harmony.controller import (
    AnswerDelta,
    ChatAdapter,
    CommentaryDelta,
    ContextBudget,
    ContextOverflowError,
    PromptConfig,
    RetryPolicy,
    TemplateKwargsError,
    ThinkingDelta,
    ToolDeclarations,
    Turn,
    TurnDone,
    TurnEvent,
    TurnResult,
    adapter_for,
    context_length_of,
    stream_chat_turn,
    with_template_kwargs,
)
from mlx_harmony.generate.constrain import ConstraintError, ConstraintSpec
from mlx_harmony.harmony_format import FIRST_SPECIAL, FunctionTool, StreamParser

from .admission import FairQueue, QueueFullError, current_client
from .channel import EventChannel
from .errors import APIError, constraint_error
from .models import ModelEntry

if TYPE_CHECKING:
    import mlx.core as mx

    from mlx_harmony.generate import Cancel, StreamEvent
    from mlx_harmony.sampling import SamplingParams

__all__ = [
    "ChannelJob",
    "CountJob",
    "Finished",
    "Job",
    "LoadedState",
    "LogprobEntry",
    "ModelWorker",
    "PromptCount",
    "ServingGenerator",
    "TokenLogprobs",
    "TopLogprob",
    "TurnJob",
    "TurnPlan",
    "WorkerEvent",
    "WorkerStats",
]

logger = logging.getLogger("mlx_harmony.server")

ItemT = TypeVar("ItemT")


class ServingGenerator(Protocol):
    """What the worker asks of every generator: mlx-generate's `TokenGenerator` and
    `BatchTokenGenerator` have it, test doubles copy it. The optional parts (``is_harmony``,
    ``max_batch_size``, ``compile_constraint``, ``close``, ...) are looked up with getattr."""

    def stream(
        self,
        *,
        prompt_tokens: Sequence[int],
        sampling: SamplingParams | None = None,
        max_tokens: int = 512,
        stop_tokens: Iterable[int] | None = None,
        stop_strings: Sequence[str] = (),
        cancel: Cancel = None,
        constraint: ConstraintSpec | None = None,
        loop_detection: str | None = None,
        logprobs: bool = False,
    ) -> Iterator[StreamEvent]: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: Sequence[int]) -> str: ...


ModelLoader = Callable[[ModelEntry], ServingGenerator]
"""Loads a model entry: returns a `TokenGenerator` (or a test double with its API)."""


@dataclass(frozen=True, slots=True)
class TurnPlan:
    """One chat turn to run, everything checked: what the service hands the worker."""

    entry: ModelEntry
    turn: Turn
    history: tuple[Turn, ...]
    config: PromptConfig
    function_tools: tuple[FunctionTool, ...] = ()
    top_logprobs: int | None = None
    """None: no logprobs; 0-20: logprobs with this many alternatives per token."""
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    conversation_param: str = "messages"
    """The request field that holds the conversation, which a too-long prompt error names."""
    constraint: ConstraintSpec | None = None
    """The grammar the reply must match (JSON format, forced or strict tool calls)."""
    constraint_param: str | None = None
    """The request field the constraint came from, which a compile error names."""


class TopLogprob(TypedDict):
    """One of a token's most likely alternatives (OpenAI's ``top_logprobs`` entry)."""

    token: str
    logprob: float
    bytes: list[int]


class LogprobEntry(TypedDict):
    """A generated token's logprob and its alternatives (OpenAI's ``logprobs.content``)."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """The logprobs of the content tokens of the `AnswerDelta` that follows."""

    entries: tuple[LogprobEntry, ...]


@dataclass(frozen=True, slots=True)
class Finished:
    """The turn is done: the controller's result and what the worker counted."""

    result: TurnResult
    reasoning_tokens: int
    queued_s: float


WorkerEvent = TurnEvent | TokenLogprobs | Finished


class PromptCount(NamedTuple):
    """What `CountJob` answers: the prompt's tokens and the context budget."""

    tokens: int
    window: int | None
    margin: int


"""What a `TurnJob` puts into its channel: the turn's events, logprobs, then `Finished`."""


@dataclass
class WorkerStats:
    """What the worker did, for tests and the health route."""

    turns: int = 0
    cancelled: int = 0
    """Turns that ended because their request went away (before or during generation)."""
    failed: int = 0
    loads: int = 0
    rejected: int = 0
    """Requests turned away with a 503 because the queue was full."""
    max_running: int = 0
    """The most turns that ran at once."""


@dataclass
class LoadedState:
    """The model the worker holds now."""

    entry: ModelEntry
    generator: ServingGenerator
    adapter: ChatAdapter
    context_length: int | None
    vocab_size: int | None
    loaded_at: float


class _Job:
    entry: ModelEntry
    cancel: threading.Event
    submitted: float
    batched: bool = False
    """Runs as a row of the batch engine (on a pool thread) when the generator batches."""

    def run(self, state: LoadedState, worker: ModelWorker) -> None:
        raise NotImplementedError

    def fail(self, error: BaseException) -> None:
        raise NotImplementedError


Job = _Job
"""What `ModelWorker.submit` runs; a job of another API (raw completions) subclasses it."""


class _Planned(Protocol):
    @property
    def entry(self) -> ModelEntry: ...


PlanT = TypeVar("PlanT", bound=_Planned)


class ChannelJob(_Job, Generic[PlanT, ItemT]):
    """A job of a request's plan (a `TurnPlan`, or another API's) that answers into the
    request's `channel`."""

    def __init__(self, plan: PlanT, channel: EventChannel[ItemT]) -> None:
        self.plan = plan
        self.entry = plan.entry
        self.channel = channel
        self.cancel = threading.Event()
        self.submitted = time.perf_counter()

    def fail(self, error: BaseException) -> None:
        self.channel.close(error)


class TurnJob(ChannelJob[TurnPlan, "WorkerEvent"]):
    """Run one turn, streaming its events into `channel`."""

    batched = True

    def run(self, state: LoadedState, worker: ModelWorker) -> None:
        plan = self.plan
        queued = time.perf_counter() - self.submitted
        if self.cancel.is_set():
            worker.count("cancelled")
            self.channel.close()
            return
        problem = _check_against_model(plan, state) or _compile_constraint(plan, state)
        if problem is not None:
            self.channel.close(problem)
            return
        tap = _TokenTap(
            state.generator,
            top=plan.top_logprobs,
            harmony=_is_harmony(state),
            constraint=plan.constraint,
        )
        put = self.channel.put
        reasoning = 0
        result: TurnResult | None = None
        try:
            for event in stream_chat_turn(
                tap,
                state.adapter,
                plan.turn,
                history=plan.history,
                config=plan.config,
                function_tools=plan.function_tools,
                policy=plan.policy,
                context_length=state.context_length,
                cancel=self.cancel,
            ):
                kind = type(event)
                if kind is AnswerDelta or kind is CommentaryDelta:
                    if tap.top is not None:
                        put(TokenLogprobs(tap.take_content()))
                    else:
                        tap.pending = 0
                elif kind is ThinkingDelta:
                    reasoning += tap.take_count()
                elif isinstance(event, TurnDone):
                    result = event.result
                    continue
                put(event)
        except ContextOverflowError as error:
            worker.count("failed")
            self.channel.close(
                APIError(
                    400, str(error), param=plan.conversation_param, code="context_length_exceeded"
                )
            )
            return
        except BaseException as error:
            worker.count("failed")
            logger.exception("the turn failed")
            self.channel.close(error)
            return
        if self.cancel.is_set():
            worker.count("cancelled")
        worker.count("turns")
        if result is None:  # stream_chat_turn always ends with TurnDone
            self.channel.close(RuntimeError("the turn ended without its TurnDone event"))
            return
        put(Finished(result, reasoning, queued))
        self.channel.close()


class CountJob(ChannelJob[TurnPlan, PromptCount]):
    """Count a conversation's prompt tokens (``POST /v1/tokenize``)."""

    def run(self, state: LoadedState, worker: ModelWorker) -> None:
        plan = self.plan
        problem = _template_kwargs_problem(plan, state)
        if problem is not None:
            self.channel.close(problem)
            return
        cfg = plan.config.effective()
        turns = [*plan.history, plan.turn]
        try:
            tokens = state.adapter.render(
                turns, config=cfg, tools=ToolDeclarations(), function_tools=plan.function_tools
            )
            budget = ContextBudget.from_config(cfg, context_length=state.context_length)
        except BaseException as error:
            self.channel.close(error)
            return
        self.channel.put(PromptCount(len(tokens), budget.window, budget.margin))
        self.channel.close()


class _LoadJob(_Job):
    def __init__(self, entry: ModelEntry) -> None:
        self.entry = entry
        self.cancel = threading.Event()
        self.submitted = time.perf_counter()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self, state: LoadedState, worker: ModelWorker) -> None:
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


def _compile_constraint(plan: TurnPlan, state: LoadedState) -> APIError | None:
    """Compile the plan's constraint for this model before the turn starts (cached per
    schema), so a schema the engine cannot handle is a 400, not a failed stream. Test doubles
    without `compile_constraint` take the spec as it is."""
    if plan.constraint is None:
        return None
    if getattr(state.generator, "speculates", False):
        return APIError(
            400,
            f"{plan.constraint_param or 'this request'} asks for structured output, which this "
            "model cannot give while it decodes speculatively (the server was started with "
            "--draft-model or --prompt-lookup, or its prompt config sets draft_model or "
            "prompt_lookup): drop the constraint from the request, or serve the model without "
            "speculation",
            param=plan.constraint_param,
            code="unsupported_value",
        )
    compile_for = getattr(state.generator, "compile_constraint", None)
    if compile_for is None:
        return None
    try:
        compile_for(plan.constraint)
    except ConstraintError as error:
        return constraint_error(error, plan.constraint_param)
    return None


def _check_against_model(plan: TurnPlan, state: LoadedState) -> APIError | None:
    """What only the loaded model can say: tools for a model that cannot call them, token ids
    beyond its vocabulary."""
    problem = _template_kwargs_problem(plan, state)
    if problem is not None:
        return problem
    if plan.function_tools and not state.adapter.supports_tools:
        return APIError(
            400,
            f"the model {plan.entry.id!r} has no tool parser (mlx-lm finds none for its chat "
            "template), so it cannot call tools; leave out tools (or send tool_choice: "
            "'none'), or use a model whose template supports tool calls",
            param="tools",
            code="tools_unsupported",
        )
    vocab = state.vocab_size
    if vocab is None:
        return None
    cfg = plan.config
    bad = sorted(t for t in (cfg.sampling.logit_bias or {}) if not 0 <= int(t) < vocab)
    if bad:
        return APIError(
            400,
            f"logit_bias has token ids outside this model's vocabulary [0, {vocab}): {bad[:5]}",
            param="logit_bias",
            code="invalid_value",
        )
    top_k = cfg.sampling.top_k
    if top_k >= vocab:
        return APIError(
            400,
            f"top_k must be below the vocabulary size {vocab} (0 turns it off), got {top_k}",
            param="top_k",
            code="invalid_value",
        )
    return None


def _template_kwargs_problem(plan: TurnPlan, state: LoadedState) -> APIError | None:
    """gpt-oss takes only the chat-template keywords that are Harmony settings: a 400 for
    any other (from the request's ``chat_template_kwargs`` or the server's
    ``--chat-template-args``)."""
    if not plan.config.chat_template_args or not _is_harmony(state):
        return None
    try:
        with_template_kwargs(plan.config, {}, harmony=True)
    except TemplateKwargsError as error:
        return APIError(
            400,
            f"chat_template_kwargs: {error}",
            param=f"chat_template_kwargs.{error.key}",
            code="unsupported_value",
        )
    return None


def _is_harmony(state: LoadedState) -> bool:
    return bool(getattr(state.generator, "is_harmony", True))


class _TokenTap:
    """Wraps the generator for one turn: counts the tokens between text deltas (the reasoning
    tokens) and, when logprobs were asked for, computes each token's entry.

    The turn feeds each token to its parser right after this yields it, so the tokens seen
    since the last delta are those that produced the next one. Which of them are content (not
    ``<|start|>assistant<|channel|>final<|message|>``) says harmony-format's `StreamParser`,
    fed the generator's text, which the tap runs only when logprobs were asked for.
    """

    def __init__(
        self,
        generator: ServingGenerator,
        *,
        top: int | None,
        harmony: bool,
        constraint: ConstraintSpec | None = None,
    ) -> None:
        self.generator = generator
        self.constraint = constraint
        self.top = top
        self.harmony = harmony
        self.pending = 0
        self._content: list[LogprobEntry] = []
        self._waiting: list[LogprobEntry] = []
        self._parser = StreamParser() if harmony and top is not None else None

    def __getattr__(self, name: str) -> object:
        return getattr(self.generator, name)

    def stream(self, **kwargs: Any) -> Iterator[StreamEvent]:
        if self.constraint is not None:
            kwargs["constraint"] = self.constraint
        if self.top is None:
            for event in self.generator.stream(**kwargs):
                if event.token is not None:
                    self.pending += 1
                yield event
            return
        stops = frozenset(kwargs.get("stop_tokens") or ())
        for event in self.generator.stream(**kwargs, logprobs=True):
            token = event.token
            if token is not None:
                self.pending += 1
                if token not in stops:
                    self._sort(token, event.text, self._entry(token, event.logprobs))
            yield event

    def _sort(self, token: int, text: str | None, entry: LogprobEntry) -> None:
        """File a token's entry as content, or as waiting for the parser to say: an ordinary
        token that gave no text yet is either a header word (dropped at the next special
        token) or content the parser holds back (a partial character), kept with the next
        delta."""
        parser = self._parser
        if parser is None:
            self._content.append(entry)
        elif parser.feed(token, text):
            self._content.extend(self._waiting)
            self._waiting.clear()
            self._content.append(entry)
        elif token >= FIRST_SPECIAL:
            self._waiting.clear()
        else:
            self._waiting.append(entry)

    def take_count(self) -> int:
        count, self.pending = self.pending, 0
        self._content.clear()
        return count

    def take_content(self) -> tuple[LogprobEntry, ...]:
        """The entries of the content tokens since the last delta."""
        out = tuple(self._content)
        self.pending = 0
        self._content.clear()
        return out

    def _entry(self, token: int, logprobs: mx.array | None) -> LogprobEntry:
        text, raw = self._token_text(token)
        if logprobs is None:
            return {"token": text, "logprob": 0.0, "bytes": raw, "top_logprobs": []}
        import mlx.core as mx

        scores = logprobs.reshape(-1)
        top: list[TopLogprob] = []
        k = self.top or 0
        if k:
            k = min(k, scores.size)
            ids = mx.argpartition(-scores, kth=k - 1)[:k]
            values = scores[ids]
            order = mx.argsort(-values)
            # a 1-D array's tolist() is a list (mlx types it as list or scalar)
            picked = cast(list[int], ids[order].tolist())
            picked_scores = cast(list[float], values[order].tolist())
            for i, v in zip(picked, picked_scores, strict=True):
                t, b = self._token_text(int(i))
                top.append({"token": t, "logprob": _finite(v), "bytes": b})
        return {
            "token": text,
            "logprob": _finite(cast(float, scores[token].item())),
            "bytes": raw,
            "top_logprobs": top,
        }

    def _token_text(self, token: int) -> tuple[str, list[int]]:
        decode = getattr(self.generator, "decode", None)
        try:
            text = decode([token]) if decode is not None else ""
        except Exception:
            text = ""
        return text, list(text.encode("utf-8"))


def _finite(value: float) -> float:
    return value if value > -1e30 else -9999.0


class ModelWorker:
    """The dispatcher thread and the turns it runs; see the module docstring.

    ``loader`` builds the generator for a `ModelEntry` (mlx-generate's `BatchTokenGenerator`
    or `TokenGenerator` in production, a scripted test double in tests). One model is held at
    a time; a request for another one waits its turn, then the worker lets the running turns
    finish and swaps models.
    """

    def __init__(
        self,
        loader: ModelLoader,
        *,
        max_queue: int = 64,
        max_concurrency: int = 1,
        max_queue_per_client: int | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.loader = loader
        self.max_queue = max_queue
        self.max_concurrency = max_concurrency
        self.stats = WorkerStats()
        self.state: LoadedState | None = None
        self.load_error: str | None = None
        self.loading: ModelEntry | None = None
        self._queue: FairQueue[_Job] = FairQueue(max_queue, per_client=max_queue_per_client)
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Condition()
        self._running = 0
        self._dispatching = False
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="mlx-harmony-model", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse what waits, let the running turns finish, stop the threads."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        for job in self._queue.drain():
            job.cancel.set()
            job.fail(APIError(503, "the server is shutting down", code="shutting_down"))
        self._queue.close()
        thread.join(timeout)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        state, self.state = self.state, None
        close = getattr(state.generator, "close", None) if state is not None else None
        if callable(close):
            close()

    @property
    def queued(self) -> int:
        """Jobs submitted and not finished (the running ones included)."""
        return len(self._queue) + self._running + self._dispatching

    @property
    def running(self) -> int:
        """Turns running now."""
        return self._running

    @property
    def waiting(self) -> int:
        """Jobs waiting in the queue."""
        return len(self._queue)

    def count(self, name: str, n: int = 1) -> None:
        """Add to a `WorkerStats` counter (turns run on several threads)."""
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + n)

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, job: _Job) -> None:
        """Queue `job` in its client's line; 503 with Retry-After when the queue is full."""
        if self._thread is None:
            raise APIError(503, "the model worker is not running", code="not_ready")
        try:
            self._queue.put(job, current_client.get(), force=isinstance(job, _LoadJob))
        except QueueFullError as error:
            self.count("rejected")
            raise APIError(
                503,
                f"the server is busy ({error}): {len(self._queue)} requests wait behind the "
                f"{self._running} running (limits: --max-queue {self.max_queue}, "
                f"--max-queue-per-client {self._queue.per_client}, "
                f"--max-concurrency {self.max_concurrency}); retry later",
                code="queue_full",
                headers={"Retry-After": "1"},
            ) from None

    def load(self, entry: ModelEntry, *, timeout: float | None = None) -> None:
        """Load `entry` now (blocking); raises the loading error."""
        job = _LoadJob(entry)
        self.submit(job)
        job.done.wait(timeout)
        if job.error is not None:
            raise job.error

    # -- the threads ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            state = self.state
            if state is not None and _batches(state, self.max_concurrency):
                with self._lock:  # the next job waits in the (fair) queue until a slot frees
                    self._lock.wait_for(
                        lambda: self._running < self.max_concurrency or self._stopping
                    )
            job = self._queue.get()
            if job is None:
                break
            self._dispatching = True
            try:
                self._dispatch(job)
            finally:
                self._dispatching = False
        self._drain_running()

    def _dispatch(self, job: _Job) -> None:
        try:
            state = self._ensure(job.entry)
        except BaseException as error:
            job.fail(error)
            return
        if not getattr(job, "batched", False) or not _batches(state, self.max_concurrency):
            self._run_job(job, state)
            return
        with self._lock:  # `_run` waited for the free slot before taking the job
            self._running += 1
            self.stats.max_running = max(self.stats.max_running, self._running)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="turn")
        self._pool.submit(self._run_turn, job, state)

    def _run_turn(self, job: _Job, state: LoadedState) -> None:
        try:
            self._run_job(job, state)
        finally:
            with self._lock:
                self._running -= 1
                self._lock.notify_all()

    def _run_job(self, job: _Job, state: LoadedState) -> None:
        try:
            job.run(state, self)
        except BaseException as error:  # a job's own bug: never kill the worker
            logger.exception("a job failed")
            job.fail(error)

    def _drain_running(self) -> None:
        with self._lock:
            self._lock.wait_for(lambda: self._running == 0)

    def _ensure(self, entry: ModelEntry) -> LoadedState:
        state = self.state
        if state is not None and state.entry.model == entry.model:
            if state.entry != entry:  # same weights, another profile: keep the model
                state.entry = entry
            return state
        if state is not None:
            self._drain_running()  # the running turns finish on the old model first
            self.state = None
            close = getattr(state.generator, "close", None)
            if callable(close):
                close()
            del state
            _clear_mlx_cache()
        self.loading = entry
        started = time.perf_counter()
        try:
            generator = self.loader(entry)
        except BaseException as error:
            self.load_error = f"{type(error).__name__}: {error}"
            raise APIError(
                503,
                f"model {entry.id!r} could not be loaded: {error}",
                code="model_load_failed",
            ) from error
        finally:
            self.loading = None
        self.load_error = None
        self.count("loads")
        logger.info("loaded %s in %.1f s", entry.model, time.perf_counter() - started)
        self.state = LoadedState(
            entry=entry,
            generator=generator,
            adapter=adapter_for(generator),
            context_length=context_length_of(generator),
            vocab_size=_vocab_size(generator),
            loaded_at=time.time(),
        )
        return self.state


def _batches(state: LoadedState, max_concurrency: int) -> bool:
    """Whether the generator takes several streams at once (a batching generator)."""
    return max_concurrency > 1 and getattr(state.generator, "max_batch_size", 1) > 1


def _vocab_size(generator: object) -> int | None:
    config = getattr(getattr(generator, "loaded", None), "config", None)
    value = config.get("vocab_size") if isinstance(config, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def _clear_mlx_cache() -> None:
    try:
        import mlx.core as mx
    except ImportError:  # pragma: no cover - the server always has MLX
        return
    mx.clear_cache()
