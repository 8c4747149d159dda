"""Pins how ``daydreamctl logs`` reads the service's log: --since, filters, non-JSON lines, formatting.

Everything here is pure (:mod:`daydreamd.cli.logview`); reading real files is in
``tests/shell/test_ctl_logs.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daydreamd.cli.logview import (
    Entry,
    LogFilter,
    Selector,
    format_entry,
    format_record,
    format_time,
    level_rank,
    parse_line,
    parse_since,
    parse_timestamp,
    select_last,
)

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def record(**fields: Any) -> dict[str, Any]:
    """A record as the service writes it: the given keys, then event, level and timestamp."""
    base = {"event": "something_happened", "level": "info", "timestamp": "2026-11-22T03:01:02.123456Z"}
    return {key: value for key, value in fields.items() if key not in base} | {
        key: fields.get(key, value) for key, value in base.items()
    }


def line(**fields: Any) -> str:
    return json.dumps(record(**fields))


# ---- --since ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", NOW - timedelta(seconds=30)),
        ("10m", NOW - timedelta(minutes=10)),
        ("2h", NOW - timedelta(hours=2)),
        ("1d", NOW - timedelta(days=1)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        (" 2H ", NOW - timedelta(hours=2)),
        ("0s", NOW),
        ("2026-11-22", datetime(2026, 11, 22, tzinfo=UTC)),
        ("2026-11-22 03:00", datetime(2026, 11, 22, 3, tzinfo=UTC)),
        ("2026-11-22T03:00:00Z", datetime(2026, 11, 22, 3, tzinfo=UTC)),
        ("2026-11-22T04:00:00+01:00", datetime(2026, 11, 22, 3, tzinfo=UTC)),
        ("2026-11-22T03:01:02.5", datetime(2026, 11, 22, 3, 1, 2, 500000, tzinfo=UTC)),
    ],
)
def test_parse_since(text: str, expected: datetime) -> None:
    """Durations count back from now; ISO times are taken as written (naive ones as UTC)."""
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "10", "5x", "m", "-5m", "yesterday", "1.5h", "2026-13-01"])
def test_parse_since_rejects(text: str) -> None:
    """Anything else is an error that says what is accepted."""
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since(text, NOW)


# ---- parsing lines and times -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"event": "x", "level": "info"}', {"event": "x", "level": "info"}),
        ('  {"event": "x"}  \n', {"event": "x"}),
        ("{}", {}),
        ("[1, 2]", None),
        ('"just a string"', None),
        ("42", None),
        ("Traceback (most recent call last):", None),
        ('{"event": "cut off', None),
        ("{not json at all}", None),
        ("", None),
    ],
)
def test_parse_line(text: str, expected: dict[str, Any] | None) -> None:
    """Only a JSON object is a record; anything else is a plain line."""
    assert parse_line(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-22T03:01:02.123456Z", datetime(2026, 11, 22, 3, 1, 2, 123456, tzinfo=UTC)),
        ("2026-11-22T04:01:02+01:00", datetime(2026, 11, 22, 3, 1, 2, tzinfo=UTC)),
        ("2026-11-22T03:01:02", datetime(2026, 11, 22, 3, 1, 2, tzinfo=UTC)),
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1.5, datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)),
        ("yesterday", None),
        (None, None),
        (True, None),
        (["2026-11-22"], None),
        (1e20, None),
    ],
)
def test_parse_timestamp(value: Any, expected: datetime | None) -> None:
    assert parse_timestamp(value) == expected


@pytest.mark.parametrize(
    ("level", "rank"),
    [
        ("debug", 0),
        ("INFO", 1),
        ("warning", 2),
        ("warn", 2),
        ("error", 3),
        ("exception", 3),
        ("critical", 4),
        ("fatal", 4),
        ("notice", None),
        (None, None),
        (30, None),
    ],
)
def test_level_rank(level: Any, rank: int | None) -> None:
    assert level_rank(level) == rank


# ---- filtering -------------------------------------------------------------------------------

FAILED = record(
    level="warning", event="generation_failed", gen_id="d_ab12cd34ef567890", stage="draft", model="gemini"
)


@pytest.mark.parametrize(
    ("log_filter", "rec", "shown"),
    [
        (LogFilter(), FAILED, True),
        (LogFilter(), {}, True),
        (LogFilter(min_level="debug"), FAILED, True),
        (LogFilter(min_level="warning"), FAILED, True),
        (LogFilter(min_level="WARNING"), FAILED, True),
        (LogFilter(min_level="error"), FAILED, False),
        (LogFilter(min_level="warning"), record(level="info"), False),
        (LogFilter(min_level="warning"), record(level="error"), True),
        (LogFilter(min_level="warning"), record(level="critical"), True),
        (LogFilter(min_level="warning"), record(level="warn"), True),
        (LogFilter(min_level="debug"), record(level="notice"), False),
        (LogFilter(min_level="debug"), {"event": "no level"}, False),
        (LogFilter(stage="draft"), FAILED, True),
        (LogFilter(stage="essay"), FAILED, False),
        (LogFilter(stage="draft"), record(), False),
        (LogFilter(model="gemini"), FAILED, True),
        (LogFilter(model="gem"), FAILED, False),
        (LogFilter(gen_id="d_ab12cd34ef567890"), FAILED, True),
        (LogFilter(gen_id="d_ab12"), FAILED, True),
        (LogFilter(gen_id="e_ab12"), FAILED, False),
        (LogFilter(gen_id="d_ab12"), record(gen_id=None), False),
        (LogFilter(since=datetime(2026, 11, 22, 3, 1, tzinfo=UTC)), FAILED, True),
        (LogFilter(since=datetime(2026, 11, 22, 3, 1, 2, 123456, tzinfo=UTC)), FAILED, True),
        (LogFilter(since=datetime(2026, 11, 22, 3, 2, tzinfo=UTC)), FAILED, False),
        (LogFilter(since=datetime(2026, 11, 22, tzinfo=UTC)), record(timestamp="garbage"), False),
        (LogFilter(since=datetime(2026, 11, 22, tzinfo=UTC)), {"event": "no time"}, False),
        (LogFilter(min_level="warning", stage="draft", model="gemini", gen_id="d_"), FAILED, True),
        (LogFilter(min_level="warning", stage="draft", model="other", gen_id="d_"), FAILED, False),
    ],
)
def test_filter(log_filter: LogFilter, rec: dict[str, Any], shown: bool) -> None:
    """Every criterion given must hold; --level is "at or above"; --gen-id is a prefix."""
    assert log_filter.matches(rec) is shown


WARN = line(level="warning", event="w")
INFO = line(level="info", event="i")
TEXT = "Traceback (most recent call last):"


@pytest.mark.parametrize(
    ("lines", "shown"),
    [
        ([TEXT, INFO, WARN], [TEXT, WARN]),  # a leading plain line follows no record: shown
        ([WARN, TEXT, "  more", INFO, TEXT], [WARN, TEXT, "  more"]),  # plain lines go with their record
        ([INFO, TEXT, WARN, "", "   ", WARN], [WARN, WARN]),  # blank lines are dropped
        ([INFO, "[1, 2]", WARN, '"str"'], [WARN, '"str"']),  # JSON that is not an object is plain text
    ],
)
def test_plain_lines_go_with_the_record_before(lines: list[str], shown: list[str]) -> None:
    """With --level warning, forwards and backwards (all of them as the last N) agree."""
    log_filter = LogFilter(min_level="warning")
    selector = Selector(log_filter)
    forwards = [entry.raw for text in lines if (entry := selector.feed(text)) is not None]
    backwards = [entry.raw for entry in select_last(reversed(lines), log_filter, 100).entries]
    assert forwards == shown
    assert backwards == shown


def test_without_filters_every_line_is_shown() -> None:
    lines = [INFO, TEXT, WARN, "{broken", INFO]
    assert [e.raw for e in select_last(reversed(lines), LogFilter(), 10).entries] == lines


@pytest.mark.parametrize(
    ("n", "expected"), [(0, []), (1, ["i4"]), (2, ["i3", "i4"]), (9, ["i1", "i3", "i4"])]
)
def test_select_last_keeps_the_newest_n(n: int, expected: list[str]) -> None:
    lines = [line(event="i1"), line(event="w2", level="warning"), line(event="i3"), line(event="i4")]
    tail = select_last(reversed(lines), LogFilter(min_level="info"), n)
    events = [e.record["event"] for e in tail.entries if e.record]
    assert [e for e in events if e != "w2"] == expected


def test_select_last_counts_plain_lines_and_cuts_at_n() -> None:
    """A record and its traceback lines are N lines; the oldest are cut when they do not fit."""
    lines = [WARN, TEXT, "  File x", "ZeroDivisionError"]
    assert [e.raw for e in select_last(reversed(lines), LogFilter(), 2).entries] == lines[-2:]


def test_select_last_reports_whether_the_last_record_was_shown() -> None:
    """So following carries on: a plain line after a hidden record stays hidden."""
    assert select_last(reversed([WARN, INFO, TEXT]), LogFilter(min_level="warning"), 5).last_shown is False
    assert select_last(reversed([INFO, WARN]), LogFilter(min_level="warning"), 5).last_shown is True
    assert select_last(reversed([TEXT]), LogFilter(), 5).last_shown is None


def counting(lines: list[str], read: list[str]) -> Iterator[str]:
    for text in lines:
        read.append(text)
        yield text


def test_select_last_reads_only_as_far_back_as_needed() -> None:
    """The last N found: reading stops (a big file is read only from its end)."""
    lines = [line(event=f"e{i}") for i in range(1000)]
    read: list[str] = []
    tail = select_last(counting(lines[::-1], read), LogFilter(), 3)
    assert [e.record["event"] for e in tail.entries if e.record] == ["e997", "e998", "e999"]
    assert len(read) == 3


def test_select_last_stops_at_the_first_record_older_than_since() -> None:
    """The log is in time order, so the first older record (reading backwards) ends the search."""
    start = datetime(2026, 11, 22, 3, tzinfo=UTC)
    lines = [line(event=f"e{i}", timestamp=(start + timedelta(minutes=i)).isoformat()) for i in range(100)]
    lines.insert(96, "a plain line belongs to e95, which is too old")
    read: list[str] = []
    since = start + timedelta(minutes=96)
    tail = select_last(counting(lines[::-1], read), LogFilter(since=since), 50)
    assert [e.raw for e in tail.entries] == lines[-4:]
    assert len(read) == 6  # e99..e96, the plain line, e95


@given(
    st.lists(
        st.sampled_from(
            [WARN, INFO, TEXT, line(level="error", stage="essay"), line(level="debug", stage="draft"), ""]
        ),
        max_size=30,
    ),
    st.integers(min_value=0, max_value=35),
    st.sampled_from(
        [LogFilter(), LogFilter(min_level="warning"), LogFilter(stage="essay"), LogFilter(min_level="error")]
    ),
)
def test_backwards_is_the_end_of_forwards(lines: list[str], n: int, log_filter: LogFilter) -> None:
    """Reading from the end gives exactly the last N lines reading from the start would show."""
    selector = Selector(log_filter)
    forwards = [entry for text in lines if (entry := selector.feed(text)) is not None]
    tail = select_last(reversed(lines), log_filter, n)
    assert tail.entries == (forwards[-n:] if n else [])


# ---- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rec", "expected"),
    [
        (
            record(
                gen_id="d_ab12cd34ef567890",
                stage="draft",
                model="gemini",
                error_type="rate_limit",
                message="slow down",
                event="generation_failed",
                level="warning",
            ),
            "2026-11-22 03:01:02.123  WARN   generation_failed  d_ab12cd34ef567890 draft gemini"
            '  error_type=rate_limit message="slow down"',
        ),
        (
            record(socket="/run/x.sock", cohort_id="cohort_abc", event="service_ready"),
            "2026-11-22 03:01:02.123  INFO   service_ready  cohort_id=cohort_abc socket=/run/x.sock",
        ),
        (
            record(first=["a", "b"], outcomes={"done": 3}, ok=True, n=2, none=None, empty="", level="debug"),
            '2026-11-22 03:01:02.123  DEBUG  something_happened  first=["a","b"] outcomes={"done":3}'
            ' ok=true n=2 none=null empty=""',
        ),
        (
            record(level="error", message='say "hi"\nbye', path="a=b"),
            '2026-11-22 03:01:02.123  ERROR  something_happened  message="say \\"hi\\"\\nbye" path="a=b"',
        ),
        (record(level="critical"), "2026-11-22 03:01:02.123  CRIT   something_happened"),
        (record(level="exception"), "2026-11-22 03:01:02.123  ERROR  something_happened"),
        (record(level="notice"), "2026-11-22 03:01:02.123  NOTIC  something_happened"),
        (record(stage="essay", model=""), "2026-11-22 03:01:02.123  INFO   something_happened  essay"),
        (
            {"event": "bare"},
            "-                        -      bare",
        ),
        (
            record(timestamp="sometime"),
            "sometime                 INFO   something_happened",
        ),
        (
            {"level": "info", "timestamp": "2026-11-22T03:01:02Z", "event": {"odd": 1}, "gen_id": 7},
            '2026-11-22 03:01:02.000  INFO   {"odd": 1}  7',
        ),
    ],
)
def test_format_record(rec: dict[str, Any], expected: str) -> None:
    """Time (UTC), level, event, gen_id stage model, then error keys first and the rest as logged."""
    assert format_record(rec, color=False) == expected


def test_format_record_cuts_long_values() -> None:
    """Cut to max_value characters ending in "...", quoted or not; the other keys still follow."""
    text = format_record(record(message="x" * 500, reason="word " * 100), color=False, max_value=20)
    assert text.endswith('  message=xxxxxxxxxxxxxxxxx... reason="word word word w...')


def test_format_record_shows_the_traceback_below_in_full() -> None:
    traceback = 'Traceback (most recent call last):\n  File "x.py", line 8\nZeroDivisionError: ' + "z" * 300
    text = format_record(record(level="error", exception=traceback), color=False)
    assert text.splitlines() == [
        "2026-11-22 03:01:02.123  ERROR  something_happened",
        "    Traceback (most recent call last):",
        '      File "x.py", line 8',
        "    ZeroDivisionError: " + "z" * 300,
    ]


def test_colours_only_when_asked() -> None:
    rec = record(level="error", gen_id="d_1", error_type="timeout", exception="boom")
    plain = format_record(rec, color=False)
    coloured = format_record(rec, color=True)
    assert "\x1b[" not in plain
    assert "\x1b[31" in coloured  # red for the error level and error_type
    assert click.unstyle(coloured) == plain


def test_format_entry_keeps_plain_lines_as_they_are() -> None:
    assert format_entry(Entry("  File \x1b[1mx\x1b[0m", None), color=True) == "  File \x1b[1mx\x1b[0m"
    assert format_entry(Entry(line(), record()), color=False) == format_record(record(), color=False)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-22T03:01:02.123999Z", "2026-11-22 03:01:02.123"),
        ("2026-11-22T04:01:02+01:00", "2026-11-22 03:01:02.000"),
        (None, "-"),
        ("later", "later"),
    ],
)
def test_format_time(value: Any, expected: str) -> None:
    """UTC to the millisecond (truncated, so the order of lines is kept)."""
    assert format_time(value) == expected
