"""Keep the prompt inside the context window by leaving out the oldest turns.

The budget: the prompt may use ``max_context_tokens - max_context_tokens_margin`` tokens (the
margin is room for the reply), where ``max_context_tokens`` is the prompt config's value or,
when that is null, the model's own context length. A reply may then use what is left of the
window, at most ``max_tokens``. In performance mode, ``perf_prompt_token_budget`` caps the
prompt further (whichever limit is smaller applies).

`fit_context` drops whole turns (a user message and everything that answered it), oldest
first, and never the system and developer messages, the example dialogues, the greeting or
the turn in progress. Turns are counted on the rendered prompt, so every format counts
exactly; a binary search keeps the number of renders logarithmic. The turns are only left out
of the prompt: the session and the chat log keep them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .config import PromptConfig
from .turns import Turn

__all__ = ["DEFAULT_MAX_TOKENS", "ContextBudget", "ContextOverflowError", "fit_context"]

DEFAULT_MAX_TOKENS = 4096
"""A reply's token limit when neither max_tokens nor a context window says otherwise."""


class ContextOverflowError(ValueError):
    """Even the newest turn alone does not fit the context budget (the server answers 400)."""

    def __init__(self, prompt_tokens: int, budget: ContextBudget) -> None:
        self.prompt_tokens = prompt_tokens
        self.budget = budget
        limit = budget.limit
        if budget.prompt_budget is not None and limit == budget.prompt_budget:
            why, fix = "perf_prompt_token_budget in performance mode", "raise it"
        else:
            why = f"max_context_tokens {budget.window} - max_context_tokens_margin {budget.margin}"
            fix = "raise max_context_tokens or lower max_context_tokens_margin"
        super().__init__(
            f"the prompt needs {prompt_tokens} tokens with only the newest turn, more than the "
            f"{limit} allowed ({why}); shorten the message, or {fix}"
        )


@dataclass(frozen=True, slots=True)
class ContextBudget:
    """The context window (None: unlimited), the margin kept free for the reply, and the
    prompt's own budget (performance mode's ``perf_prompt_token_budget``; None: none)."""

    window: int | None
    margin: int = 0
    prompt_budget: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None and self.window <= self.margin:
            raise ValueError(
                f"max_context_tokens ({self.window}) must be larger than "
                f"max_context_tokens_margin ({self.margin}); lower the margin"
            )

    @classmethod
    def from_config(
        cls, config: PromptConfig, *, context_length: int | None = None
    ) -> ContextBudget:
        """``config.max_context_tokens``, else the model's `context_length`; the config's margin."""
        window = config.max_context_tokens or context_length
        prompt_budget = config.prompt_token_budget()
        if window is None:
            return cls(None, 0, prompt_budget)
        margin = config.max_context_tokens_margin
        if config.max_context_tokens is None and window <= margin:
            margin = 0  # a model with a tiny window: the config's margin was not meant for it
        return cls(window, margin, prompt_budget)

    @property
    def limit(self) -> int | None:
        """The most tokens the prompt may use."""
        limits = [
            limit
            for limit in (
                None if self.window is None else self.window - self.margin,
                self.prompt_budget,
            )
            if limit is not None
        ]
        return min(limits) if limits else None

    def max_new_tokens(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """How many tokens the reply may generate after a prompt of `prompt_tokens`."""
        if self.window is None:
            return max_tokens or DEFAULT_MAX_TOKENS
        room = max(self.window - prompt_tokens, 1)
        return room if max_tokens is None else max(min(max_tokens, room), 1)


def fit_context(
    render: Callable[[Sequence[Turn]], list[int]],
    turns: Sequence[Turn],
    *,
    budget: ContextBudget,
) -> tuple[list[int], int]:
    """The prompt tokens of the longest suffix of `turns` that fits `budget`, and how many
    turns were left out. The last turn is always kept; `ContextOverflowError` when it alone
    is too long."""
    tokens = render(turns)
    limit = budget.limit
    if limit is None or len(tokens) <= limit:
        return tokens, 0
    if not turns:
        raise ContextOverflowError(len(tokens), budget)
    last = len(turns) - 1
    best = render(turns[last:])
    if len(best) > limit:
        raise ContextOverflowError(len(best), budget)
    lo, hi = 0, last  # dropping lo turns is too long, dropping hi turns fits
    while hi - lo > 1:
        mid = (lo + hi) // 2
        candidate = render(turns[mid:])
        if len(candidate) <= limit:
            hi, best = mid, candidate
        else:
            lo = mid
    return best, hi
