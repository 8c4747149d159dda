"""One service per run state: an exclusive ``flock`` held for the life of the process.

The lock file is opened with ``O_NOFOLLOW`` and must be a regular file: the service writes its
pid into it, so a symbolic link planted at its path (to a file of the service's user) must not
redirect that write. (Hard links are not refused: backups made with ``cp -al`` or rsnapshot
give the lock file more than one, and planting one needs write access to the state folder,
which holds the run state itself.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daydreamd.core.errors import DaydreamError


class AlreadyRunningError(DaydreamError):
    """Another daydreamd holds the lock on this run state."""


class LockFileError(DaydreamError):
    """The lock file is a link, not a regular file, or cannot be opened: nothing was written to it."""


_LOCK_FLAGS = (
    os.O_RDWR
    | os.O_CREAT
    | os.O_NOFOLLOW  # a link at the lock path is refused, never followed
    | os.O_NONBLOCK  # a FIFO at the lock path cannot block the open
    | os.O_CLOEXEC
)


def _open_lock_file(path: Path) -> int:
    """Open (creating, mode 0600) the lock file, refusing a symbolic link or a special file."""
    try:
        fd = os.open(path, _LOCK_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockFileError(
                f"the lock file {path} is a symbolic link; daydreamd does not follow it (it writes its pid "
                "into the lock file). Remove the link (it is recreated as a plain file) and start again"
            ) from None
        raise LockFileError(f"cannot open the lock file {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LockFileError(
            f"the lock file {path} is not a regular file; daydreamd writes its pid into it, so it "
            "refuses it. Remove it (it is recreated as a plain file) and start again"
        )
    return fd


@contextmanager
def instance_lock(state_db: Path) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``<state_db>.lock`` for the life of the service.

    Taken before the socket is bound: binding silently replaces an existing socket file, so
    without the lock a second instance would steal the socket from a live one.
    """
    path = state_db.with_name(state_db.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock_file(path)
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
