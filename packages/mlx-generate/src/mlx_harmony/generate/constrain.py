"""Structured outputs: a grammar constraint (llguidance) applied as a logits processor.

One `Constraint` per request: a logits processor (``(tokens, logits) -> logits``) that advances
its matcher on each sampled token and sets every token the grammar forbids to -inf. It keeps its
own state, so each row of a batch has its own, and free rows need none. The mask for step t+1
is computed on the CPU while the model's forward pass for t+1 runs: the processor first queues
that pass (``mx.async_eval``), then reads token t, advances, and fills the mask (llguidance
drops the GIL), and only then adds the mask to the logits.

Compiling is cached: `compile_constraint` keeps an LRU of compiled grammars keyed by the
canonical JSON of (mode, schema or grammar) and the tokenizer; each request then takes a fresh
matcher from it (microseconds). The tokenizer's llguidance view is built once per tokenizer
(seconds for a 200k vocabulary). It is lazy here, built on first use, so a program that never
constrains never pays for it; a server starts it at model load with
`prepare_tokenizer_in_background`, and the first constrained request waits only for what is left.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import llguidance
import llguidance.hf
import llguidance.numpy
import mlx.core as mx
import numpy as np

from .constrain_grammars import (
    FunctionSpec,
    harmony_json_grammar,
    harmony_tool_grammar,
    json_grammar,
)

__all__ = [
    "CompiledConstraint",
    "Constraint",
    "ConstraintError",
    "ConstraintSpec",
    "ConstraintTimeoutError",
    "FunctionSpec",
    "apply_mask",
    "clear_constraint_cache",
    "compile_constraint",
    "harmony_json_grammar",
    "harmony_tool_grammar",
    "json_grammar",
    "make_constraint",
    "prepare_tokenizer",
    "prepare_tokenizer_in_background",
    "tokenizer_view_state",
]

ConstraintMode = Literal["json_schema", "json_object", "tool_call", "grammar"]

DEFAULT_COMPILE_TIMEOUT_S = 10.0
"""A grammar that takes longer to compile is refused (`ConstraintTimeoutError`)."""

_CACHE_SIZE = 64
_HARMONY_STOPS = ("<|return|>", "<|call|>")


class ConstraintError(ValueError):
    """A schema or grammar the engine cannot handle; the message names the keyword or rule.
    A server answers it with 400, a CLI exits 2."""


class ConstraintTimeoutError(ConstraintError):
    """Compiling the grammar took longer than the timeout."""


@dataclass(frozen=True)
class ConstraintSpec:
    """What a request's output must match.

    - ``json_schema``: JSON matching `schema`; ``json_object``: any JSON object.
    - ``tool_call``: a call to one of `functions` (Harmony only). ``required=True`` forces a
      call (``tool_choice: "required"``, or a named function: pass only that one);
      ``required=False`` lets the model answer instead, constraining strict functions' arguments.
    - ``grammar``: `grammar` is a Lark grammar in llguidance's dialect, used as is.

    `harmony` wraps JSON in Harmony (free analysis, then the final message or the call); for other
    models `reasoning` is the optional thinking section before the JSON (None: JSON only).
    """

    mode: ConstraintMode
    schema: Mapping[str, Any] | None = None
    functions: tuple[FunctionSpec, ...] = ()
    required: bool = True
    grammar: str | None = None
    harmony: bool = True
    reasoning: tuple[str, str] | None = ("<think>", "</think>")

    def __post_init__(self) -> None:
        if self.mode == "json_schema" and not isinstance(self.schema, Mapping):
            raise ConstraintError("mode 'json_schema' needs a schema (a JSON object)")
        if self.mode == "grammar" and not self.grammar:
            raise ConstraintError("mode 'grammar' needs a Lark grammar text")
        if self.mode == "tool_call":
            if not self.harmony:
                raise ConstraintError(
                    "tool_call constraints are for Harmony models; for other models constrain "
                    "the JSON with mode 'json_schema'"
                )
            if not self.functions:
                raise ConstraintError("mode 'tool_call' needs at least one function")
        if self.mode not in ("json_schema", "json_object", "tool_call", "grammar"):
            raise ConstraintError(
                f"mode must be json_schema, json_object, tool_call or grammar, got {self.mode!r}"
            )

    def cache_key(self) -> str:
        """The canonical JSON of everything that changes the grammar."""
        return json.dumps(
            {
                "mode": self.mode,
                "schema": self.schema,
                "functions": [[f.name, f.parameters, f.strict] for f in self.functions],
                "required": self.required,
                "grammar": self.grammar,
                "harmony": self.harmony,
                "reasoning": self.reasoning,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    def lark(self) -> str:
        """The Lark grammar for this spec."""
        if self.mode == "grammar":
            assert self.grammar is not None
            return self.grammar
        if self.mode == "tool_call":
            return harmony_tool_grammar(self.functions, required=self.required)
        schema = self.schema if self.mode == "json_schema" else None
        if self.harmony:
            return harmony_json_grammar(schema)
        return json_grammar(schema, reasoning=self.reasoning)


# -- the tokenizer's llguidance view, once per tokenizer -----------------------------------------

ViewState = Literal["absent", "building", "ready"]

# One future per vocabulary (the tokenizer's content, the stop tokens): whoever asks first builds
# the view, later askers wait on the same future (a request that comes while the background
# build runs waits only for the rest). Keyed by content, not by object, so a model loaded again,
# or another model with the same tokenizer (gpt-oss-20b and -120b), reuses the view.
_ViewFuture = concurrent.futures.Future[llguidance.LLTokenizer]
_ViewKey = tuple[str, bool, tuple[int, ...] | None]
_MAX_VIEWS = 4
_views: OrderedDict[_ViewKey, _ViewFuture] = OrderedDict()
_digests: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_views_lock = threading.Lock()


def _hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face fast tokenizer under mlx-lm's TokenizerWrapper (or the one given)."""
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    return tokenizer._tokenizer if isinstance(tokenizer, TokenizerWrapper) else tokenizer


def _stop_ids(tokenizer: Any, harmony: bool) -> list[int]:
    """The ids that end a completion: Harmony's ``<|return|>`` and ``<|call|>``, else EOS."""
    if harmony:
        hf = _hf_tokenizer(tokenizer)
        ids = [hf.convert_tokens_to_ids(name) for name in _HARMONY_STOPS]
        if any(i is None or i == hf.unk_token_id for i in ids):
            raise ConstraintError(
                f"the tokenizer has no {' / '.join(_HARMONY_STOPS)} tokens: it is not a Harmony "
                "tokenizer; pass harmony=False"
            )
        return sorted(ids)
    ids = getattr(tokenizer, "eos_token_ids", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        raise ConstraintError("the tokenizer has no EOS token to end a constrained output")
    return sorted({int(i) for i in ([ids] if isinstance(ids, int) else ids)})


def _make_view(tokenizer: Any, harmony: bool) -> llguidance.LLTokenizer:
    try:
        return llguidance.hf.from_tokenizer(
            _hf_tokenizer(tokenizer), eos_token=_stop_ids(tokenizer, harmony)
        )
    except ConstraintError:
        raise
    except Exception as error:  # the library's errors are plain exceptions
        raise ConstraintError(
            f"structured outputs need a Hugging Face fast tokenizer (tokenizer.json); "
            f"{type(tokenizer).__name__} cannot be used: {error}"
        ) from error


def _digest(tokenizer: Any) -> str:
    """A digest of the tokenizer's content (its tokenizer.json), computed once per object."""
    with _views_lock:
        known = _digests.get(tokenizer)
    if known is not None:
        return known
    try:
        text = _hf_tokenizer(tokenizer).backend_tokenizer.to_str()
    except Exception:  # not a fast tokenizer: building its view says so
        text = f"object {id(tokenizer)}"
    digest = hashlib.sha256(text.encode()).hexdigest()
    with _views_lock:
        _digests[tokenizer] = digest
    return digest


def _view_key(tokenizer: Any, harmony: bool) -> _ViewKey:
    try:
        stops: tuple[int, ...] | None = tuple(_stop_ids(tokenizer, harmony))
    except ConstraintError:
        stops = None  # the build raises it again, into the future
    return _digest(tokenizer), harmony, stops


def _view_future(tokenizer: Any, harmony: bool) -> tuple[_ViewFuture, bool]:
    """The view's future and whether the caller must build it (it is the first to ask). A
    failed build is forgotten, so the next caller tries again and gets the error itself."""
    key = _view_key(tokenizer, harmony)
    with _views_lock:
        future = _views.get(key)
        if future is not None and not (future.done() and future.exception() is not None):
            _views.move_to_end(key)
            return future, False
        future = concurrent.futures.Future()
        _views[key] = future
        while len(_views) > _MAX_VIEWS:
            _views.popitem(last=False)
        return future, True


def _build_view(tokenizer: Any, harmony: bool, future: _ViewFuture) -> None:
    future.set_running_or_notify_cancel()
    try:
        future.set_result(_make_view(tokenizer, harmony))
    except BaseException as error:  # kept for whoever waits on the future
        future.set_exception(error)


def prepare_tokenizer(tokenizer: Any, *, harmony: bool = True) -> llguidance.LLTokenizer:
    """The llguidance view of `tokenizer` (mlx-lm's wrapper or a Hugging Face fast tokenizer),
    built once per vocabulary (seconds for a 200k one) and shared by every tokenizer with the
    same content and stop tokens; the last few vocabularies' views are kept. Raises
    `ConstraintError` for a tokenizer that cannot be used. If `prepare_tokenizer_in_background`
    started the build, this waits only for what is left of it."""
    future, mine = _view_future(tokenizer, harmony)
    if mine:
        _build_view(tokenizer, harmony, future)
    return future.result()


def prepare_tokenizer_in_background(tokenizer: Any, *, harmony: bool = True) -> _ViewFuture:
    """Start building the llguidance view on a daemon thread and return its future, so that the
    first constrained request does not pay for it (a server calls this when it loads a model).

    Nothing calls it by default: a program that never constrains never pays the seconds and
    memory the view costs. The build holds the GIL most of the time (llguidance and tokenizers
    do not release it), so other Python threads run slower until it ends. A build error stays in
    the future; the first constrained request raises it again as a `ConstraintError`."""
    future, mine = _view_future(tokenizer, harmony)
    if mine:
        threading.Thread(
            target=_build_view,
            args=(tokenizer, harmony, future),
            name="llguidance-tokenizer",
            daemon=True,
        ).start()
    return future


def tokenizer_view_state(tokenizer: Any, *, harmony: bool = True) -> ViewState:
    """Whether `tokenizer`'s llguidance view is ``absent`` (never asked for, or its build
    failed), ``building`` or ``ready``."""
    key = _view_key(tokenizer, harmony)
    with _views_lock:
        future = _views.get(key)
    if future is None:
        return "absent"
    if not future.done():
        return "building"
    return "ready" if future.exception() is None else "absent"


# -- compiling, cached ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledConstraint:
    """A validated grammar for one tokenizer; `new()` gives a request its own `Constraint`."""

    spec: ConstraintSpec
    tokenizer: llguidance.LLTokenizer
    grammar: str
    warnings: tuple[str, ...] = ()
    compile_s: float = 0.0
    _template: llguidance.LLMatcher | None = field(default=None, repr=False, compare=False)

    def new(self, *, prefix: Sequence[int] = ()) -> Constraint:
        """A fresh matcher state for one request. `prefix`: tokens at the end of the prompt
        that the grammar consumes first (a prompt that already opens the answer, such as
        ``<|channel|>final<|message|>``); a prefix the grammar refuses is a `ConstraintError`."""
        assert self._template is not None
        matcher = self._template.deep_copy()
        for i, token in enumerate(prefix):
            if not matcher.consume_token(int(token)):
                raise ConstraintError(
                    f"the grammar refuses prefix token {int(token)} at position {i}: "
                    f"{matcher.get_error()}"
                )
        return Constraint(matcher, self.tokenizer.vocab_size)


class _LRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[tuple[int, str], CompiledConstraint] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[int, str]) -> CompiledConstraint | None:
        with self.lock:
            found = self.items.get(key)
            if found is not None:
                self.items.move_to_end(key)
            return found

    def put(self, key: tuple[int, str], value: CompiledConstraint) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_cache = _LRU(_CACHE_SIZE)
_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="constrain")


def clear_constraint_cache(*, tokenizer_views: bool = False) -> None:
    """Forget every compiled grammar, and with `tokenizer_views` the tokenizers' llguidance
    views too (a benchmark measuring first use)."""
    with _cache.lock:
        _cache.items.clear()
    if tokenizer_views:
        with _views_lock:
            _views.clear()
            _digests.clear()


def _compile(
    spec: ConstraintSpec, tokenizer: llguidance.LLTokenizer
) -> tuple[str, llguidance.LLMatcher, tuple[str, ...]]:
    try:
        lark = spec.lark()
    except ValueError as error:
        raise ConstraintError(str(error)) from error
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        what = "grammar" if spec.mode == "grammar" else "JSON schema"
        raise ConstraintError(f"the {what} cannot be used for structured output: {messages[0]}")
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise ConstraintError(f"the grammar cannot be compiled: {matcher.get_error()}")
    # The first mask builds the lexer's start state: pay it here, once, not per request.
    mask = llguidance.numpy.allocate_token_bitmask(1, tokenizer.vocab_size)
    llguidance.numpy.fill_next_token_bitmask(matcher, mask, 0)
    if matcher.is_error():
        raise ConstraintError(f"the grammar cannot be compiled: {matcher.get_error()}")
    return grammar, matcher, tuple(messages)


def compile_constraint(
    spec: ConstraintSpec,
    tokenizer: Any,
    *,
    timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
) -> CompiledConstraint:
    """Validate and compile `spec` for `tokenizer`, or return the cached compile.

    Raises `ConstraintError` naming the unsupported keyword or rule, and
    `ConstraintTimeoutError` when compiling takes more than `timeout_s` seconds.
    """
    import time

    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    llg = prepare_tokenizer(tokenizer, harmony=spec.harmony)
    key = (id(llg), spec.cache_key())
    cached = _cache.get(key)
    if cached is not None:
        return cached
    start = time.perf_counter()
    future = _pool.submit(_compile, spec, llg)
    try:
        grammar, matcher, warnings = future.result(timeout=timeout_s)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise ConstraintTimeoutError(
            f"compiling the {spec.mode} constraint took more than {timeout_s:g} s; simplify the "
            "schema (fewer alternatives, shorter patterns, smaller bounds) or raise the timeout"
        ) from None
    compiled = CompiledConstraint(
        spec, llg, grammar, warnings, time.perf_counter() - start, _template=matcher
    )
    _cache.put(key, compiled)
    return compiled


def make_constraint(
    tokenizer: Any,
    *,
    json_schema: Mapping[str, Any] | None = None,
    json_object: bool = False,
    grammar: str | None = None,
    harmony: bool = True,
    timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
) -> Constraint:
    """A fresh per-request constraint: pass exactly one of `json_schema`, `json_object=True`
    or a Lark `grammar`. For tool calls build a `ConstraintSpec(mode="tool_call", ...)`."""
    given = [json_schema is not None, json_object, grammar is not None]
    if sum(given) != 1:
        raise ValueError("pass exactly one of json_schema, json_object=True or grammar")
    if json_schema is not None:
        spec = ConstraintSpec("json_schema", schema=json_schema, harmony=harmony)
    elif json_object:
        spec = ConstraintSpec("json_object", harmony=harmony)
    else:
        spec = ConstraintSpec("grammar", grammar=grammar, harmony=harmony)
    return compile_constraint(spec, tokenizer, timeout_s=timeout_s).new()


# -- the per-request logits processor ------------------------------------------------------------

_BITS = mx.arange(32, dtype=mx.uint32)
# Evaluated now: a lazy array belongs to the importing thread's stream, and the masks are
# applied on the generation thread (MLX's thread-local streams).
mx.eval(_BITS)


class Constraint:
    """One request's grammar state, used as a logits processor.

    The first call (the prompt's last position) records where the generated tokens start;
    every later call consumes the tokens sampled since, then masks. A token the matcher refuses
    (only possible if something after this processor changed the logits) raises RuntimeError.
    Once the grammar has consumed its end token the processor passes the logits through.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._mask = llguidance.numpy.allocate_token_bitmask(1, vocab_size)
        self._start: int | None = None
        self._consumed = 0

    @property
    def is_accepting(self) -> bool:
        """The output so far is complete for the grammar (e.g. the JSON closed)."""
        return self._matcher.is_accepting()

    @property
    def is_finished(self) -> bool:
        """The grammar allows nothing more (its stop token was consumed)."""
        return self._matcher.is_stopped()

    @property
    def consumed(self) -> int:
        """Generated tokens consumed so far."""
        return self._consumed

    def advance(self, tokens: Sequence[int]) -> None:
        """Consume generated tokens (the processor does this itself from the history). Tokens
        after the grammar finished (a caller whose stop tokens leave out the grammar's end) are
        counted and let through: the constraint is over, not violated."""
        for token in tokens:
            if self._matcher.is_stopped():
                self._consumed += 1
                continue
            if not self._matcher.consume_token(int(token)):
                raise RuntimeError(
                    f"the constraint refused token {int(token)} after {self._consumed} "
                    f"tokens: {self._matcher.get_error()}"
                )
            self._consumed += 1

    def allowed_mask(self) -> np.ndarray:
        """The next token's allowed set as llguidance's bitmask, shape (1, ceil(vocab/32))."""
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._mask, 0)
        return self._mask

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._start is None:
            self._start = tokens.size
        else:
            # Two submissions, the history first: the token sampled last step is then ready as
            # soon as its sampling is done, while the forward pass submitted second runs on
            # and the CPU advances the grammar and fills the mask beside it. Reading the
            # history through a new lazy op (a slice) would queue it behind the forward pass
            # and leave the device idle while the mask is computed.
            mx.async_eval(tokens)
            mx.async_eval(logits)
            history = np.asarray(tokens)  # waits for the history's submission only
            self.advance(cast(list[int], history[self._start + self._consumed :].tolist()))
            if self._matcher.is_stopped():
                return logits  # the grammar is complete: what follows is free
        return apply_mask(logits, self.allowed_mask(), self._vocab_size)


def apply_mask(logits: mx.array, bitmask: np.ndarray, vocab_size: int) -> mx.array:
    """-inf on every token whose bit is clear, and on ids past the tokenizer's vocabulary."""
    words = mx.array(bitmask.reshape(-1).view(np.uint32))
    allowed = ((words[:, None] >> _BITS) & 1).reshape(-1).astype(mx.bool_)
    n = logits.shape[-1]
    if n <= allowed.size:
        allowed = allowed[:n]
    else:
        allowed = mx.concatenate([allowed, mx.zeros((n - allowed.size,), dtype=mx.bool_)])
    if vocab_size < allowed.size:
        allowed = allowed & (mx.arange(allowed.size) < vocab_size)
    return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))
