"""Logging for the service: structlog events, JSON for machines, readable lines for people.

On a terminal the service prints coloured, aligned lines; otherwise (systemd's journal, a pipe)
it prints one JSON object per line. ``paths.log_file`` adds a JSON-lines file, reopened if
logrotate moves it. Events are snake_case past-tense facts (``generation_finished``) and every
event about a generation carries ``gen_id``, ``stage`` and ``model``. Keys are never logged.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    structlog.processors.format_exc_info,
]


def configure_logging(*, log_file: Path | None, level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog through stdlib handlers: stdout (console or JSON) and an optional file."""
    stream = stream or sys.stdout
    console = stream.isatty()
    handlers: list[logging.Handler] = [_handler(logging.StreamHandler(stream), json=not console)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_handler(logging.handlers.WatchedFileHandler(log_file, encoding="utf-8"), json=True))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def _handler(handler: logging.Handler, *, json: bool) -> logging.Handler:
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=True)
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=SHARED_PROCESSORS,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    return handler
