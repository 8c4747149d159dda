"""Troubles outside the service that hold work back: a data folder that takes no writes, a state
database that takes no writes. Each is noticed where it happens, shown in ``status`` with since
when, and cleared by itself when the next write works.

* **The data folder** (``ENOSPC``, ``EROFS``, ``EIO``, ``EDQUOT``, ``EACCES``, ``EPERM``): the
  runner keeps a paid reply it could not save in memory and tries again with backoff; the pool
  claims nothing new meanwhile. Nothing paid for is lost, nothing is paid twice.
* **The state database** (a full disk, a lock held by another process): a completion that cannot
  be committed is retried with backoff, so no generation is left ``running`` without an owner.
"""

from __future__ import annotations

import errno
import os
import random
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import structlog

from daydreamd.core.status import Trouble
from daydreamd.core.timestamps import utc_now

log = structlog.get_logger("daydreamd.daemon.health")
T = TypeVar("T")

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT, errno.EACCES, errno.EPERM})


def is_disk_fault(exc: BaseException) -> bool:
    """An error of the disk or its permissions, which waiting (and an operator) can cure."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


def is_db_fault(exc: BaseException) -> bool:
    """A write the database refused for now (locked, busy, full, an I/O error), not a bug."""
    return isinstance(exc, sqlite3.OperationalError)


@dataclass(slots=True)
class Health:
    """One kind of trouble: whether it is on, since when, why, and how many writes wait on it."""

    what: str
    retry_s: float = 1.0
    retry_cap_s: float = 30.0
    since: str | None = None
    message: str = ""
    waiting: int = 0
    failures: int = 0

    @property
    def failing(self) -> bool:
        """Whether the last write of this kind failed."""
        return self.since is not None

    def failed(self, exc: BaseException) -> bool:
        """Note a failed write; True when this starts the trouble (to log it once)."""
        self.failures += 1
        self.message = _describe(exc)
        if self.since is None:
            self.since = utc_now()
            return True
        return False

    def recovered(self) -> bool:
        """Note a write that worked; True when this ends the trouble."""
        was = self.since is not None
        self.since, self.message, self.failures = None, "", 0
        return was

    async def pause(self) -> None:
        """Wait before the next try: exponential with jitter, capped."""
        delay = min(self.retry_cap_s, self.retry_s * 2 ** min(self.failures - 1, 10))
        await anyio.sleep(delay * (0.5 + random.random() / 2))

    async def retrying(
        self, operation: Callable[[], Awaitable[T]], is_fault: Callable[[BaseException], bool]
    ) -> T:
        """Run ``operation`` until it works, waiting with backoff after each fault of this kind
        (whatever it holds stays in memory meanwhile and is counted in :attr:`waiting`); other
        errors go to the caller. The operation must be safe to repeat."""
        held = False
        try:
            while True:
                try:
                    result = await operation()
                except Exception as exc:
                    if not is_fault(exc):
                        raise
                    if not held:
                        held = True
                        self.waiting += 1
                    if self.failed(exc):
                        log.error(self.what, error=self.message)
                    await self.pause()
                    continue
                if self.recovered():
                    log.info(f"{self.what}_cleared")
                return result
        finally:
            if held:
                self.waiting -= 1

    def trouble(self) -> Trouble | None:
        """What ``status`` shows while failing."""
        if self.since is None:
            return None
        return Trouble(what=self.what, since=self.since, message=self.message, waiting=self.waiting)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{name}: {os.strerror(exc.errno)}{where}"
    return f"{type(exc).__name__}: {exc}"
