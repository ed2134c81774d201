"""SamplingParams: one validated set of sampling options for the CLI, config files, server."""

from __future__ import annotations

from functools import partial
from typing import Annotated

import mlx.core as mx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from mlx_harmony.sampling import _checks
from mlx_harmony.sampling.processors import LogitsProcessor, make_logits_processors
from mlx_harmony.sampling.samplers import Sampler, make_sampler

__all__ = ["SamplingParams"]

# OpenAI's range for presence_penalty and frequency_penalty.
PENALTY_LIMIT = 2.0


def _range(minimum: float | None = None, maximum: float | None = None, **bounds: float) -> JsonDict:
    """JSON-schema bounds for clients; the AfterValidator does the checking and the message."""
    schema: JsonDict = {**bounds}
    if minimum is not None:
        schema["minimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    return schema


_RepetitionContextSize = Annotated[
    int, AfterValidator(partial(_checks.check_context_size, "repetition_context_size"))
]
_PresenceContextSize = Annotated[
    int, AfterValidator(partial(_checks.check_context_size, "presence_context_size"))
]
_FrequencyContextSize = Annotated[
    int, AfterValidator(partial(_checks.check_context_size, "frequency_context_size"))
]
_PresencePenalty = Annotated[
    float,
    AfterValidator(
        partial(_checks.check_additive_penalty, "presence_penalty", limit=PENALTY_LIMIT)
    ),
]
_FrequencyPenalty = Annotated[
    float,
    AfterValidator(
        partial(_checks.check_additive_penalty, "frequency_penalty", limit=PENALTY_LIMIT)
    ),
]


class SamplingParams(BaseModel):
    """How to pick each next token. Defaults follow gpt-oss's recommendation (temperature 1,
    top_p 1) with every other filter and penalty off."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: Annotated[float, AfterValidator(_checks.check_temperature)] = Field(
        default=1.0,
        description="Softmax temperature; 0 picks the most likely token (greedy).",
        json_schema_extra=_range(0),
    )
    top_p: Annotated[float, AfterValidator(_checks.check_top_p)] = Field(
        default=1.0,
        description="Nucleus sampling mass in (0, 1]; 1 turns it off.",
        json_schema_extra=_range(maximum=1, exclusiveMinimum=0),
    )
    top_k: Annotated[int, AfterValidator(_checks.check_top_k)] = Field(
        default=0,
        description="Keep only the k most likely tokens; 0 turns it off.",
        json_schema_extra=_range(0),
    )
    min_p: Annotated[float, AfterValidator(_checks.check_min_p)] = Field(
        default=0.0,
        description="Drop tokens below min_p times the top probability; 0 turns it off.",
        json_schema_extra=_range(0, 1),
    )
    min_tokens_to_keep: Annotated[int, AfterValidator(_checks.check_min_tokens_to_keep)] = Field(
        default=1, description="Tokens min_p never drops.", json_schema_extra=_range(1)
    )
    xtc_probability: Annotated[float, AfterValidator(_checks.check_xtc_probability)] = Field(
        default=0.0,
        description="Chance per token of applying XTC (exclude top choices); 0 turns it off.",
        json_schema_extra=_range(0, 1),
    )
    xtc_threshold: Annotated[float, AfterValidator(_checks.check_xtc_threshold)] = Field(
        default=0.1,
        description="Probability above which XTC excludes a token.",
        json_schema_extra=_range(0, 0.5),
    )
    xtc_special_tokens: Annotated[
        tuple[int, ...], AfterValidator(partial(_checks.check_token_ids, "xtc_special_tokens"))
    ] = Field(default=(), description="Token ids XTC never excludes.")
    repetition_penalty: (
        Annotated[float, AfterValidator(_checks.check_repetition_penalty)] | None
    ) = Field(
        default=1.0,
        description="Multiplicative penalty on recent tokens; 1 or null turns it off.",
        json_schema_extra=_range(exclusiveMinimum=0),
    )
    repetition_context_size: _RepetitionContextSize = Field(
        default=20,
        description="Recent tokens the repetition penalty looks at.",
        json_schema_extra=_range(1),
    )
    presence_penalty: _PresencePenalty = Field(
        default=0.0,
        description="Subtracted once from each recent token's logit; 0 turns it off.",
        json_schema_extra=_range(-PENALTY_LIMIT, PENALTY_LIMIT),
    )
    presence_context_size: _PresenceContextSize = Field(
        default=20,
        description="Recent tokens the presence penalty looks at.",
        json_schema_extra=_range(1),
    )
    frequency_penalty: _FrequencyPenalty = Field(
        default=0.0,
        description="Subtracted from a token's logit per recent occurrence; 0 turns it off.",
        json_schema_extra=_range(-PENALTY_LIMIT, PENALTY_LIMIT),
    )
    frequency_context_size: _FrequencyContextSize = Field(
        default=20,
        description="Recent tokens the frequency penalty looks at.",
        json_schema_extra=_range(1),
    )
    logit_bias: Annotated[dict[int, float], AfterValidator(_checks.check_logit_bias)] | None = (
        Field(
            default=None,
            description="Added to the logits of these token ids (JSON keys may be strings).",
        )
    )
    seed: Annotated[int, AfterValidator(_checks.check_seed)] | None = Field(
        default=None,
        description="Seed for this generation's own PRNG key; null draws fresh entropy.",
        json_schema_extra=_range(0, _checks.SEED_LIMIT - 1),
    )

    def make_sampler(self, *, key: mx.array | None = None) -> Sampler:
        """A fresh sampler for one generation; `key`, when given, replaces `seed`."""
        return make_sampler(
            temperature=self.temperature,
            top_p=self.top_p,
            min_p=self.min_p,
            min_tokens_to_keep=self.min_tokens_to_keep,
            top_k=self.top_k,
            xtc_probability=self.xtc_probability,
            xtc_threshold=self.xtc_threshold,
            xtc_special_tokens=self.xtc_special_tokens,
            seed=self.seed if key is None else None,
            key=key,
        )

    def make_logits_processors(self) -> list[LogitsProcessor]:
        """The processors that are on (an empty list with the defaults)."""
        return make_logits_processors(
            logit_bias=self.logit_bias,
            repetition_penalty=self.repetition_penalty,
            repetition_context_size=self.repetition_context_size,
            presence_penalty=self.presence_penalty,
            presence_context_size=self.presence_context_size,
            frequency_penalty=self.frequency_penalty,
            frequency_context_size=self.frequency_context_size,
        )

    def updated(self, **changes: object) -> SamplingParams:
        """A copy with `changes` applied and everything validated again (unknown names and
        out-of-range values raise ValidationError); the fields set explicitly stay set."""
        return type(self).model_validate({**self.model_dump(exclude_unset=True), **changes})
