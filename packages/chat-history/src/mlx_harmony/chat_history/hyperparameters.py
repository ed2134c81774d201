"""Per-turn hyperparameters stored as changes: compute a change, apply one, compare values.

A log records the full values once and afterwards only what changed, so comparisons must be
exact about JSON types: ``1``, ``1.0`` and ``true`` are three different values here, although
Python calls them equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["apply_hyperparameter_change", "diff_hyperparameters", "json_equal"]


_MISSING = object()
_SCALARS = frozenset({str, int, float, bool, type(None)})


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values that, unlike ``==``, tells ``1``, ``1.0`` and ``True`` apart."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # NaN equals itself here


def diff_hyperparameters(
    previous: Mapping[str, Any], current: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """What to store for a turn: the keys that are new or changed, and the keys now unset
    (sorted, so that the stored form does not depend on the order keys were written in)."""
    if current == previous:  # the usual case: one C-level check of keys, types, scalars
        types = list(map(type, current.values()))
        if (
            _SCALARS.issuperset(types)
            and types == list(map(type, previous.values()))
            and list(current) == list(previous)
        ):
            return {}, []
    changed: dict[str, Any] = {}
    for k, v in current.items():
        p = previous.get(k, _MISSING)
        if p is v or (type(p) is type(v) and type(v) in _SCALARS and p == v):
            continue  # the common case, without a call
        if p is _MISSING or not json_equal(p, v):
            changed[k] = v
    unset = sorted(k for k in previous if k not in current)  # sorted: a list has an order
    return changed, unset


def apply_hyperparameter_change(
    previous: Mapping[str, Any],
    changed: Mapping[str, Any] | None,
    unset: Iterable[str] = (),
) -> dict[str, Any]:
    """The effective values after one stored change (a new dict; ``previous`` is untouched)."""
    out = dict(previous)
    for key in unset:
        out.pop(key, None)
    if changed:
        out.update(changed)
    return out
