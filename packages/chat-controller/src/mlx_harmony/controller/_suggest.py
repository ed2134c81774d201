"""'Did you mean' for unknown keys, settings, profiles and commands."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["by_closeness", "closest"]


def by_closeness(name: str, choices: Iterable[str]) -> list[str]:
    """All `choices`, the most similar to `name` first (ties keep the given order)."""
    lowered = name.lower()
    return sorted(choices, key=lambda c: -difflib.SequenceMatcher(None, lowered, c.lower()).ratio())


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice close enough to `name` to suggest, if any."""
    lowered = {c.lower(): c for c in choices}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[match[0]] if match else None
