"""The log's writing thread: a stalled log costs dropped lines (counted and said), never memory or waiting."""

from __future__ import annotations

import logging
import threading

from daydreamd.daemon.logconfig import BackgroundHandler


class _Stalled(logging.Handler):
    """A handler whose writes wait until released (a journal or a disk that stopped taking lines)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.entered = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entered.set()
        self.go.wait(timeout=30)
        self.lines.append(record.getMessage())


def _record(n: int) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 0, f"line {n}", None, None)


def test_a_stalled_log_drops_what_does_not_fit_and_then_says_how_many() -> None:
    stalled = _Stalled()
    handler = BackgroundHandler([stalled], max_queued=5)
    try:
        handler.handle(_record(0))
        assert stalled.entered.wait(timeout=10)  # the thread holds line 0, stuck in its write
        for n in range(1, 21):
            handler.handle(_record(n))  # returns at once every time: 5 queued, 15 dropped
        assert handler.dropped == 15
        stalled.go.set()
        handler.flush()
        handler.handle(_record(21))
        handler.flush()
    finally:
        stalled.go.set()
        handler.close()
    assert stalled.lines[:6] == [f"line {n}" for n in range(6)]
    assert stalled.lines[6].startswith("log_lines_dropped: 15 log lines were not written")
    assert stalled.lines[7:] == ["line 21"] and handler.dropped == 0
