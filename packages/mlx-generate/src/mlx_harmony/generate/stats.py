"""Why a generation ended and how long each part took."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

__all__ = ["CacheReuseMode", "GenerationStats", "StopReason"]


class StopReason(StrEnum):
    """Why a generation ended."""

    STOP = "stop"
    """A stop token or a stop string."""
    LENGTH = "length"
    """max_tokens was reached."""
    LOOP_DETECTED = "loop_detected"
    """The loop detector saw the output repeat itself."""
    CANCELLED = "cancelled"
    """The caller's cancel flag or callback said so."""


class CacheReuseMode(StrEnum):
    """How the prompt cache served a call."""

    FRESH = "fresh"
    """Nothing was cached, or nothing in common: the whole prompt was prefilled."""
    EXTEND = "extend"
    """The cache held a prefix of the prompt exactly: only the rest was prefilled."""
    TRIM = "trim"
    """The cache was trimmed back to the common prefix."""
    CHECKPOINT = "checkpoint"
    """The sliding-window layers were restored from the end of the previous prompt."""
    RECOMPUTE = "recompute"
    """A prefix was in common but the rotating layers could not go back to it: full prefill."""
    DISABLED = "disabled"
    """Prompt-cache reuse is off."""


@dataclass(frozen=True, slots=True)
class GenerationStats:
    """Timing and counts for one generation call (times in seconds, memory in GB)."""

    prompt_tokens: int
    reused_prompt_tokens: int
    prefilled_tokens: int
    prefill_s: float
    time_to_first_token_s: float
    completion_tokens: int
    decode_s: float
    decode_tokens_per_s: float
    peak_memory_gb: float
    kv_length: int
    stop_reason: StopReason
    loop_detection: str
    cache_reuse: CacheReuseMode
    stop_token: int | None = None
    stop_string: str | None = None
    draft_tokens: int = 0
    """Speculative decoding: tokens the draft model or prompt lookup proposed (0 without)."""
    accepted_draft_tokens: int = 0
    """Speculative decoding: proposed tokens the target kept (and handed out)."""

    @classmethod
    def measured(
        cls,
        *,
        prompt_tokens: int,
        reused_prompt_tokens: int,
        completion_tokens: int,
        prefill_s: float,
        time_to_first_token_s: float,
        decode_s: float,
        kv_length: int,
        stop_reason: StopReason,
        loop_detection: str,
        cache_reuse: CacheReuseMode,
        stop_token: int | None = None,
        stop_string: str | None = None,
        peak_memory_gb: float | None = None,
    ) -> GenerationStats:
        """Stats from what a generation measured; the derived values (prefilled tokens, the
        decode rate over the tokens after the first, MLX's peak memory when not given) are
        computed here, the same for every generator and test double."""
        if peak_memory_gb is None:
            import mlx.core as mx

            peak_memory_gb = mx.get_peak_memory() / 1e9
        rate = (completion_tokens - 1) / decode_s if completion_tokens > 1 and decode_s else 0.0
        return cls(
            prompt_tokens=prompt_tokens,
            reused_prompt_tokens=reused_prompt_tokens,
            prefilled_tokens=prompt_tokens - reused_prompt_tokens,
            prefill_s=prefill_s,
            time_to_first_token_s=time_to_first_token_s,
            completion_tokens=completion_tokens,
            decode_s=decode_s,
            decode_tokens_per_s=rate,
            peak_memory_gb=peak_memory_gb,
            kv_length=kv_length,
            stop_reason=stop_reason,
            loop_detection=loop_detection,
            cache_reuse=cache_reuse,
            stop_token=stop_token,
            stop_string=stop_string,
        )

    @property
    def draft_acceptance_rate(self) -> float:
        """Accepted over proposed draft tokens (0.0 without speculation)."""
        return self.accepted_draft_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (enums as their strings)."""
        data = asdict(self)
        data["stop_reason"] = self.stop_reason.value
        data["cache_reuse"] = self.cache_reuse.value
        return data
