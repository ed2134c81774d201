"""Range checks shared by the factories and by SamplingParams, so both say the same thing."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping

import mlx.core as mx

SEED_LIMIT = 2**64


def check_number(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> float:
    """Raise a ValueError naming `name`, its allowed range and `hint` unless `value` is in it."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(
            f"{name} must be {_describe(low, high, low_open, high_open)}, got {value!r}{hint}"
        )
    return value


def check_int(name: str, value: int, *, low: int, high: int | None = None, hint: str = "") -> int:
    """Raise a ValueError unless `value` is an integer (not a bool) in [low, high]."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        kind = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise ValueError(f"{name} must be {kind}, got {value!r}{hint}")
    return value


def _describe(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def check_temperature(value: float) -> float:
    return check_number("temperature", value, low=0.0, hint=" (0 means greedy argmax)")


def check_top_p(value: float) -> float:
    return check_number(
        "top_p", value, low=0.0, high=1.0, low_open=True, hint=" (1.0 turns it off)"
    )


def check_min_p(value: float) -> float:
    return check_number("min_p", value, low=0.0, high=1.0, hint=" (0 turns it off)")


def check_min_tokens_to_keep(value: int) -> int:
    return check_int("min_tokens_to_keep", value, low=1)


def check_top_k(value: int) -> int:
    return check_int("top_k", value, low=0, hint=" (0 turns it off)")


def check_xtc_probability(value: float) -> float:
    return check_number("xtc_probability", value, low=0.0, high=1.0, hint=" (0 turns XTC off)")


def check_xtc_threshold(value: float) -> float:
    return check_number("xtc_threshold", value, low=0.0, high=0.5)


def check_token_ids(name: str, values: Iterable[int]) -> tuple[int, ...]:
    ids = tuple(values)
    for token in ids:
        if isinstance(token, bool) or not isinstance(token, numbers.Integral) or token < 0:
            raise ValueError(f"{name} must hold token ids (integers >= 0), got {token!r}")
    return tuple(int(token) for token in ids)


def check_repetition_penalty(value: float) -> float:
    return check_number(
        "repetition_penalty", value, low=0.0, low_open=True, hint=" (1.0 turns it off)"
    )


def check_additive_penalty(name: str, value: float, *, limit: float | None = None) -> float:
    """Presence and frequency penalties: any finite number, or [-limit, limit] when given."""
    low = None if limit is None else -limit
    return check_number(name, value, low=low, high=limit, hint=" (0 turns it off)")


def check_context_size(name: str, value: int) -> int:
    return check_int(name, value, low=1)


def check_logit_bias(value: Mapping[int, float]) -> dict[int, float]:
    bias: dict[int, float] = {}
    for token, amount in value.items():
        if isinstance(token, bool) or not isinstance(token, numbers.Integral) or token < 0:
            raise ValueError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
        if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or math.isnan(amount):
            raise ValueError(
                f"logit_bias[{token}] must be a number (-inf bans the token), got {amount!r}"
            )
        bias[int(token)] = float(amount)
    return bias


def check_seed(value: int) -> int:
    return check_int("seed", value, low=0, high=SEED_LIMIT - 1)


def check_key(key: mx.array) -> mx.array:
    if not isinstance(key, mx.array) or key.shape != (2,) or key.dtype != mx.uint32:
        got = f"shape {key.shape}, dtype {key.dtype}" if isinstance(key, mx.array) else repr(key)
        raise ValueError(
            f"key must be a PRNG key from mx.random.key(seed) (shape (2,), uint32), got {got}"
        )
    return key
