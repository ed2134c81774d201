"""Conversations that share only their system and developer messages reuse them, past gpt-oss's
128-token sliding window, through message-boundary checkpoints in the shared prompt cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_harmony.generate import LoadedModel, SharedPromptCache, generate, generate_step, make_cache
from mlx_harmony.generate.prefill import (
    BoundaryCheckpoints,
    harmony_message_boundaries,
    prefill,
)
from mlx_harmony.generate.prompt_cache_file import write_prompt_cache

START, END, MESSAGE = 200006, 200007, 200008


def _message(role: int, body: list[int]) -> list[int]:
    return [START, role, MESSAGE, *body, END]


SYSTEM = _message(17, [1000 + i % 700 for i in range(330)])  # wraps the 128-token window
DEVELOPER = _message(18, [3000 + i for i in range(60)])
SHARED = SYSTEM + DEVELOPER


def _conversation(user: list[int]) -> list[int]:
    return SHARED + _message(19, user) + [START, 20]


def _run(
    loaded: LoadedModel, shared: SharedPromptCache, prompt: list[int], max_tokens: int = 40
) -> tuple[list[int], int]:
    """What the batch engine does for one request: fetch, prefill to the last token stopping
    at message boundaries, insert with the snapshots, then decode. (tokens, reused)."""
    hit = shared.fetch(prompt)
    caches = hit.caches if hit is not None else make_cache(loaded.model)
    reused = hit.reused if hit is not None else 0
    snapshots = prefill(
        loaded.model,
        caches,
        prompt[reused:-1],
        start=reused,
        prefill_step_size=256,
        checkpoints=harmony_message_boundaries(prompt, max_boundaries=2),
    )
    shared.insert(prompt[:-1], caches, single_tail=False, checkpoints=snapshots)
    steps = generate_step(mx.array(prompt[-1:]), loaded.model, cache=caches, max_tokens=max_tokens)
    return [t for t, _ in steps], reused


def test_boundaries_are_after_each_end_token() -> None:
    prompt = _conversation([5, 6, 7])
    assert harmony_message_boundaries(prompt) == [len(SYSTEM), len(SHARED), len(prompt) - 2]
    assert harmony_message_boundaries(prompt, max_boundaries=1) == [len(SYSTEM)]


def test_boundary_checkpoints_clip_the_chunks() -> None:
    marks = BoundaryCheckpoints([5, 12, 40], start=5, end=30)
    assert marks.boundaries == [12]
    assert marks.clip(5, 100) == 6
    assert marks.clip(5, 3) == 3
    assert marks.clip(11, 100) == 1  # the boundary's last token alone
    marks.after_chunk(12, [])
    assert marks.clip(12, 100) == 100


@pytest.mark.slow
def test_a_second_conversation_reuses_the_shared_instructions_exactly(
    tiny: LoadedModel, assert_same_tokens: Callable[..., None]
) -> None:
    shared = SharedPromptCache()
    first = _conversation([4000 + i for i in range(40)])
    second = _conversation([5000 + i for i in range(25)])
    _run(tiny, shared, first)
    got, reused = _run(tiny, shared, second)
    assert reused >= len(SHARED)
    want = generate(tiny.model, tiny.tokenizer, second, max_tokens=40, stop_tokens=[]).tokens
    assert_same_tokens(tiny, got, want)
    # Without checkpoints the wrapped window cannot go back: nothing is reused.
    plain = SharedPromptCache()
    plain.insert(first[:-1], _prefilled(tiny, first[:-1]), single_tail=False)
    assert plain.fetch(second) is None
    assert shared.checkpoint_nbytes > 0


@pytest.mark.slow
def test_a_third_conversation_still_finds_the_checkpoint_after_the_first_is_evicted(
    tiny: LoadedModel,
) -> None:
    shared = SharedPromptCache(max_entries=1)
    _run(tiny, shared, _conversation([4000 + i for i in range(30)]), max_tokens=2)
    _run(tiny, shared, _conversation([5000 + i for i in range(30)]), max_tokens=2)
    _, reused = _run(tiny, shared, _conversation([6000 + i for i in range(30)]), max_tokens=2)
    assert reused == len(SHARED)


@pytest.mark.slow
def test_entries_persist_to_a_folder_and_load_back(
    tiny: LoadedModel, tmp_path: Path, assert_same_tokens: Callable[..., None]
) -> None:
    shared = SharedPromptCache()
    first = _conversation([4000 + i for i in range(40)])
    _run(tiny, shared, first, max_tokens=2)
    written = shared.save(tmp_path, loaded=tiny)
    assert len(written) == 1
    (tmp_path / "prompt-foreign.safetensors").write_bytes(b"junk")
    restored = SharedPromptCache()
    result = restored.load(tmp_path, loaded=tiny)
    assert result.loaded == 1
    assert [p.name for p, _ in result.skipped] == ["prompt-foreign.safetensors"]
    second = _conversation([5000 + i for i in range(25)])
    got, reused = _run(tiny, restored, second)
    assert reused == len(SHARED)
    want = generate(tiny.model, tiny.tokenizer, second, max_tokens=40, stop_tokens=[]).tokens
    assert_same_tokens(tiny, got, want)


@pytest.mark.slow
def test_a_saved_prompt_file_with_checkpoints_serves_the_shared_cache(
    tiny: LoadedModel, tmp_path: Path
) -> None:
    first = _conversation([4000 + i for i in range(40)])
    path = write_prompt_cache(
        tmp_path / "prompt-x.safetensors",
        tiny,
        first,
        checkpoints=harmony_message_boundaries(first, max_boundaries=2),
    )
    shared = SharedPromptCache()
    assert shared.load(path.parent, loaded=tiny).loaded == 1
    hit = shared.fetch(_conversation([5000 + i for i in range(25)]))
    assert hit is not None
    assert hit.checkpoint
    assert hit.reused == len(SHARED)


def _prefilled(loaded: LoadedModel, tokens: list[int]) -> list:
    caches = make_cache(loaded.model)
    prefill(loaded.model, caches, tokens, prefill_step_size=256)
    return caches
