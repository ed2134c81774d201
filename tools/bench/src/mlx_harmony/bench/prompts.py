"""The prompt set: one JSON object a line, each a conversation of one or more user turns.

    {"id": "code-003", "category": "coding", "turns": ["Write ...", "Now add tests."],
     "max_tokens": 384}

A prompt with several turns is sent as one conversation (each turn after the model answered
the one before), so the prompt cache's reuse from turn to turn shows in the records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from importlib.resources import files
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "CATEGORIES",
    "Prompt",
    "PromptSetError",
    "default_prompts_path",
    "load_prompts",
    "select_prompts",
]

CATEGORIES = ("question", "coding", "list", "writing", "long-context", "tool", "multi-turn")
"""The categories of the shipped set; a custom set may use others."""


class PromptSetError(ValueError):
    """A prompt file that cannot be used; the message names the file and line."""


class Prompt(BaseModel):
    """One conversation of the set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, description="Unique in the set; records refer to it.")
    category: str = Field(min_length=1)
    turns: tuple[str, ...] = Field(min_length=1, description="The user's messages, in order.")
    max_tokens: int | None = Field(default=None, ge=1, description="This prompt's reply budget.")

    @field_validator("turns")
    @classmethod
    def _no_empty_turn(cls, turns: tuple[str, ...]) -> tuple[str, ...]:
        for i, text in enumerate(turns):
            if not text.strip():
                raise ValueError(f"turn {i} is empty")
        return turns


def default_prompts_path() -> Path:
    """The shipped set: inside the installed wheel, else ``tools/bench/prompts.jsonl`` of the
    source tree (an editable install)."""
    packaged = files("mlx_harmony.bench").joinpath("data", "prompts.jsonl")
    if packaged.is_file():
        return Path(os.fspath(packaged))  # type: ignore[arg-type]
    source = Path(__file__).resolve().parents[3] / "prompts.jsonl"
    if source.is_file():
        return source
    raise PromptSetError(
        "the shipped prompt set is missing (neither in the package nor at "
        f"{source}); pass --prompts FILE"
    )


def load_prompts(path: str | os.PathLike[str] | None = None) -> list[Prompt]:
    """Read and check a prompt file (the shipped set when `path` is None)."""
    path = Path(path) if path is not None else default_prompts_path()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise PromptSetError(f"cannot read the prompt set {path}: {error}") from None
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            prompt = Prompt.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as error:
            raise PromptSetError(f"{path}:{number}: not a valid prompt: {error}") from None
        if prompt.id in seen:
            raise PromptSetError(
                f"{path}:{number}: id {prompt.id!r} is already used on line {seen[prompt.id]}; "
                "give every prompt its own id"
            )
        seen[prompt.id] = number
        prompts.append(prompt)
    if not prompts:
        raise PromptSetError(f"{path} holds no prompts")
    return prompts


def select_prompts(
    prompts: Sequence[Prompt],
    *,
    limit: int | None = None,
    categories: Iterable[str] | None = None,
    ids: Iterable[str] | None = None,
) -> list[Prompt]:
    """The prompts to run: those of the given categories or ids, then the first `limit`.

    With a limit (and no ids), the prompts are taken round-robin over their categories, so a
    small run still holds every kind of prompt (multi-turn ones included)."""
    chosen = list(prompts)
    if categories is not None:
        wanted = set(categories)
        unknown = wanted - {p.category for p in prompts}
        if unknown:
            known = ", ".join(sorted({p.category for p in prompts}))
            raise PromptSetError(f"no prompts of category {sorted(unknown)}; the set has {known}")
        chosen = [p for p in chosen if p.category in wanted]
    if ids is not None:
        wanted_ids = list(ids)
        by_id = {p.id: p for p in chosen}
        missing = [i for i in wanted_ids if i not in by_id]
        if missing:
            raise PromptSetError(f"no prompts with ids {missing}")
        chosen = [by_id[i] for i in wanted_ids]
    if limit is not None:
        if limit < 1:
            raise PromptSetError(f"limit must be >= 1, got {limit}")
        if ids is None:
            chosen = _round_robin(chosen)
        chosen = chosen[:limit]
    return chosen


def _round_robin(prompts: Sequence[Prompt]) -> list[Prompt]:
    groups: dict[str, list[Prompt]] = {}
    for prompt in prompts:
        groups.setdefault(prompt.category, []).append(prompt)
    out: list[Prompt] = []
    queues = [list(reversed(g)) for g in groups.values()]
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop())
    return out
