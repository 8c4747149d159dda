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
