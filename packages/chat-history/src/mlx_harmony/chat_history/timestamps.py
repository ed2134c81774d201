"""Timestamps in both forms chat logs have used: ISO 8601 strings and ``{"unix", "iso"}`` objects.

The original mlx-harmony wrote some times as ``{"unix": 1736251200.0, "iso":
"2025-01-07T00:00:00Z"}`` and others as plain ISO strings; every version of the schema reads
both, everywhere a time appears. The ISO text wins (it keeps the offset); a naive ISO text
next to a ``unix`` value gets the offset the two imply, so local times keep their zone. When
the two name different moments, the object is also kept as written (``keep_disagreeing``),
so a migration loses neither.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, TypeGuard

from pydantic import AfterValidator, AwareDatetime, BeforeValidator

__all__ = [
    "LegacyTimestamp",
    "Timestamp",
    "keep_disagreeing",
    "read_timestamp_object",
    "render_iso",
]


def read_timestamp_object(value: Any) -> Any:
    """A ``{"unix", "iso"}`` object as a ``datetime``; anything else is returned unchanged
    for pydantic to validate (and to refuse with its own message)."""
    if not isinstance(value, dict):
        return value
    unknown = set(value) - {"unix", "iso"}
    if unknown or not value:
        raise ValueError(
            'a timestamp object has "unix" and/or "iso" keys, '
            f"got {', '.join(sorted(map(str, unknown))) or 'none'}"
        )
    iso, unix = value.get("iso"), value.get("unix")
    if unix is not None and (type(unix) not in (int, float) or unix != unix):
        raise ValueError(f'"unix" must be seconds since 1970 as a number, got {unix!r}')
    if iso is None:
        if unix is None:
            raise ValueError('a timestamp object needs "iso" or "unix"')
        return datetime.fromtimestamp(unix, UTC)
    if not isinstance(iso, str):
        raise ValueError(f'"iso" must be ISO 8601 text, got {iso!r}')
    try:
        parsed = datetime.fromisoformat(iso)
    except ValueError as exc:
        raise ValueError(
            f'"iso" is not ISO 8601 text such as 2025-01-07T00:00:00Z: {iso!r}'
        ) from exc
    if parsed.tzinfo is None:
        if unix is None:
            return parsed.replace(tzinfo=UTC)
        utc = datetime.fromtimestamp(unix, UTC).replace(tzinfo=None)
        minutes = round((parsed - utc).total_seconds() / 60)
        if abs(minutes) > 18 * 60:
            return parsed.replace(tzinfo=UTC)  # the two disagree: the text wins, read as UTC
        return parsed.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    return parsed


def _assume_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


#: A time in a current (v2 or v3) log: aware ISO 8601, or a ``{"unix", "iso"}`` object.
Timestamp = Annotated[AwareDatetime, BeforeValidator(read_timestamp_object)]

#: A time in a legacy log: as ``Timestamp``, and naive ISO text is read as UTC.
LegacyTimestamp = Annotated[
    datetime, BeforeValidator(read_timestamp_object), AfterValidator(_assume_utc)
]


def render_iso(value: datetime | None) -> str | None:
    """ISO 8601 as pydantic writes it (``Z`` for UTC), so migrated and saved text agree."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _disagrees(value: Any) -> TypeGuard[dict[str, Any]]:
    """Whether ``value`` is a ``{"unix", "iso"}`` object whose two parts name different moments."""
    if not isinstance(value, dict) or "unix" not in value or "iso" not in value:
        return False
    try:
        parsed = read_timestamp_object(value)
    except ValueError:
        return False
    return isinstance(parsed, datetime) and abs(parsed.timestamp() - value["unix"]) > 1.0


def keep_disagreeing(raw: Any, fields: tuple[str, ...], out: dict[str, Any]) -> None:
    """For each of ``fields`` whose ``{"unix", "iso"}`` object in ``raw`` names two different
    moments (more than a second apart), set ``out[f"{field}_as_written"]`` to a copy of it:
    the ISO text is what the log reads, the object what the file said."""
    if not isinstance(raw, dict):
        return
    for field in fields:
        value = raw.get(field)
        if _disagrees(value):
            out[f"{field}_as_written"] = dict(value)
