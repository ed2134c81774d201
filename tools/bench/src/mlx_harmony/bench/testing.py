"""Test doubles: plausible records and a target that answers without a model."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .prompts import Prompt
from .records import TurnRecord

__all__ = ["ScriptedTarget", "make_record"]


def make_record(**fields: Any) -> TurnRecord:
    """A successful record with plausible values; `fields` override them."""
    values: dict[str, Any] = {
        "prompt_id": "p-1",
        "turn": 0,
        "target": "local",
        "category": "question",
        "prompt_tokens": 100,
        "reused_prompt_tokens": 0,
        "context_tokens": 100,
        "ttft_s": 0.1,
        "prefill_tokens_per_s": 1000.0,
        "decode_tokens_per_s": 50.0,
        "completion_tokens": 40,
        "reasoning_tokens": 10,
        "stop_reason": "stop",
        "retries": 0,
        "peak_memory_gb": 0.5,
        "wall_s": 1.0,
    }
    values.update(fields)
    return TurnRecord.model_validate(values)


@dataclass
class ScriptedTarget:
    """A `Target` that "answers" each turn after `delay` seconds with `completion_tokens`
    tokens; `fail` (prompt id -> message) makes those prompts' first turn fail."""

    name: str = "local"
    concurrent: bool = False
    completion_tokens: int = 10
    delay: float = 0.0
    fail: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def run_conversation(
        self,
        prompt: Prompt,
        *,
        max_tokens: int,
        client: int = 0,
        on_turn: Callable[[TurnRecord], None] | None = None,
    ) -> list[TurnRecord]:
        with self._lock:
            self.calls.append((prompt.id, max_tokens, client))
        records = []
        for index, _ in enumerate(prompt.turns):
            if self.delay:
                time.sleep(self.delay)
            if prompt.id in self.fail:
                record = TurnRecord(
                    prompt_id=prompt.id,
                    turn=index,
                    target=self.name,
                    category=prompt.category,
                    client=client,
                    error=self.fail[prompt.id],
                )
            else:
                record = make_record(
                    prompt_id=prompt.id,
                    turn=index,
                    target=self.name,
                    category=prompt.category,
                    client=client,
                    completion_tokens=min(self.completion_tokens, max_tokens),
                    wall_s=self.delay or 0.01,
                )
            records.append(record)
            if on_turn is not None:
                on_turn(record)
            if record.error is not None:
                break
        return records
