"""The shipped prompt set and the prompt file format."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from mlx_harmony.bench import (
    CATEGORIES,
    Prompt,
    PromptSetError,
    default_prompts_path,
    load_prompts,
    select_prompts,
)

SOURCE = Path(__file__).parents[1] / "prompts.jsonl"


def test_the_shipped_set_is_large_varied_and_well_formed() -> None:
    prompts = load_prompts()
    assert len(prompts) >= 100
    assert len({p.id for p in prompts}) == len(prompts)
    counts = Counter(p.category for p in prompts)
    assert set(counts) == set(CATEGORIES), counts
    multi = [p for p in prompts if len(p.turns) > 1]
    assert len(multi) >= 15
    assert all(p.category == "multi-turn" for p in multi)
    assert all(p.max_tokens is not None and p.max_tokens >= 64 for p in prompts)
    lengths = sorted(sum(len(t) for t in p.turns) for p in prompts)
    assert lengths[-1] > 20 * lengths[len(lengths) // 2], "long-context prompts vary the length"


def test_the_command_finds_the_set_in_the_source_tree() -> None:
    assert default_prompts_path().resolve() == SOURCE.resolve()


def _write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_bad_line_is_reported_with_its_number(tmp_path: Path) -> None:
    good = json.dumps({"id": "a", "category": "question", "turns": ["hi"]})
    with pytest.raises(PromptSetError, match=r"set.jsonl:3: not a valid prompt"):
        load_prompts(_write(tmp_path, good, "", "{oops"))
    with pytest.raises(PromptSetError, match=r"(?s):2: .*turn 0 is empty"):
        load_prompts(_write(tmp_path, good, '{"id": "b", "category": "q", "turns": [" "]}'))
    with pytest.raises(PromptSetError, match=r"id 'a' is already used on line 1"):
        load_prompts(_write(tmp_path, good, good))
    with pytest.raises(PromptSetError, match="holds no prompts"):
        load_prompts(_write(tmp_path, ""))


def _p(i: int, category: str) -> Prompt:
    return Prompt(id=f"{category}-{i}", category=category, turns=("x",))


def test_a_limit_takes_prompts_round_robin_over_categories() -> None:
    prompts = [_p(i, "a") for i in range(4)] + [_p(i, "b") for i in range(2)] + [_p(0, "c")]
    chosen = select_prompts(prompts, limit=5)
    assert [p.id for p in chosen] == ["a-0", "b-0", "c-0", "a-1", "b-1"]
    assert select_prompts(prompts) == prompts
    only = select_prompts(prompts, categories=["b", "c"], limit=2)
    assert [p.id for p in only] == ["b-0", "c-0"]
    assert [p.id for p in select_prompts(prompts, ids=["c-0", "a-2"])] == ["c-0", "a-2"]


def test_selection_errors_name_what_is_missing() -> None:
    prompts = [_p(0, "a")]
    with pytest.raises(PromptSetError, match=r"no prompts of category \['zzz'\]; the set has a"):
        select_prompts(prompts, categories=["zzz"])
    with pytest.raises(PromptSetError, match=r"no prompts with ids \['nope'\]"):
        select_prompts(prompts, ids=["nope"])
    with pytest.raises(PromptSetError, match="limit must be >= 1, got 0"):
        select_prompts(prompts, limit=0)
