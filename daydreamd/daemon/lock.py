"""One service per run state: an exclusive ``flock`` held for the life of the process."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daydreamd.core.errors import DaydreamError


class AlreadyRunningError(DaydreamError):
    """Another daydreamd holds the lock on this run state."""


@contextmanager
def instance_lock(state_db: Path) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``<state_db>.lock`` for the life of the service.

    Taken before the socket is bound: binding silently replaces an existing socket file, so
    without the lock a second instance would steal the socket from a live one.
    """
    path = state_db.with_name(state_db.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise AlreadyRunningError(
                f"another daydreamd (pid {holder}) is already running on {state_db}; stop it first "
                f"(lock file {path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)
