"""Logging for the service: structlog events, JSON for machines, readable lines for people.

On a terminal the service prints coloured, aligned lines; otherwise (systemd's journal, a pipe)
it prints one JSON object per line. ``paths.log_file`` adds a JSON-lines file, reopened if
logrotate moves it. Events are snake_case past-tense facts (``generation_finished``) and every
event about a generation carries ``gen_id``, ``stage`` and ``model``.

Keys are never logged: what the LLM client hands on is scrubbed already, and as a second net every
handler scrubs each event (:func:`scrub_event`, with the :class:`~daydreamd.llm.apikey.Scrubber`
given to :func:`configure_logging`) right before rendering it, whether it came from structlog or
from a standard-library logger (aiohttp's, for one).

Rendering and writing happen in one background thread (:class:`BackgroundHandler`): a busy
service logs a line per generation, and the event loop must not wait for JSON encoding, a
``stat`` of the log file or a write to the journal's pipe. Lines are written in order; a
process killed with SIGKILL may lose the last few milliseconds of them (never run state).
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

from daydreamd.llm.apikey import KeyScrubber

SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    structlog.processors.format_exc_info,
]


def configure_logging(
    *,
    log_file: Path | None,
    level: str = "info",
    stream: TextIO | None = None,
    scrubber: KeyScrubber | None = None,
) -> None:
    """Route structlog through stdlib handlers: stdout (console or JSON) and an optional file.

    ``scrubber``: the API key's scrubber; every event is scrubbed with it before it is rendered.
    """
    stream = stream or sys.stdout
    console = stream.isatty()
    scrub = scrubber if scrubber is not None and scrubber.active else None
    handlers: list[logging.Handler] = [_handler(logging.StreamHandler(stream), json=not console, scrub=scrub)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
        handlers.append(_handler(file_handler, json=True, scrub=scrub))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(BackgroundHandler(handlers))
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


MAX_QUEUED = 100_000
"""Log records waiting for the writing thread at most; beyond, records are dropped and counted."""


class _Listener(logging.handlers.QueueListener):
    def enqueue_sentinel(self) -> None:
        """Wait for room rather than fail when the queue is full, while the thread drains it (a
        thread that died drains nothing: then there is nothing to wait for)."""
        while True:
            try:
                self.queue.put(self._sentinel, timeout=1.0)  # type: ignore[attr-defined]
                return
            except queue.Full:
                thread = self._thread
                if thread is None or not thread.is_alive():
                    return


class BackgroundHandler(logging.handlers.QueueHandler):
    """Hands each record, as it is, to a thread that formats it and writes it with ``handlers``.

    The record is not pre-formatted here (``QueueHandler.prepare`` would turn structlog's event
    dict into a string): the real handlers' structlog formatters render it in the thread.
    :meth:`flush` returns once every record handed over so far is written; :meth:`close` (also
    run by ``logging.shutdown`` at exit) writes what is left, then closes the handlers.

    The queue is bounded (``max_queued``): when the journal or the disk stalls, the service must not
    grow without limit nor wait on its log. Records that find it full are dropped and counted, and
    a ``log_lines_dropped`` warning saying how many goes in as soon as there is room again.
    """

    def __init__(self, handlers: list[logging.Handler], *, max_queued: int = MAX_QUEUED) -> None:
        records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=max_queued)
        super().__init__(records)
        self._handlers = handlers
        self.dropped = 0
        """Records dropped since the last notice of it."""
        self._control = threading.Lock()
        """Held while the thread is stopped and started again (flush) or for good (close)."""
        self._listener: logging.handlers.QueueListener | None = _Listener(
            records, *handlers, respect_handler_level=True
        )
        self._listener.start()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record unchanged: it is formatted by the handlers, in the thread."""
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        """Hand the record over, or count it dropped when the queue is full (never wait, never raise)."""
        if self.dropped:
            self._note_dropped()
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def _note_dropped(self) -> None:
        message = (
            f"log_lines_dropped: {self.dropped} log lines were not written while the log could not keep up"
        )
        notice = logging.LogRecord("daydreamd", logging.WARNING, __file__, 0, message, None, None)
        try:
            self.queue.put_nowait(notice)
        except queue.Full:
            return
        self.dropped = 0

    def flush(self) -> None:
        """Wait until everything handed over so far is written (stopping the thread drains it)."""
        with self._control:
            if self._listener is not None:
                self._listener.stop()
                self._listener.start()
        for handler in self._handlers:
            handler.flush()

    def close(self) -> None:
        """Write what is left, stop the thread, close the handlers (once)."""
        with self._control:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
            for handler in self._handlers:
                handler.close()
        super().close()


def scrub_event(scrubber: KeyScrubber) -> Any:
    """A structlog processor that scrubs every string in the event dict with ``scrubber``.

    Keys and values, inside nested dicts, lists, tuples and sets too; any other object that a
    renderer would show by its ``repr`` is replaced by its scrubbed ``repr`` when that ``repr``
    held a piece of the key (and kept as it is otherwise). Numbers, booleans and None pass.
    """

    def scrub(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        return {_scrubbed(scrubber, key): _scrubbed(scrubber, value) for key, value in event.items()}

    return scrub


def _scrubbed(scrubber: KeyScrubber, value: Any) -> Any:
    if isinstance(value, str):
        return scrubber.text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {_scrubbed(scrubber, key): _scrubbed(scrubber, item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_scrubbed(scrubber, item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    shown = repr(value)
    clean = scrubber.text(shown)
    return value if clean is shown else clean


def _handler(handler: logging.Handler, *, json: bool, scrub: KeyScrubber | None) -> logging.Handler:
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    )
    processors: list[Any] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if scrub is not None:
        processors.append(scrub_event(scrub))  # after exc_info is formatted, before rendering
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=SHARED_PROCESSORS, processors=[*processors, renderer]
        )
    )
    return handler
