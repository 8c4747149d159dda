"""Reading the service's JSON-lines log (pure): parse, filter and format lines for ``daydreamctl logs``.

Each line the service writes is one JSON object with ``event``, ``level`` and ``timestamp`` (ISO,
UTC) and, for events about a generation, ``gen_id``, ``stage`` and ``model`` (see
:mod:`daydreamd.daemon.logconfig`). This module turns such lines into readable ones::

    2026-11-22 03:01:02.123  WARN   generation_failed  d_ab12cd34ef567890 draft gemini  error_type=rate_limit

Times are shown in UTC (as logged), so they read the same on every machine and match the file.

Lines that are not JSON objects (a traceback printed straight into the file, say) are never an
error: they are shown as they are, together with the record they follow. That is, such a line
is hidden exactly when the JSON record before it was filtered out; before any record, it is
shown. :class:`Selector` (reading forwards) and :func:`select_last` (reading backwards from the
end of a file) apply the same rule.

Nothing here does I/O; :mod:`daydreamd.cli.logs` reads the files and prints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click

LEVELS = ("debug", "info", "warning", "error", "critical")
"""The levels, lowest first; ``--level L`` keeps L and everything above it."""
LEVEL_RANK = {name: rank for rank, name in enumerate(LEVELS)} | {
    "warn": 2,
    "exception": 3,
    "fatal": 4,
}
LEVEL_LABELS = {"debug": "DEBUG", "info": "INFO", "warning": "WARN", "error": "ERROR", "critical": "CRIT"}
LEVEL_STYLES: dict[str, dict[str, Any]] = {
    "debug": {"fg": "blue"},
    "info": {"fg": "green"},
    "warning": {"fg": "yellow", "bold": True},
    "error": {"fg": "red", "bold": True},
    "critical": {"fg": "white", "bg": "red", "bold": True},
}
POSITIONAL_KEYS = ("gen_id", "stage", "model")
"""Shown as bare values right after the event, in this order, when present."""
POSITIONAL_STYLES: dict[str, dict[str, Any]] = {
    "gen_id": {"fg": "cyan"},
    "stage": {"fg": "magenta"},
    "model": {"fg": "blue"},
}
FIRST_KEYS = ("error_type", "message", "error", "cohort_id")
"""Shown first among the ``key=value`` pairs; the other keys follow in the order they were logged."""
ERROR_KEYS = frozenset({"error_type", "error"})
BLOCK_KEYS = ("exception", "stack")
"""Multi-line values (a traceback), shown in full on the lines below the record, indented."""
SKIPPED_KEYS = frozenset({"event", "level", "timestamp", *POSITIONAL_KEYS, *BLOCK_KEYS})
MAX_VALUE = 160
"""Longer values are cut to this many characters, ending in ``...`` (``--json`` shows everything)."""
TIME_WIDTH = len("2026-11-22 03:01:02.123")
ELLIPSIS = "..."

_DURATION = re.compile(r"(\d+)\s*(s|m|h|d|w)", re.IGNORECASE)
_DURATION_WHOLE = re.compile(r"\s*(?:\d+\s*[smhdw]\s*)+", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_BARE = re.compile(r"[^\s\"'=\\]+")


# -- parsing -----------------------------------------------------------------------------------


def parse_line(line: str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None when the line is not one (blank, text, a JSON list...)."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_timestamp(value: Any) -> datetime | None:
    """A record's ``timestamp`` as an aware UTC datetime; None when missing or unreadable.

    ISO strings (``2026-11-22T03:01:02.123456Z``) are what the service writes; naive ones are
    taken as UTC, and numbers as seconds since the epoch.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_since(text: str, now: datetime) -> datetime:
    """``--since``: a duration back from ``now`` (``30s``, ``10m``, ``2h``, ``1d``, ``1w``, ``1h30m``) or an
    ISO time (``2026-11-22``, ``2026-11-22 03:00``, ``2026-11-22T03:00:00+01:00``; naive means UTC).

    Raises ValueError with a message fit for the user.
    """
    stripped = text.strip()
    if _DURATION_WHOLE.fullmatch(stripped):
        seconds = sum(int(n) * _UNIT_SECONDS[unit.lower()] for n, unit in _DURATION.findall(stripped))
        return now - timedelta(seconds=seconds)
    since = parse_timestamp(stripped) if stripped and not stripped.isdigit() else None
    if since is None:
        raise ValueError(
            f"{text!r} is neither a duration (30s, 10m, 2h, 1d) nor an ISO time (2026-11-22T03:00:00Z)"
        )
    return since


def level_rank(level: Any) -> int | None:
    """The rank of a level name (any case, ``warn`` and ``exception`` accepted); None if unknown."""
    return LEVEL_RANK.get(level.lower()) if isinstance(level, str) else None


# -- filtering ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LogFilter:
    """Which records to show; every criterion given must hold (None: no condition).

    ``gen_id`` matches as a prefix, so an id cut short still finds its records; ``stage`` and
    ``model`` match exactly. Records with an unknown level fail ``min_level``; records without
    a readable timestamp fail ``since``.
    """

    min_level: str | None = None
    stage: str | None = None
    gen_id: str | None = None
    model: str | None = None
    since: datetime | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.min_level, self.stage, self.gen_id, self.model, self.since))

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.min_level is not None:
            rank = level_rank(record.get("level"))
            if rank is None or rank < LEVEL_RANK[self.min_level.lower()]:
                return False
        if self.stage is not None and record.get("stage") != self.stage:
            return False
        if self.model is not None and record.get("model") != self.model:
            return False
        if self.gen_id is not None:
            gen_id = record.get("gen_id")
            if not isinstance(gen_id, str) or not gen_id.startswith(self.gen_id):
                return False
        if self.since is not None:
            when = parse_timestamp(record.get("timestamp"))
            return when is not None and when >= self.since
        return True

    def older_than_since(self, record: Mapping[str, Any]) -> bool:
        """True when ``since`` is set and the record's readable timestamp is before it."""
        if self.since is None:
            return False
        when = parse_timestamp(record.get("timestamp"))
        return when is not None and when < self.since


@dataclass(frozen=True, slots=True)
class Entry:
    """One line to show: the raw text (no newline) and its record (None for a non-JSON line)."""

    raw: str
    record: dict[str, Any] | None


class Selector:
    """Filters lines read forwards, keeping non-JSON lines with the record they follow.

    ``previous`` is whether the last JSON record was shown (None: none seen yet, so a leading
    non-JSON line is shown).
    """

    def __init__(self, log_filter: LogFilter, previous: bool | None = None) -> None:
        self.filter = log_filter
        self.previous = previous

    def feed(self, line: str) -> Entry | None:
        """The entry to show for ``line``, or None to skip it (filtered out, or blank)."""
        raw = line.rstrip("\r\n")
        if not raw.strip():
            return None
        record = parse_line(raw)
        if record is None:
            return Entry(raw, None) if self.previous is not False else None
        self.previous = self.filter.matches(record)
        return Entry(raw, record) if self.previous else None


@dataclass(frozen=True, slots=True)
class Tail:
    """What :func:`select_last` found: the entries, oldest first, and whether the file's last JSON
    record was shown (to carry on with a :class:`Selector` when following)."""

    entries: list[Entry]
    last_shown: bool | None


def select_last(lines_backwards: Iterable[str], log_filter: LogFilter, n: int) -> Tail:
    """The last ``n`` entries to show, from lines given newest first (a file read from its end).

    Reading stops as soon as ``n`` entries are found, or, with ``since``, at the first record
    older than it (the log is in time order), so a large file is read only as far back as needed.
    """
    if n <= 0:
        return Tail(entries=[], last_shown=None)
    found: list[Entry] = []  # newest first
    pending: list[Entry] = []  # non-JSON lines after the record not yet seen, newest first
    last_shown: bool | None = None
    reached_start = True
    for line in lines_backwards:
        raw = line.rstrip("\r\n")
        if not raw.strip():
            continue
        record = parse_line(raw)
        if record is None:
            pending.append(Entry(raw, None))
            continue
        shown = log_filter.matches(record)
        if last_shown is None:
            last_shown = shown
        if shown:
            found.extend(pending)
            found.append(Entry(raw, record))
        pending = []
        if len(found) >= n or log_filter.older_than_since(record):
            reached_start = False
            break
    if reached_start:
        found.extend(pending)  # non-JSON lines at the top of the file follow no record: shown
    return Tail(entries=found[:n][::-1], last_shown=last_shown)


# -- formatting --------------------------------------------------------------------------------


def format_entry(entry: Entry, *, color: bool, max_value: int = MAX_VALUE) -> str:
    """The readable text of an entry: a formatted record, or a non-JSON line exactly as it was."""
    if entry.record is None:
        return entry.raw
    return format_record(entry.record, color=color, max_value=max_value)


def format_record(record: Mapping[str, Any], *, color: bool, max_value: int = MAX_VALUE) -> str:
    """``TIME  LEVEL  event  gen_id stage model  key=value ...``, plus any traceback on the lines below.

    Time is UTC to the millisecond; values longer than ``max_value`` end in ``...``; colours
    (ANSI, through click.style) only when ``color``.
    """

    def style(text: str, **styles: Any) -> str:
        return click.style(text, **styles) if color and styles else text

    level = str(record.get("level", "")).lower()
    level = {"warn": "warning", "exception": "error", "fatal": "critical"}.get(level, level)
    label = LEVEL_LABELS.get(level, level.upper()[:5] or "-")
    parts = [
        style(format_time(record.get("timestamp")).ljust(TIME_WIDTH), dim=True),
        style(label.ljust(5), **LEVEL_STYLES.get(level, {})),
        style(_short(_text(record.get("event", "-")), max_value), bold=True),
    ]
    line = "  ".join(parts)
    positional = [
        style(_short(_text(record[key]), max_value), **POSITIONAL_STYLES[key])
        for key in POSITIONAL_KEYS
        if record.get(key) not in (None, "")
    ]
    if positional:
        line += "  " + " ".join(positional)
    keys = [key for key in FIRST_KEYS if key in record]
    keys += [key for key in record if key not in SKIPPED_KEYS and key not in FIRST_KEYS]
    pairs = []
    for key in keys:
        value = _short(_value(record[key]), max_value)
        value_style: dict[str, Any] = {"fg": "red"} if key in ERROR_KEYS else {}
        pairs.append(style(f"{key}=", dim=True) + style(value, **value_style))
    if pairs:
        line += "  " + " ".join(pairs)
    for key in BLOCK_KEYS:
        block = record.get(key)
        if block not in (None, ""):
            text = block if isinstance(block, str) else json.dumps(block, ensure_ascii=False)
            line += "".join("\n    " + style(row, dim=True) for row in text.rstrip("\n").splitlines())
    return line


def format_time(value: Any) -> str:
    """``2026-11-22 03:01:02.123`` in UTC; the value as it is when it is not a readable time."""
    when = parse_timestamp(value)
    if when is None:
        return "-" if value is None else str(value)
    return when.strftime("%Y-%m-%d %H:%M:%S") + f".{when.microsecond // 1000:03d}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _value(value: Any) -> str:
    """A value for ``key=value``: bare when it is one plain word, else JSON (quoted, escapes shown)."""
    if isinstance(value, str) and _BARE.fullmatch(value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS
