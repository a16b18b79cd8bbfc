"""Time as ChangeCast stores it: ISO-8601 UTC strings with milliseconds, and epoch ms.

Timestamps are stored as these strings: they sort correctly, read well in JSON,
and survive NX-27017, which turns a ``$set`` of a datetime into text.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds, e.g. ``2026-11-22T04:30:00.123Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    """Now, as :func:`iso`."""
    return iso(datetime.now(UTC))


def iso_seconds_ago(seconds: float) -> str:
    """``seconds`` ago, as :func:`iso`."""
    return iso(datetime.now(UTC) - timedelta(seconds=seconds))


def now_ms() -> int:
    """Now in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def ms_between(start: str, end: str) -> float:
    """Milliseconds from one :func:`iso` time to another (0.0 when either is unreadable)."""
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        return 0.0
    return round((b - a).total_seconds() * 1000, 1)
