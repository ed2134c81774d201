"""`TokenGenerator`: one loaded model, its prompt cache and its seed, for a chat session."""

from __future__ import annotations

import secrets
import warnings
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx
from mlx.utils import tree_reduce

from .cache import PromptCache
from .detokenizer import token_bytes_table
from .loading import LoadedModel, load_model
from .loop import Cancel, LogitsProcessor, StreamEvent, stream_generate
from .loop_detection import LoopDetectionMode, LoopDetector, make_loop_detector
from .stats import GenerationStats

if TYPE_CHECKING:
    from mlx_harmony.sampling import SamplingParams

__all__ = ["HARMONY_END_TOKEN", "HARMONY_STOP_TOKENS", "ModelFacts", "TokenGenerator", "token_view"]

HARMONY_STOP_TOKENS = frozenset({200002, 200012})
"""<|return|> and <|call|>: where a Harmony assistant turn ends."""
HARMONY_END_TOKEN = 200007
"""<|end|> ends a message inside the turn (the analysis); it must not stop generation."""

_warned_mlock = False


def _harmony_stop_tokens() -> frozenset[int]:
    try:
        from mlx_harmony.harmony_format import STOP_TOKENS
    except ImportError:
        return HARMONY_STOP_TOKENS
    return frozenset(int(t) for t in STOP_TOKENS)


def _model_bytes(model: Any) -> int:
    return tree_reduce(
        lambda acc, x: acc + x.nbytes if isinstance(x, mx.array) else acc, model.parameters(), 0
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
    def model(self) -> Any:
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
                loop_detection=loop_detection,
                detokenize=False,
            )
        )
        self._opened(tokens)
        return tokens

    def stream(self, **kwargs: Any) -> Iterator[StreamEvent]:
        raise NotImplementedError

    def _opened(self, tokens: Generator[int, None, None]) -> None:
        """A token view was handed out (one-at-a-time generators track it)."""

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
    """

    def __init__(
        self,
        model: str | Path | LoadedModel,
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
    ) -> None:
        self.loaded = (
            model
            if isinstance(model, LoadedModel)
            else load_model(model, lazy=lazy, revision=revision)
        )
        if prefill_step_size < 1:
            raise ValueError(f"prefill_step_size must be positive, got {prefill_step_size}")
        self.prefill_step_size = prefill_step_size
        self.reuse_prompt_cache = prompt_cache
        self.loop_detector = (
            loop_detection
            if isinstance(loop_detection, LoopDetector)
            else make_loop_detector(loop_detection)
        )
        self.reseed_each_turn = reseed_each_turn
        self.clear_cache = clear_cache
        self.prompt_cache = PromptCache(
            self.loaded.model,
            max_kv_size=max_kv_size,
            kv_bits=kv_bits,
            kv_group_size=kv_group_size,
            quantized_kv_start=quantized_kv_start,
        )
        # Text deltas need the token-bytes table: build it with the model, not on first token.
        token_bytes_table(self.tokenizer)
        self.last_stats: GenerationStats | None = None
        self._seed: int | None = None
        self._chain: mx.array | None = None
        self._active: weakref.ref[Generator[Any, None, None]] | None = None
        self._old_wired_limit: int | None = None
        if mlock:
            self._wire_memory()

    # -- memory ----------------------------------------------------------------------------

    def _wire_memory(self) -> None:
        global _warned_mlock
        if not mx.metal.is_available():
            if not _warned_mlock:
                _warned_mlock = True
                warnings.warn(
                    f"mlock has no effect on this backend ({mx.default_device()}): MLX wires "
                    "memory only on Metal",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        limit = mx.device_info().get("max_recommended_working_set_size")
        if limit is None:
            return
        size = _model_bytes(self.model)
        if size > 0.9 * limit:
            warnings.warn(
                f"the model needs {size // 2**20} MB, close to the {limit // 2**20} MB Metal can "
                "wire; generation may be slow",
                RuntimeWarning,
                stacklevel=3,
            )
        self._old_wired_limit = mx.set_wired_limit(limit)

    def close(self) -> None:
        """Close an open stream and give wired memory back."""
        self._close_active()
        if self._old_wired_limit is not None:
            mx.synchronize()
            mx.set_wired_limit(self._old_wired_limit)
            self._old_wired_limit = None

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
    ) -> tuple[Any, list[LogitsProcessor]]:
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
        loop_detection: LoopDetector | LoopDetectionMode | str | None = None,
        detokenize: bool = True,
        logprobs: bool = False,
        prompt_progress_callback: Callable[[int, int], None] | None = None,
    ) -> Iterator[StreamEvent]:
        """Stream tokens and text deltas; the last event has `stop_reason` and `stats`.

        `sampling=None` is greedy. `stop_tokens=None` uses `default_stop_tokens`. `cancel` is a
        `threading.Event` or a callable, checked before every token is handed out.
        """
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
            ):
                if event.stats is not None:
                    self.last_stats = event.stats
                yield event
        finally:
            if self.clear_cache:
                mx.clear_cache()
