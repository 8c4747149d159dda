"""Wall-clock timestamps as the run state, the files and the event stream record them (pure-ish).

One format everywhere: ISO-8601 UTC with milliseconds and a ``Z``, e.g.
``2025-01-31T12:00:00.123Z``, so timestamps from SQLite, ``metadata.json`` and ``/v1/events``
compare and sort as text.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> str:
    """Now, as an ISO-8601 UTC timestamp with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age_s(stamp: str, now: datetime | None = None) -> float:
    """Seconds from ``stamp`` (as :func:`utc_now` writes it) to ``now`` (0 for a stamp not understood)."""
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return max(0.0, ((now or datetime.now(UTC)) - then).total_seconds())
