"""Test doubles: `ScriptedGenerator` replays scripted completions with `TokenGenerator`'s API.

No model, no MLX work: controller, CLI and server tests run in milliseconds, and still see the
real stop handling (stop tokens, stop strings, max_tokens, cancellation, loop detection), the
event shapes and the stats fields.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import common_prefix_len
from .generator import HARMONY_STOP_TOKENS
from .loop import Cancel, LogitsProcessor, StreamEvent, _as_cancel_check
from .loop_detection import LoopDetectionMode, LoopDetector, make_loop_detector
from .stats import CacheReuseMode, GenerationStats, StopReason

if TYPE_CHECKING:
    from mlx_harmony.sampling import SamplingParams

    from .constrain import ConstraintSpec
from .stop_strings import StopStringMatcher

__all__ = ["ScriptedCall", "ScriptedGenerator", "free_ports", "start_ranks", "stop_ranks"]


@dataclass(frozen=True, slots=True)
class ScriptedCall:
    """What a `ScriptedGenerator` was asked, for assertions."""

    prompt_tokens: list[int]
    sampling: SamplingParams | None
    max_tokens: int
    stop_tokens: frozenset[int]
    stop_strings: tuple[str, ...]
    constraint: ConstraintSpec | None = None
    """The `ConstraintSpec` the call asked for (not applied: the script plays as written)."""


def _harmony_codec() -> tuple[Callable[[str], list[int]], Callable[[Sequence[int]], str]]:
    from mlx_harmony.harmony_format import get_encoding

    encoding = get_encoding()
    return (
        lambda text: list(encoding.encode(text, allowed_special="all")),
        lambda tokens: encoding.decode_utf8(list(tokens)) if tokens else "",
    )


class ScriptedGenerator:
    """Replays `completions` in order, one per call, as a model would generate them.

    A completion is token ids, or text when an `encode` is given (for Harmony, the default
    codec is openai-harmony's, special tokens allowed). Text deltas come from `decode`; without
    one they are empty. A completion that ends without a stop token ends on ``length``.
    """

    def __init__(
        self,
        completions: Iterable[Sequence[int] | str],
        *,
        encode: Callable[[str], list[int]] | None = None,
        decode: Callable[[Sequence[int]], str] | None = None,
        is_harmony: bool = True,
        stop_tokens: Iterable[int] | None = None,
        loop_detection: LoopDetector | LoopDetectionMode | str = LoopDetectionMode.OFF,
    ) -> None:
        if is_harmony and (encode is None or decode is None):
            default_encode, default_decode = _harmony_codec()
            encode = encode or default_encode
            decode = decode or default_decode
        self.is_harmony = is_harmony
        self.model_type = "gpt_oss" if is_harmony else "scripted"
        self._encode = encode
        self._decode = decode
        self._scripts: list[list[int]] = []
        for completion in completions:
            if isinstance(completion, str):
                if encode is None:
                    raise ValueError("a text completion needs encode=...; or pass token ids")
                self._scripts.append(encode(completion))
            else:
                self._scripts.append([int(t) for t in completion])
        self.default_stop_tokens = frozenset(
            HARMONY_STOP_TOKENS if stop_tokens is None else (int(t) for t in stop_tokens)
        )
        self.loop_detector = (
            loop_detection
            if isinstance(loop_detection, LoopDetector)
            else make_loop_detector(loop_detection)
        )
        self.calls: list[ScriptedCall] = []
        self.last_stats: GenerationStats | None = None
        self._cached: list[int] = []

    @property
    def remaining(self) -> int:
        """Completions not played yet."""
        return len(self._scripts) - len(self.calls)

    def encode(self, text: str) -> list[int]:
        if self._encode is None:
            raise ValueError("this ScriptedGenerator has no encode")
        return self._encode(text)

    def decode(self, tokens: Sequence[int]) -> str:
        return self._decode(tokens) if self._decode is not None else ""

    def reset_cache(self) -> None:
        self._cached = []

    def close(self) -> None:
        return None

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
        for event in self.stream(
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
        ):
            if event.token is not None:
                yield event.token

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
    ) -> Iterator[StreamEvent]:
        """Like `TokenGenerator.stream`; `logits_processors`, `constraint` (recorded in
        `calls`) and `logprobs` are ignored."""
        prompt = [int(t) for t in prompt_tokens]
        if not prompt:
            raise ValueError("prompt must hold at least one token to generate from")
        if max_tokens == 0 or max_tokens < -1:
            raise ValueError(f"max_tokens must be positive (or -1 for no limit), got {max_tokens}")
        index = len(self.calls)
        if index >= len(self._scripts):
            raise RuntimeError(
                f"ScriptedGenerator ran out of completions after {index} calls; give it more"
            )
        stops = frozenset(self.default_stop_tokens if stop_tokens is None else stop_tokens)
        self.calls.append(
            ScriptedCall(prompt, sampling, max_tokens, stops, tuple(stop_strings), constraint)
        )
        return self._play(
            self._scripts[index],
            prompt,
            max_tokens=max_tokens,
            stops=stops,
            stop_strings=stop_strings,
            cancel=cancel,
            detector=self.loop_detector if loop_detection is None else loop_detection,
            detokenize=detokenize,
            progress=prompt_progress_callback,
        )

    def _play(
        self,
        script: list[int],
        prompt: list[int],
        *,
        max_tokens: int,
        stops: frozenset[int],
        stop_strings: Sequence[str],
        cancel: Cancel,
        detector: LoopDetector | LoopDetectionMode | str,
        detokenize: bool,
        progress: Callable[[int, int], None] | None,
    ) -> Iterator[StreamEvent]:
        start = time.perf_counter()
        should_stop = _as_cancel_check(cancel)
        matcher = StopStringMatcher(stop_strings) if stop_strings else None
        if not isinstance(detector, LoopDetector):
            detector = make_loop_detector(detector)
        want_text = (detokenize or matcher is not None) and self._decode is not None
        common = common_prefix_len(self._cached, prompt)
        reused = min(common, len(prompt) - 1)
        if not self._cached or reused <= 0:
            mode, reused = CacheReuseMode.FRESH, 0
        elif reused == len(self._cached):
            mode = CacheReuseMode.EXTEND
        else:
            mode = CacheReuseMode.TRIM
        if progress is not None:
            progress(0, len(prompt))
            progress(len(prompt), len(prompt))

        generated: list[int] = []
        shown = ""
        reason: StopReason | None = None
        stop_token = stop_string = None
        last: int | None = None
        text = ""
        for i, token in enumerate(script):
            text = ""
            if should_stop is not None and should_stop():
                reason = StopReason.CANCELLED
                break
            generated.append(token)
            if token in stops:
                reason, stop_token = StopReason.STOP, token
            else:
                if want_text:
                    full = self.decode(generated)
                    if not full.endswith("\ufffd"):
                        text, shown = full[len(shown) :], full
                    if matcher is not None:
                        text, stop_string = matcher.feed(text)
                        if stop_string is not None:
                            reason = StopReason.STOP
                if reason is None:
                    # The script running out reads as the token limit.
                    if len(generated) == max_tokens or i == len(script) - 1:
                        reason = StopReason.LENGTH
                    elif (
                        detector.interval
                        and len(generated) % detector.interval == 0
                        and detector(generated)
                    ):
                        reason = StopReason.LOOP_DETECTED
            if reason is not None:
                last = token
                break
            yield StreamEvent(token, text if detokenize else "")
        if reason is None:  # an empty script
            reason = StopReason.LENGTH
        if matcher is not None and stop_string is None:
            text += matcher.flush()
        fed = prompt + generated
        self._cached = fed[:-1] if reason is StopReason.LENGTH else fed
        completion = len(generated)
        elapsed = time.perf_counter() - start
        stats = GenerationStats.measured(
            prompt_tokens=len(prompt),
            reused_prompt_tokens=reused,
            prefill_s=0.0,
            time_to_first_token_s=0.0,
            completion_tokens=completion,
            decode_s=elapsed,
            peak_memory_gb=0.0,
            kv_length=len(self._cached),
            stop_reason=reason,
            loop_detection=detector.mode.value,
            cache_reuse=mode,
            stop_token=stop_token,
            stop_string=stop_string,
        )
        self.last_stats = stats
        token = None if reason is StopReason.CANCELLED else last
        yield StreamEvent(token, text if detokenize else "", None, reason, stats)


# -- several ranks on localhost ----------------------------------------------------------------


def free_ports(n: int) -> list[int]:
    """`n` TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def start_ranks(
    command: Callable[[int], Sequence[str]],
    folder: Path,
    *,
    n: int = 2,
    env: Mapping[str, str] | None = None,
    popen: Callable[[int], Mapping[str, Any]] | None = None,
) -> list[subprocess.Popen[bytes]]:
    """`n` ranks of ``command(rank)`` on 127.0.0.1, started by hand as ``mlx.launch --backend
    ring`` starts them (a hostfile in `folder`, ``MLX_HOSTFILE`` and ``MLX_RANK``), so that a
    test owns each rank's pid, stdin and exit status. ``popen(rank)`` gives `subprocess.Popen`'s
    other arguments (default: stdout and stderr piped)."""
    hostfile = folder / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(n)]))
    ranks = []
    for rank in range(n):
        rank_env = {**os.environ, **(env or {}), "MLX_HOSTFILE": str(hostfile)}
        rank_env["MLX_RANK"] = str(rank)
        options = dict(popen(rank)) if popen is not None else {}
        options.setdefault("stdout", subprocess.PIPE)
        options.setdefault("stderr", subprocess.PIPE)
        ranks.append(subprocess.Popen(list(command(rank)), env=rank_env, **options))
    return ranks


def stop_ranks(ranks: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill the ranks still running and reap them all."""
    for p in ranks:
        if p.poll() is None:
            p.kill()
        p.wait(10)
