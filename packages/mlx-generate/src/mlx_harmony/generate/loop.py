"""Our generation loop, layered as mlx-lm's: `generate_step` -> `stream_generate` -> `generate`.

`generate_step` is mlx-lm's loop (same prefill chunks, same asynchronous evaluation: the next
step is queued before the current token is handed out) minus the work nobody asked for: greedy
decoding takes the argmax of the logits without normalizing them, log-probabilities are computed
only for a sampler or on request, and no step is queued past `max_tokens`.

For mlx-lm's gpt_oss model with its own caches, decoding after the prompt's last token runs the
compiled, static-shape step of `compiled.py` (``compiled=None``, the default, picks it where it
applies; ``compiled=False`` keeps the eager step): same tokens, one graph per step.

`stream_generate` adds what a chat needs: prompt-cache reuse, stop tokens, stop strings,
cancellation, loop detection, UTF-8-safe text deltas and timing stats. Text is decoded only when
someone reads it (or stop strings need it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import KVCache, TokenBuffer

from .cache import CacheReuse, PromptCache, maybe_quantize_kv_cache
from .compiled import (
    DEFAULT_MIN_BUCKET,
    StaticDecoder,
    StepOutput,
    compiled_decode_unsupported_reason,
)
from .emit import StreamEvent, TokenEvents
from .kv_quant import QuantizedKVCacheError
from .loop_detection import LoopDetectionMode, LoopDetector
from .prefill import BoundaryCheckpoints
from .speculative import (
    DEFAULT_NUM_DRAFT_TOKENS,
    DraftModel,
    SpeculationCounts,
    load_draft_model,
    speculative_generate_step,
)
from .stats import CacheReuseMode, GenerationStats, StopReason

__all__ = [
    "Cancel",
    "GenerationResult",
    "LogitsProcessor",
    "Sampler",
    "StreamEvent",
    "generate",
    "generate_step",
    "generation_stream",
    "release_thread_streams",
    "stream_generate",
]

Sampler = Callable[[mx.array], mx.array]
"""Log-probabilities (B, V) in, token ids (B,) out."""
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]
"""(tokens so far, logits (B, V)) in, logits out."""


class _IsSet(Protocol):
    def is_set(self) -> bool: ...


Cancel = _IsSet | Callable[[], bool] | None
"""A `threading.Event` (or anything with `is_set()`) or a callable: checked every token."""


def _new_generation_stream() -> mx.Stream | mx.ThreadLocalStream:
    make = getattr(mx, "new_thread_local_stream", None) or mx.new_stream
    return make(mx.default_device())


generation_stream = _new_generation_stream()
"""The stream generation runs on, as in mlx-lm (thread-local where MLX supports it)."""


def release_thread_streams() -> None:
    """Tear down this thread's MLX streams before the thread ends: left to process exit, a
    thread that ran MLX work can abort the interpreter ("terminate called without an active
    exception", ml-explore/mlx#3126)."""
    mx.synchronize()
    clear_streams = getattr(mx, "clear_streams", None)
    if clear_streams is not None:
        clear_streams()


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """A whole generation: what `generate` returns."""

    text: str
    tokens: list[int]
    stop_reason: StopReason
    stats: GenerationStats


def generate_step(
    prompt: mx.array,
    model: nn.Module,
    *,
    cache: list[Any],
    sampler: Sampler | None = None,
    logits_processors: Sequence[LogitsProcessor] | None = None,
    max_tokens: int = 256,
    prefill_step_size: int = 2048,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    quantized_kv_start: int = 0,
    context: mx.array | None = None,
    logprobs: bool = False,
    prompt_progress_callback: Callable[[int, int], None] | None = None,
    prompt_end_callback: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    stream: mx.Stream | mx.ThreadLocalStream | None = None,
    compiled: bool | None = None,
    min_bucket: int = DEFAULT_MIN_BUCKET,
    checkpoints: BoundaryCheckpoints | None = None,
) -> Generator[tuple[int, mx.array | None], None, None]:
    """Yield (token, log-probabilities or None) for `prompt`, continuing `cache` in place.

    `sampler=None` is greedy. `context` is what `cache` already holds, passed to the logits
    processors ahead of `prompt`. `prompt_end_callback` runs once the whole prompt is in the
    cache, before the first generated token is fed back. `should_stop` is checked between
    prefill chunks; when it says stop, the generator ends without a token. ``max_tokens=-1``
    never stops on length. `checkpoints` (offsets into `prompt`) ends prefill chunks at its
    boundaries and snapshots the rotating layers there.

    `compiled=None` decodes with the compiled static-shape step where it applies (gpt_oss with
    its own caches, no `kv_bits`; not on MLX's CUDA backend, see `on_cuda`), eagerly
    elsewhere; `True` requires it (ValueError naming why it does not apply); `False` is always
    eager. The compiled step holds the full-attention layers in buckets of `min_bucket` * 2**k
    positions and writes the positions back into `cache` when the generator ends or is closed.
    """
    if prompt.size == 0:
        raise ValueError("prompt must hold at least one token to generate from")
    if max_tokens == 0 or max_tokens < -1:
        raise ValueError(f"max_tokens must be positive (or -1 for no limit), got {max_tokens}")
    if prefill_step_size < 1:
        raise ValueError(f"prefill_step_size must be positive, got {prefill_step_size}")
    if min_bucket < 1:
        raise ValueError(f"min_bucket must be positive, got {min_bucket}")
    stream = generation_stream if stream is None else stream
    processors = list(logits_processors or ())
    # The tokens so far for the processors, in a buffer that grows by blocks (mlx-lm's).
    history = TokenBuffer() if processors else None
    if history is not None and context is not None and context.size:
        history.update_and_fetch(context)
    quantize = kv_bits is not None and any(type(c) is KVCache for c in cache)
    need_logprobs = logprobs or sampler is not None
    static = _use_compiled(compiled, model, cache, kv_bits, prompt, max_tokens)
    output: StepOutput = "logits" if processors else "logprobs" if need_logprobs else "token"
    decoder: StaticDecoder | None = None

    def _quantize() -> None:
        maybe_quantize_kv_cache(
            cache,
            kv_bits=kv_bits,
            kv_group_size=kv_group_size,
            quantized_kv_start=quantized_kv_start,
        )

    def _step(y: mx.array) -> tuple[mx.array, mx.array | None]:
        logits = model(y[None], cache=cache)[:, -1, :]
        if history is not None:  # there are processors
            tokens = history.update_and_fetch(y)
            for processor in processors:
                logits = processor(tokens, logits)
        if quantize:
            _quantize()
        if not need_logprobs:
            return mx.argmax(logits, axis=-1), None
        scores = logits - mx.logsumexp(logits, keepdims=True)
        token = sampler(scores) if sampler is not None else mx.argmax(scores, axis=-1)
        return token, scores.squeeze(0)

    def _compiled_step(y: mx.array) -> tuple[mx.array, mx.array | None]:
        # The same arithmetic as `_step`: the graph ends where Python-side state (the token
        # history, the sampler's PRNG key) takes over.
        assert decoder is not None  # set before the first compiled step
        out = decoder.step(y)
        if output == "token":
            return out, None
        if output == "logprobs":
            scores = out
        else:
            assert history is not None  # "logits" is the output when there are processors
            logits = out
            tokens = history.update_and_fetch(y)
            for processor in processors:
                logits = processor(tokens, logits)
            if not need_logprobs:
                return mx.argmax(logits, axis=-1), None
            scores = logits - mx.logsumexp(logits, keepdims=True)
        token = sampler(scores) if sampler is not None else mx.argmax(scores, axis=-1)
        return token, scores.squeeze(0)

    with mx.stream(stream):
        total = prompt.size
        processed = 0
        if prompt_progress_callback is not None:
            prompt_progress_callback(0, total)
        while total - processed > 1:
            if should_stop is not None and should_stop():
                return
            n = min(prefill_step_size, total - processed - 1)
            if checkpoints is not None:
                n = checkpoints.clip(processed, n)
            chunk = prompt[processed : processed + n]
            model(chunk[None], cache=cache)
            if quantize:
                _quantize()
            mx.eval([c.state for c in cache])
            if history is not None:  # there are processors
                history.update_and_fetch(chunk)
            processed += n
            if checkpoints is not None:
                checkpoints.after_chunk(processed, cache)
            if prompt_progress_callback is not None:
                prompt_progress_callback(processed, total)
            mx.clear_cache()
        if should_stop is not None and should_stop():
            return

        y, scores = _step(prompt[processed:])
        if prompt_end_callback is not None:
            prompt_end_callback()
        _async_eval(y, scores)
        step = _step
        if static:
            # The prompt's last token went through mlx-lm's caches (so the checkpoint above
            # holds them as the eager loop does); from here the buffers take over.
            decoder = StaticDecoder(model, cache, output=output, min_bucket=min_bucket)
            step = _compiled_step
        n = 0
        try:
            while True:
                last = n + 1 == max_tokens
                if not last:
                    next_y, next_scores = step(y)
                    _async_eval(next_y, next_scores)
                if n == 0:
                    mx.eval(y)
                    if prompt_progress_callback is not None:
                        prompt_progress_callback(total, total)
                yield cast("int", y.item()), scores  # a token id
                if last:
                    return
                if n % 256 == 0:
                    mx.clear_cache()
                # Set above: only the `last` step, which returned, skips them.
                y, scores = next_y, next_scores  # pyright: ignore[reportPossiblyUnboundVariable]
                n += 1
        finally:
            if decoder is not None:
                decoder.write_back()


def on_cuda() -> bool:
    """Whether MLX runs on its CUDA backend. There the compiled step is not the default: on an
    H100 it decoded at 0.93-0.94x the eager step's speed at 4 bits and 1.01x in bfloat16 (the
    step is bound by ~1,000 kernels' fixed cost, which compiling does not reduce)."""
    cuda = getattr(mx, "cuda", None)
    return cuda is not None and mx.default_device() == mx.gpu and bool(cuda.is_available())


def _use_compiled(
    compiled: bool | None,
    model: nn.Module,
    cache: list[Any],
    kv_bits: int | None,
    prompt: mx.array,
    max_tokens: int,
) -> bool:
    """Whether to decode with the compiled step; `compiled=True` where it cannot is an error."""
    if compiled is False or (compiled is None and on_cuda()):
        return False
    reason = compiled_decode_unsupported_reason(model, cache)
    if reason is None and kv_bits is not None:
        reason = "kv_bits quantizes the KV cache"
    if reason is None and prompt.ndim != 1:
        reason = f"the prompt must be one sequence (1-D), got shape {tuple(prompt.shape)}"
    if reason is not None:
        if compiled:
            raise ValueError(
                f"compiled=True, but the compiled decode step does not apply: {reason}; "
                "pass compiled=None (eager where it does not apply) or compiled=False"
            )
        return False
    # One token needs no decode step: nothing to compile.
    return max_tokens != 1


def _async_eval(token: mx.array, scores: mx.array | None) -> None:
    if scores is None:
        mx.async_eval(token)
    else:
        mx.async_eval(token, scores)


def _as_cancel_check(cancel: Cancel) -> Callable[[], bool] | None:
    if cancel is None:
        return None
    is_set = getattr(cancel, "is_set", None)
    if callable(is_set):
        return cast("Callable[[], bool]", is_set)
    if callable(cancel):
        return cancel
    raise TypeError(
        f"cancel must be a threading.Event (anything with is_set()) or a callable, got "
        f"{type(cancel).__name__}"
    )


def _prompt_ids(prompt: str | Sequence[int] | mx.array, tokenizer: Any) -> list[int]:
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("a text prompt needs a tokenizer; pass prompt token ids instead")
        bos = getattr(tokenizer, "bos_token", None)
        return list(
            tokenizer.encode(prompt, add_special_tokens=bos is None or not prompt.startswith(bos))
        )
    if isinstance(prompt, mx.array):
        return [int(t) for t in cast("list[int]", prompt.reshape(-1).tolist())]
    return [int(t) for t in prompt]


def stream_generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int] | mx.array,
    *,
    prompt_cache: PromptCache | None = None,
    reuse_prompt_cache: bool = True,
    max_tokens: int = 256,
    sampler: Sampler | None = None,
    logits_processors: Sequence[LogitsProcessor] | None = None,
    stop_tokens: Iterable[int] | None = None,
    stop_strings: Sequence[str] = (),
    cancel: Cancel = None,
    loop_detection: LoopDetector | LoopDetectionMode | str = LoopDetectionMode.OFF,
    detokenize: bool = True,
    logprobs: bool = False,
    prefill_step_size: int = 2048,
    max_kv_size: int | None = None,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    quantized_kv_start: int = 0,
    prompt_progress_callback: Callable[[int, int], None] | None = None,
    compiled: bool | None = None,
    min_bucket: int = DEFAULT_MIN_BUCKET,
    draft_model: DraftModel | nn.Module | str | Path | None = None,
    num_draft_tokens: int = DEFAULT_NUM_DRAFT_TOKENS,
    prompt_lookup: int | None = None,
    checkpoints: Sequence[int] = (),
) -> Generator[StreamEvent, None, None]:
    """Stream the generation for `prompt` as `StreamEvent`s; the last one has the stop reason
    and the stats.

    With a `prompt_cache`, the cache of the previous call is reused up to the longest common
    prefix (cache options then come from the `PromptCache`); without one, a fresh cache is
    built from `max_kv_size` / `kv_bits`. `checkpoints` are prompt offsets (message
    boundaries, e.g. `harmony_message_boundaries(prompt, max_boundaries=2)`) where the prompt
    cache keeps the rotating layers' state, so a later prompt that shares only that much
    reuses it; not while speculating. `stop_tokens=None` means the tokenizer's EOS ids; a
    stop token is the last event's token, with no text. A stop string ends the text before it.
    `tokenizer` may be None when `detokenize=False` and no stop strings are given.
    `compiled` and `min_bucket` choose the decode step as in `generate_step`.

    `draft_model` (a `DraftModel` keeps its cache across calls; a `LoadedModel`, module, path or
    repo id) or `prompt_lookup` (an n-gram length) decodes speculatively, verifying up to
    `num_draft_tokens` guesses per target pass (see `speculative.py`); the decode step is then
    eager, and `compiled=True` is refused.
    """
    t_start = time.perf_counter()
    prompt_ids = _prompt_ids(prompt, tokenizer)
    if not prompt_ids:
        raise ValueError("prompt must hold at least one token to generate from")
    if max_tokens == 0 or max_tokens < -1:
        raise ValueError(f"max_tokens must be positive (or -1 for no limit), got {max_tokens}")
    should_stop = _as_cancel_check(cancel)
    if stop_tokens is None:
        if tokenizer is None:
            raise ValueError("stop_tokens=None means the tokenizer's EOS ids; pass a tokenizer")
        stop_tokens = cast("Iterable[int]", tokenizer.eos_token_ids)
    out = TokenEvents(
        tokenizer,
        stop_tokens=stop_tokens,
        stop_strings=stop_strings,
        detokenize=detokenize,
        loop_detection=loop_detection,
        max_tokens=max_tokens,
    )

    if prompt_cache is None:
        cache = PromptCache(
            model,
            max_kv_size=max_kv_size,
            kv_bits=kv_bits,
            kv_group_size=kv_group_size,
            quantized_kv_start=quantized_kv_start,
        )
    else:
        cache = prompt_cache
    if reuse_prompt_cache:
        reuse = cache.reuse(prompt_ids)
    else:
        if cache.tokens or cache.offset:
            cache.reset()
        reuse = CacheReuse(0, CacheReuseMode.DISABLED)
    reused = reuse.reused
    n_prompt = len(prompt_ids)
    context = mx.array(prompt_ids[:reused]) if logits_processors and reused else None

    prompt_done = False
    marks = (
        BoundaryCheckpoints([b - reused for b in checkpoints], end=n_prompt - reused - 1)
        if checkpoints
        else None
    )

    def on_prompt_end() -> None:
        nonlocal prompt_done
        prompt_done = True
        cache.checkpoint(n_prompt)
        if marks is not None:
            cache.add_checkpoints({b + reused: snap for b, snap in marks.snapshots.items()})

    # What both step generators take: the caches, the sampling and the callbacks.
    shared: dict[str, Any] = {
        "cache": cache.caches,
        "sampler": sampler,
        "logits_processors": logits_processors,
        "max_tokens": max_tokens,
        "prefill_step_size": prefill_step_size,
        "kv_bits": cache.kv_bits,
        "kv_group_size": cache.kv_group_size,
        "quantized_kv_start": cache.quantized_kv_start,
        "logprobs": logprobs,
        "prompt_progress_callback": prompt_progress_callback,
        "prompt_end_callback": on_prompt_end,
        "should_stop": should_stop,
    }
    # Speculative decoding: its own step generator (speculative.py), same events and caches.
    speculation: SpeculationCounts | None = None
    mx.reset_peak_memory()
    if draft_model is not None or prompt_lookup is not None:
        if draft_model is not None and prompt_lookup is not None:
            raise ValueError("pass draft_model or prompt_lookup, not both")
        if compiled:
            raise ValueError(
                "compiled=True does not apply while speculating (the target verifies several "
                "tokens per pass); pass compiled=None or drop draft_model / prompt_lookup"
            )
        if checkpoints:
            raise ValueError(
                "checkpoints are taken by the plain prefill, not while speculating; pass "
                "checkpoints=() or drop draft_model / prompt_lookup"
            )
        speculation = SpeculationCounts()
        steps = speculative_generate_step(
            prompt_ids[reused:],
            model,
            history=prompt_ids[:reused],
            draft_model=None if draft_model is None else load_draft_model(draft_model),
            prompt_lookup=prompt_lookup,
            num_draft_tokens=num_draft_tokens,
            counts=speculation,
            **shared,
        )
    else:
        steps = generate_step(
            mx.array(prompt_ids[reused:]),
            model,
            context=context,
            compiled=compiled,
            min_bucket=min_bucket,
            checkpoints=marks,
            **shared,
        )

    if cache.kv_bits is not None:
        steps = _explaining_kv_bits(steps, cache.kv_bits, cache.kv_group_size)
    committed = False
    t_prefill = time.perf_counter()
    t_first = t_prefill
    n = 0
    try:
        for token, scores in steps:
            n += 1
            if n == 1:
                t_first = time.perf_counter()
            if should_stop is not None and should_stop():
                out.cancel(token)  # fed to the cache already, never handed out
                break
            event = out.add(token, scores)
            if event is None:
                break
            yield event
        else:
            out.cancel()  # the prompt was cancelled before the first token
        t_end = time.perf_counter()
        steps.close()
        cache.commit(prompt_ids + out.generated, single_tail=prompt_done)
        committed = True

        final = out.final()
        assert final.stop_reason is not None  # final() always sets it
        completion = out.handed_out
        decode_s = t_end - t_first if completion else 0.0
        final.stats = GenerationStats(
            prompt_tokens=n_prompt,
            reused_prompt_tokens=reused,
            prefilled_tokens=n_prompt - reused,
            prefill_s=(t_first if n else t_end) - t_prefill,
            time_to_first_token_s=(t_first - t_start) if n else 0.0,
            completion_tokens=completion,
            decode_s=decode_s,
            decode_tokens_per_s=(completion - 1) / decode_s if completion > 1 and decode_s else 0.0,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
            kv_length=cache.offset,
            stop_reason=final.stop_reason,
            loop_detection=out.detector.mode.value,
            cache_reuse=reuse.mode,
            stop_token=out.stop_token,
            stop_string=out.stop_string,
            draft_tokens=0 if speculation is None else speculation.drafted,
            accepted_draft_tokens=0 if speculation is None else speculation.accepted,
        )
        yield final
    finally:
        steps.close()
        if not committed:
            cache.commit(prompt_ids + out.generated, single_tail=prompt_done)


def _explaining_kv_bits(
    steps: Generator[tuple[int, mx.array | None], None, None], bits: int, group_size: int
) -> Generator[tuple[int, mx.array | None], None, None]:
    """`steps`, with MLX's error for a quantized attention it has no kernel for turned into
    one that names ``kv_bits`` and the way out."""
    try:
        yield from steps
    except RuntimeError as error:
        if "quantized" not in str(error):
            raise
        raise QuantizedKVCacheError(error, bits=bits, group_size=group_size) from error


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int] | mx.array,
    **kwargs: Any,
) -> GenerationResult:
    """The whole generation at once; options as `stream_generate`."""
    text: list[str] = []
    tokens: list[int] = []
    event = None
    for event in stream_generate(model, tokenizer, prompt, **kwargs):
        if event.token is not None:
            tokens.append(event.token)
        text.append(event.text)
    if event is None or event.stop_reason is None or event.stats is None:
        raise RuntimeError("stream_generate ended without its final event")
    return GenerationResult("".join(text), tokens, event.stop_reason, event.stats)
