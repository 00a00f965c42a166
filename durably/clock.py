"""One clock for the whole engine, so tests can replace time without sleeping."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    """Where durably gets wall-clock time (stored timestamps) and monotonic time (waits)."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()


def to_db(dt: datetime) -> str:
    """The stored form of a timestamp: fixed-width ISO-8601 UTC, so text order is time order."""
    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond:06d}Z"
    )


def from_db(value: str | None) -> datetime | None:
    """Parse a stored timestamp back into an aware UTC datetime."""
    if value is None:
        return None
    return datetime.fromisoformat(value[:-1]).replace(tzinfo=timezone.utc)
