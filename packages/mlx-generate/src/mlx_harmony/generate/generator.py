"""`TokenGenerator`: one loaded model, its prompt cache and its seed, for a chat session.

`GeneratorOptions` holds what a generator is set up with once (seed policy, memory, cache
clearing, loop detection); both `TokenGenerator` and `BatchTokenGenerator` take it, and the
chat controller builds it from a prompt config in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_reduce

from .cache import PromptCache
from .detokenizer import token_bytes_table
from .loading import LoadedModel, load_model
from .loop import Cancel, LogitsProcessor, Sampler, StreamEvent, stream_generate
from .loop_detection import LoopDetectionMode, LoopDetector, make_loop_detector
from .prefill import harmony_message_boundaries
from .speculative import DEFAULT_NUM_DRAFT_TOKENS, DraftModel, speculation_options
from .stats import GenerationStats

if TYPE_CHECKING:
    from mlx_harmony.sampling import SamplingParams

    from .constrain import CompiledConstraint, ConstraintSpec

__all__ = [
    "HARMONY_END_TOKEN",
    "HARMONY_STOP_TOKENS",
    "GeneratorOptions",
    "ModelFacts",
    "TokenGenerator",
    "load_for_options",
    "set_chat_template",
    "token_view",
]

logger = logging.getLogger("mlx_harmony.generate")

HARMONY_STOP_TOKENS = frozenset({200002, 200012})
"""<|return|> and <|call|>: where a Harmony assistant turn ends."""
HARMONY_END_TOKEN = 200007
"""<|end|> ends a message inside the turn (the analysis); it must not stop generation."""

_warned_mlock = False


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratorOptions:
    """What a generator is set up with once, for every call it runs.

    ``clear_cache_interval`` and ``clear_cache_tokens`` free MLX's buffer cache
    (`mx.clear_cache`): the first after every N-th generation (one `stream`/`generate` call, a
    chat turn with tool calls or retries makes several), the second every N tokens inside a
    generation (mlx-lm clears every 256); 0 turns either off. ``log_memory_stats`` logs MLX's
    active, cache and peak memory (logger ``mlx_harmony.generate``, INFO) after each
    generation. ``max_kv_size`` (a rotating KV cache) works with `TokenGenerator` only.

    The model and cache set-up (fixed when the model loads): ``kv_bits`` / ``kv_group_size``
    / ``quantized_kv_start`` quantize the full-attention layers' KV cache (mlx-lm's
    ``--kv-bits``; `TokenGenerator` only, the batch engine refuses them), ``adapter_path`` is an
    mlx-lm adapter folder applied at load, ``chat_template`` replaces the tokenizer's chat
    template (Jinja text; non-Harmony models), and ``prompt_cache_file`` is a saved prompt
    cache (`write_prompt_cache`) the generator starts from; ``prompt_cache_dir`` persists the
    batch generator's shared cache.
    """

    max_kv_size: int | None = None
    loop_detection: LoopDetector | LoopDetectionMode | str = LoopDetectionMode.CHEAP
    reseed_each_turn: bool = False
    """With a seed: start every generation from it instead of continuing one key chain."""
    mlock: bool = False
    """Wire the weights in memory (Metal only; elsewhere a warning says it does nothing)."""
    clear_cache_interval: int = 0
    clear_cache_tokens: int = 0
    log_memory_stats: bool = False
    kv_bits: int | None = None
    kv_group_size: int = 64
    quantized_kv_start: int = 0
    adapter_path: str | Path | None = None
    chat_template: str | None = None
    prompt_cache_file: str | Path | None = None
    prompt_cache_dir: str | Path | None = None
    """`BatchTokenGenerator` only: its shared prompt cache is loaded from this folder at start
    (files for another model are skipped with a log line) and saved there when it closes."""
    draft_model: str | Path | None = None
    """`TokenGenerator` only: a draft model (folder or Hugging Face repo id with the target's
    tokenizer) for speculative decoding, loaded with the target."""
    num_draft_tokens: int = DEFAULT_NUM_DRAFT_TOKENS
    """Speculative decoding: guesses the target verifies per pass."""
    prompt_lookup: int | None = None
    """`TokenGenerator` only: speculate with prompt lookup, drafting from this n-gram length."""

    LOAD_TIME: ClassVar[tuple[str, ...]] = (
        "mlock",
        "max_kv_size",
        "kv_bits",
        "kv_group_size",
        "quantized_kv_start",
        "adapter_path",
        "chat_template",
        "prompt_cache_file",
        "prompt_cache_dir",
        "draft_model",
        "num_draft_tokens",
        "prompt_lookup",
    )
    """The options fixed when the model loads (`TokenGenerator.retune` cannot change them)."""

    def __post_init__(self) -> None:
        if self.max_kv_size is not None and self.max_kv_size < 1:
            raise ValueError(f"max_kv_size must be >= 1 or None, got {self.max_kv_size}")
        if self.kv_bits is not None and self.kv_bits not in (4, 8):
            raise ValueError(f"kv_bits must be 4, 8 or None, got {self.kv_bits}")
        if self.kv_group_size not in (32, 64, 128):
            raise ValueError(f"kv_group_size must be 32, 64 or 128, got {self.kv_group_size}")
        if self.quantized_kv_start < 0:
            raise ValueError(f"quantized_kv_start must be >= 0, got {self.quantized_kv_start}")
        if self.kv_bits is not None and self.max_kv_size is not None:
            raise ValueError(
                "kv_bits and max_kv_size cannot be combined (mlx-lm's rotating cache cannot be "
                "quantized); leave one of them unset"
            )
        for name in ("clear_cache_interval", "clear_cache_tokens"):
            value = getattr(self, name)
            if value < 0:
                raise ValueError(f"{name} must be >= 0 (0: never), got {value}")
        self.loop_detector()  # a clear error for an unknown mode, now
        if self.draft_model is not None and self.prompt_lookup is not None:
            raise ValueError("draft_model and prompt_lookup cannot be combined; set one of them")
        for name in ("num_draft_tokens", "prompt_lookup"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    @property
    def speculates(self) -> bool:
        """Whether these options decode speculatively (a draft model or prompt lookup)."""
        return self.draft_model is not None or self.prompt_lookup is not None

    def loop_detector(self) -> LoopDetector:
        if isinstance(self.loop_detection, LoopDetector):
            return self.loop_detection
        return make_loop_detector(self.loop_detection)


def _clear_buffer_cache() -> None:
    """Free MLX's buffer cache because an option asked for it (one place, so tests count it)."""
    mx.clear_cache()


class _Housekeeping:
    """The options' work between and inside generations: cache clearing, memory logs."""

    def __init__(self, options: GeneratorOptions) -> None:
        self.options = options
        self.generations = 0
        self.cleared_at_tokens = 0

    def after_tokens(self, generated: int) -> None:
        """`generated` tokens so far (a running count); clears every clear_cache_tokens."""
        every = self.options.clear_cache_tokens
        if every and generated - self.cleared_at_tokens >= every:
            self.cleared_at_tokens = generated - generated % every
            _clear_buffer_cache()

    def after_generation(self) -> None:
        self.generations += 1
        interval = self.options.clear_cache_interval
        if interval and self.generations % interval == 0:
            _clear_buffer_cache()
        if self.options.log_memory_stats:
            logger.info(
                "memory after generation %d: active %.1f MB, cache %.1f MB, peak %.1f MB",
                self.generations,
                mx.get_active_memory() / 2**20,
                mx.get_cache_memory() / 2**20,
                mx.get_peak_memory() / 2**20,
            )


def _wire_memory(model: nn.Module) -> int | None:
    """Raise Metal's wired limit to keep `model` resident; the old limit, or None when
    nothing was changed (not Metal)."""
    global _warned_mlock
    if not mx.metal.is_available():
        if not _warned_mlock:
            _warned_mlock = True
            warnings.warn(
                f"mlock has no effect on this backend ({mx.default_device()}): MLX wires "
                "memory only on Metal",
                RuntimeWarning,
                stacklevel=4,
            )
        return None
    # A byte count (device_info's values are typed as str or int).
    limit = cast("int | None", mx.device_info().get("max_recommended_working_set_size"))
    if limit is None:
        return None
    size = _model_bytes(model)
    if size > 0.9 * limit:
        warnings.warn(
            f"the model needs {size // 2**20} MB, close to the {limit // 2**20} MB Metal can "
            "wire; generation may be slow",
            RuntimeWarning,
            stacklevel=4,
        )
    return int(mx.set_wired_limit(limit))


def _unwire_memory(old_limit: int | None) -> None:
    if old_limit is not None:
        mx.synchronize()
        mx.set_wired_limit(old_limit)


def _harmony_stop_tokens() -> frozenset[int]:
    try:
        from mlx_harmony.harmony_format import STOP_TOKENS
    except ImportError:
        return HARMONY_STOP_TOKENS
    return frozenset(int(t) for t in STOP_TOKENS)


def _model_bytes(model: nn.Module) -> int:
    return cast(
        "int",
        tree_reduce(
            lambda acc, x: acc + x.nbytes if isinstance(x, mx.array) else acc,
            model.parameters(),
            0,
        ),
    )


def token_view(events: Generator[StreamEvent, None, None]) -> Generator[int, None, None]:
    """The token ids of a stream of events; closing the view closes the stream."""
    try:
        for event in events:
            if event.token is not None:
                yield event.token
    finally:
        events.close()


class ModelFacts:
    """What a generator says about its model; `loaded` is the `LoadedModel`."""

    loaded: LoadedModel

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def is_harmony(self) -> bool:
        return self.loaded.is_harmony

    @property
    def model_type(self) -> str:
        return self.loaded.model_type

    @property
    def default_stop_tokens(self) -> frozenset[int]:
        """Harmony: <|return|> and <|call|> (plus the tokenizer's EOS ids, never <|end|>);
        other models: the tokenizer's EOS ids."""
        eos = self.loaded.eos_token_ids
        if self.is_harmony:
            return (_harmony_stop_tokens() | eos) - {HARMONY_END_TOKEN}
        return eos

    def apply_chat_template(self, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
        """Prompt tokens from the tokenizer's chat template (non-Harmony models)."""
        return self.loaded.apply_chat_template(messages, **kwargs)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(list(tokens))

    def generate(
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
    ) -> Iterator[int]:
        """Yield generated token ids (a stop token included)."""
        tokens = token_view(
            self.stream(
                prompt_tokens=prompt_tokens,
                sampling=sampling,
                max_tokens=max_tokens,
                stop_tokens=stop_tokens,
                stop_strings=stop_strings,
                cancel=cancel,
                logits_processors=logits_processors,
                constraint=constraint,
                loop_detection=loop_detection,
                detokenize=False,
            )
        )
        self._opened(tokens)
        return tokens

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
        raise NotImplementedError

    def _opened(self, tokens: Generator[int, None, None]) -> None:
        """A token view was handed out (one-at-a-time generators track it)."""

    def compile_constraint(self, constraint: ConstraintSpec) -> CompiledConstraint:
        """`constraint` compiled for this model's tokenizer (cached per spec), with its
        ``harmony`` set to match the model. Raises `ConstraintError` naming the keyword or rule
        the engine cannot handle, `ConstraintTimeoutError` when compiling takes too long. The
        first call per model also builds the tokenizer's grammar view (seconds for a 200k
        vocabulary)."""
        from .constrain import compile_constraint

        if constraint.harmony != self.is_harmony:
            constraint = dataclasses.replace(constraint, harmony=self.is_harmony)
        return compile_constraint(constraint, self.tokenizer)

    def _with_constraint(
        self,
        logits_processors: Sequence[LogitsProcessor] | None,
        constraint: ConstraintSpec | None,
    ) -> Sequence[LogitsProcessor] | None:
        """The call's processors with the constraint's last (it masks what the others left)."""
        if constraint is None:
            return logits_processors
        return [*(logits_processors or ()), self.compile_constraint(constraint).new()]

    @staticmethod
    def _prompt_ids(prompt_tokens: Sequence[int]) -> list[int]:
        if isinstance(prompt_tokens, str):
            raise TypeError(
                "prompt_tokens must be token ids; encode text with generator.encode(...) or "
                "apply_chat_template(...)"
            )
        return list(prompt_tokens)

    def _stop_token_set(self, stop_tokens: Iterable[int] | None) -> frozenset[int]:
        if stop_tokens is None:
            return self.default_stop_tokens
        return frozenset(int(t) for t in stop_tokens)


def load_for_options(
    model: str | Path | LoadedModel,
    options: GeneratorOptions,
    *,
    lazy: bool = False,
    revision: str | None = None,
) -> LoadedModel:
    """`model` loaded with the options' adapter and chat template (a `LoadedModel` given
    as is must already carry the same adapter)."""
    if isinstance(model, LoadedModel):
        loaded = model
        wanted = None if options.adapter_path is None else Path(options.adapter_path).resolve()
        have = None if loaded.adapter_path is None else Path(loaded.adapter_path).resolve()
        if wanted != have:
            raise ValueError(
                f"adapter_path={options.adapter_path!r} but the model was loaded with "
                f"{loaded.adapter_path!r}; load it with load_model(adapter_path=...) or pass "
                "the model's path instead"
            )
    else:
        loaded = load_model(model, lazy=lazy, revision=revision, adapter_path=options.adapter_path)
    if options.chat_template is not None:
        set_chat_template(loaded, options.chat_template)
    return loaded


def set_chat_template(loaded: LoadedModel, template: str) -> None:
    """Replace the tokenizer's chat template with `template` (Jinja text), as mlx-lm's
    ``--chat-template`` does; gpt-oss prompts come from Harmony, so it is refused there."""
    if loaded.is_harmony:
        raise ValueError(
            "chat_template applies to models with a tokenizer chat template; gpt-oss prompts "
            "are rendered by Harmony (leave chat_template unset)"
        )
    if not template.strip():
        raise ValueError("chat_template is empty; pass the Jinja text of a chat template")
    loaded.tokenizer.chat_template = template  # forwarded to the Hugging Face tokenizer
    loaded.tokenizer.has_chat_template = True


def _initial_prompt_cache(loaded: LoadedModel, options: GeneratorOptions) -> PromptCache:
    """The generator's prompt cache: empty, or read from ``options.prompt_cache_file``."""
    cache_options: dict[str, Any] = {
        "max_kv_size": options.max_kv_size,
        "kv_bits": options.kv_bits,
        "kv_group_size": options.kv_group_size,
        "quantized_kv_start": options.quantized_kv_start,
    }
    if options.prompt_cache_file is None:
        return PromptCache(loaded.model, **cache_options)
    from .prompt_cache_file import read_prompt_cache

    return read_prompt_cache(options.prompt_cache_file, loaded, **cache_options)


_SHORTHAND_DEFAULTS: dict[str, object] = {
    "max_kv_size": None,
    "kv_bits": None,
    "kv_group_size": 64,
    "quantized_kv_start": 0,
    "loop_detection": LoopDetectionMode.CHEAP,
    "reseed_each_turn": False,
    "mlock": False,
    "clear_cache_interval": 0,
}


class TokenGenerator(ModelFacts):
    """Generate from a model with prompt-cache reuse across calls.

    Construct with a model folder, a Hugging Face repo id or a `LoadedModel`; then call
    `generate(prompt_tokens=...)` for token ids or `stream(prompt_tokens=...)` for tokens, text
    deltas and, on the last event, the stop reason and stats. One call at a time: starting a
    call closes a previous stream that was left open.

    Seeds: a call whose ``sampling.seed`` is set draws like mlx-lm after
    ``mx.random.seed(seed)`` on the first call with that seed; later calls continue one key
    chain (a session is reproducible as a whole) unless ``reseed_each_turn=True``, which starts
    every call from the seed (the same prompt then gives the same answer every turn).

    Set-up values come as one `GeneratorOptions` (``options=``); the keyword arguments
    ``max_kv_size``, ``kv_bits``, ``kv_group_size``, ``quantized_kv_start``,
    ``loop_detection``, ``reseed_each_turn``, ``mlock`` and ``clear_cache`` (after every call)
    are a shorthand for it and may not be mixed with ``options``.

    ``draft_model`` (loaded once; its prompt cache follows the conversation) or
    ``prompt_lookup`` (an n-gram length) decodes speculatively, up to ``num_draft_tokens``
    guesses per target pass (see `mlx_harmony.generate.speculative`).
    """

    def __init__(
        self,
        model: str | Path | LoadedModel,
        options: GeneratorOptions | None = None,
        *,
        lazy: bool = False,
        revision: str | None = None,
        prefill_step_size: int = 2048,
        max_kv_size: int | None = None,
        kv_bits: int | None = None,
        kv_group_size: int = 64,
        quantized_kv_start: int = 0,
        prompt_cache: bool = True,
        loop_detection: LoopDetector | LoopDetectionMode | str = LoopDetectionMode.CHEAP,
        reseed_each_turn: bool = False,
        mlock: bool = False,
        clear_cache: bool = False,
        draft_model: DraftModel | LoadedModel | str | Path | None = None,
        num_draft_tokens: int = DEFAULT_NUM_DRAFT_TOKENS,
        prompt_lookup: int | None = None,
    ) -> None:
        shorthand = {
            "max_kv_size": max_kv_size,
            "kv_bits": kv_bits,
            "kv_group_size": kv_group_size,
            "quantized_kv_start": quantized_kv_start,
            "loop_detection": loop_detection,
            "reseed_each_turn": reseed_each_turn,
            "mlock": mlock,
            "clear_cache_interval": 1 if clear_cache else 0,
        }
        if options is None:
            options = GeneratorOptions(**shorthand)  # type: ignore[arg-type]
        else:
            mixed = [k for k, v in shorthand.items() if v != _SHORTHAND_DEFAULTS[k]]
            if mixed:
                raise TypeError(
                    f"pass {', '.join(mixed)} inside GeneratorOptions, not beside options="
                )
        if options.prompt_cache_dir is not None:
            raise ValueError(
                "prompt_cache_dir persists the batch generator's shared cache; TokenGenerator "
                "takes prompt_cache_file (one saved prompt) instead"
            )
        self.options = options
        self.loaded = load_for_options(model, options, lazy=lazy, revision=revision)
        if prefill_step_size < 1:
            raise ValueError(f"prefill_step_size must be positive, got {prefill_step_size}")
        self.prefill_step_size = prefill_step_size
        self.reuse_prompt_cache = prompt_cache
        self.loop_detector = options.loop_detector()
        self.reseed_each_turn = options.reseed_each_turn
        self._housekeeping = _Housekeeping(options)
        self.prompt_cache = _initial_prompt_cache(self.loaded, options)
        # Text deltas need the token-bytes table: build it with the model, not on first token.
        token_bytes_table(self.tokenizer)
        self.last_stats: GenerationStats | None = None
        self._seed: int | None = None
        self._chain: mx.array | None = None
        self._active: weakref.ref[Generator[object, None, None]] | None = None
        self._old_wired_limit = _wire_memory(self.model) if options.mlock else None
        # Speculative decoding (speculative.py): checked, and the draft loaded, once.
        if options.speculates or options.num_draft_tokens != DEFAULT_NUM_DRAFT_TOKENS:
            if (
                draft_model is not None
                or prompt_lookup is not None
                or num_draft_tokens != DEFAULT_NUM_DRAFT_TOKENS
            ):
                raise TypeError(
                    "pass draft_model / num_draft_tokens / prompt_lookup inside "
                    "GeneratorOptions or as keywords, not both"
                )
            draft_model = options.draft_model
            num_draft_tokens = options.num_draft_tokens
            prompt_lookup = options.prompt_lookup
        self._speculation = speculation_options(
            draft_model=draft_model, num_draft_tokens=num_draft_tokens, prompt_lookup=prompt_lookup
        )

    def retune(self, options: GeneratorOptions) -> None:
        """Take the per-call values of `options` (loop detection, seeds, cache clearing,
        memory logs) for the next calls, e.g. after a chat's ``\\set``. The options in
        `GeneratorOptions.LOAD_TIME` (``mlock``, ``max_kv_size``, the KV quantization, the
        adapter, ...) are fixed when the model loads: a change there raises ValueError."""
        for name in GeneratorOptions.LOAD_TIME:
            if getattr(options, name) != getattr(self.options, name):
                raise ValueError(
                    f"{name} is set when the model loads ({getattr(self.options, name)!r}); "
                    f"start again with {name}={getattr(options, name)!r} to change it"
                )
        if options == self.options:
            return
        self.options = options
        self.loop_detector = options.loop_detector()
        self.reseed_each_turn = options.reseed_each_turn
        self._housekeeping.options = options

    @property
    def speculates(self) -> bool:
        """Whether this generator decodes speculatively (it then refuses constraints)."""
        return bool(self._speculation)

    @property
    def clear_cache(self) -> bool:
        """Whether MLX's buffer cache is freed after every call."""
        return self.options.clear_cache_interval == 1

    def close(self) -> None:
        """Close an open stream and give wired memory back."""
        self._close_active()
        old, self._old_wired_limit = self._old_wired_limit, None
        _unwire_memory(old)

    def __enter__(self) -> TokenGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cache ------------------------------------------------------------------------------

    def reset_cache(self) -> None:
        """Forget the cached conversation."""
        self._close_active()
        self.prompt_cache.reset()

    def _close_active(self) -> None:
        active, self._active = self._active, None
        stream = active() if active is not None else None
        if stream is not None:
            stream.close()

    # -- sampling ---------------------------------------------------------------------------

    def _call_key(self, seed: int | None) -> mx.array:
        """The PRNG key of this call: the seed's key on a new seed (or every call with
        reseed_each_turn), else the next key of the session's chain."""
        if seed is not None and (
            self.reseed_each_turn or seed != self._seed or self._chain is None
        ):
            self._seed = seed
            key = mx.random.key(seed)
        elif self._chain is None:
            key = mx.random.key(secrets.randbits(63))
        else:
            key = self._chain
        # A 3-way split: the sampler itself walks 2-way splits of `key`, so the third branch
        # starts a stream that never meets this call's draws.
        self._chain = mx.random.split(key, 3)[2]
        return key

    def _sampling(
        self, sampling: SamplingParams | None, extra: Sequence[LogitsProcessor] | None
    ) -> tuple[Sampler | None, list[LogitsProcessor]]:
        processors = list(extra or ())
        if sampling is None:
            return None, processors
        processors = list(sampling.make_logits_processors() or ()) + processors
        if sampling.temperature == 0:
            return None, processors  # greedy: argmax on the logits, no draw
        return sampling.make_sampler(key=self._call_key(sampling.seed)), processors

    # -- generation -------------------------------------------------------------------------

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
        """Stream tokens and text deltas; the last event has `stop_reason` and `stats`.

        `sampling=None` is greedy. `stop_tokens=None` uses `default_stop_tokens`. `cancel` is a
        `threading.Event` or a callable, checked before every token is handed out.
        `constraint` makes the output match a JSON schema, a tool call or a grammar (see
        `mlx_harmony.generate.constrain`); it is compiled here, so bad input raises
        `ConstraintError` before any prefill. A constrained run that reaches `max_tokens` before
        the grammar completes ends with ``StopReason.LENGTH``.
        """
        if constraint is not None and self._speculation:
            raise ValueError(
                "constraint cannot be combined with speculative decoding (the grammar cannot "
                "take back rejected drafts); use a TokenGenerator without draft_model / "
                "prompt_lookup for constrained calls"
            )
        logits_processors = self._with_constraint(logits_processors, constraint)
        self._close_active()
        events = self._run(
            prompt_tokens=prompt_tokens,
            sampling=sampling,
            max_tokens=max_tokens,
            stop_tokens=stop_tokens,
            stop_strings=stop_strings,
            cancel=cancel,
            logits_processors=logits_processors,
            loop_detection=loop_detection,
            detokenize=detokenize,
            logprobs=logprobs,
            prompt_progress_callback=prompt_progress_callback,
        )
        # A weak reference: a stream the caller drops is closed (and its cache committed) at
        # once; one still held is closed when the next call starts.
        self._active = weakref.ref(events)
        return events

    def _checkpoints(self, prompt: Sequence[int]) -> list[int]:
        """Where a Harmony prompt's cache keeps the sliding layers (the end of the system and
        developer messages), so the next conversation of the same application reuses them."""
        if not self.is_harmony or self._speculation or not self.reuse_prompt_cache:
            return []
        return harmony_message_boundaries(prompt, max_boundaries=2)

    def _opened(self, tokens: Generator[int, None, None]) -> None:
        self._active = weakref.ref(tokens)  # closing the token view closes the stream under it

    def _run(
        self,
        *,
        prompt_tokens: Sequence[int],
        sampling: SamplingParams | None,
        max_tokens: int,
        stop_tokens: Iterable[int] | None,
        stop_strings: Sequence[str],
        cancel: Cancel,
        logits_processors: Sequence[LogitsProcessor] | None,
        loop_detection: LoopDetector | LoopDetectionMode | str | None,
        detokenize: bool,
        logprobs: bool,
        prompt_progress_callback: Callable[[int, int], None] | None,
    ) -> Generator[StreamEvent, None, None]:
        prompt = self._prompt_ids(prompt_tokens)
        sampler, processors = self._sampling(sampling, logits_processors)
        detector = self.loop_detector if loop_detection is None else loop_detection
        self.last_stats = None
        housekeeping = self._housekeeping
        housekeeping.cleared_at_tokens = 0
        every_tokens = housekeeping.options.clear_cache_tokens
        generated = 0
        try:
            for event in stream_generate(
                self.model,
                self.tokenizer,
                prompt,
                prompt_cache=self.prompt_cache,
                reuse_prompt_cache=self.reuse_prompt_cache,
                max_tokens=max_tokens,
                sampler=sampler,
                logits_processors=processors,
                stop_tokens=self.default_stop_tokens if stop_tokens is None else stop_tokens,
                stop_strings=stop_strings,
                cancel=cancel,
                loop_detection=detector,
                detokenize=detokenize,
                logprobs=logprobs,
                prefill_step_size=self.prefill_step_size,
                prompt_progress_callback=prompt_progress_callback,
                checkpoints=self._checkpoints(prompt),
                **self._speculation,
            ):
                if event.stats is not None:
                    self.last_stats = event.stats
                elif every_tokens:
                    generated += 1
                    housekeeping.after_tokens(generated)
                yield event
        finally:
            housekeeping.after_generation()
