"""Placeholders in prompt-config text: time tokens and ``{name}`` values, expanded once at load.

Expanding once (not per turn) keeps the rendered prompt prefix identical for the whole session,
so its KV cache can be reused.

Time tokens (for ``now`` = 2025-01-31 14:05:09 in Paris):

==================  ==========================================  ============================
token               format                                      example
==================  ==========================================  ============================
``<|DATE|>``        local date, ``%Y-%m-%d``                    ``2025-01-31``
``<|DATETIME|>``    local ISO 8601 date-time to the second,     ``2025-01-31T14:05:09+01:00``
                    with UTC offset
``<|TIMEZ|>``       local time ``%H:%M:%S`` and zone name       ``14:05:09 CET``
``<|TIMEU|>``       UTC time ``%H:%M:%S`` and ``UTC``           ``13:05:09 UTC``
==================  ==========================================  ============================

The tokens are matched in any case (``<|date|>`` is ``<|DATE|>``), as in mlx-harmony 0.4.

A fixed-offset zone (a deterministic time given as ``...+01:00``) is named ``UTC+01:00``.

``{name}`` is replaced by ``placeholders[name]`` as ``str.format_map`` would, except that only
``{identifier}`` groups whose name is defined are touched: unknown names, format specs
(``{name:>5}``), positional fields and JSON objects are left exactly as written. There is no
escape (``{{name}}`` gives ``{value}``), so a literal ``{name}`` for a defined name needs
another placeholder name. Values go in verbatim (time
tokens in them are expanded too) and may not contain other ``{placeholders}``, so expanding
twice gives the same text as expanding once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

__all__ = [
    "TIME_TOKENS",
    "expand_placeholders",
    "parse_deterministic_time",
    "time_token_values",
]

TIME_TOKENS = ("<|DATE|>", "<|DATETIME|>", "<|TIMEZ|>", "<|TIMEU|>")
NAME_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TIME_RE = re.compile("|".join(re.escape(token) for token in TIME_TOKENS), re.IGNORECASE)


def time_token_values(now: datetime) -> dict[str, str]:
    """The text of each time token at `now` (naive datetimes are taken as local time)."""
    local = now if now.tzinfo is not None else now.astimezone()
    utc = local.astimezone(UTC)
    zone = local.tzname() or local.strftime("%z")
    return {
        "<|DATE|>": local.strftime("%Y-%m-%d"),
        "<|DATETIME|>": local.isoformat(timespec="seconds"),
        "<|TIMEZ|>": f"{local:%H:%M:%S} {zone}",
        "<|TIMEU|>": f"{utc:%H:%M:%S} UTC",
    }


def parse_deterministic_time(text: str) -> datetime:
    """An ISO 8601 date-time; without an offset it is taken as UTC, so results never depend
    on the machine's zone."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"deterministic_time_iso must be an ISO 8601 date-time such as "
            f"'2025-01-31T14:05:09+01:00', got {text!r}"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def expand_placeholders(
    text: str, *, values: Mapping[str, str] | None = None, now: datetime | None = None
) -> str:
    """`text` with ``{name}`` from `values`, then the time tokens at `now`, replaced."""
    if values:
        text = NAME_RE.sub(lambda m: values.get(m.group(1), m.group(0)), text)
    if now is not None and "<|" in text:
        times = time_token_values(now)
        text = _TIME_RE.sub(lambda m: times[m.group(0).upper()], text)
    return text
