"""Group commit for generation folders: one ``syncfs`` makes many new generations durable at once.

A generation written for the first time has no earlier durable version a crash could tear, so its
files need not be fsynced one by one (three ``fsync`` calls per generation cost more CPU and disk
time than everything else the runner does). They are written and renamed into place without an
fsync, then :meth:`GroupSync.sync` returns once a ``syncfs`` of their file system *started after
they were written* has completed: every writer that arrives while one sync runs shares the next.
With the pool's save threads finishing replies side by side, one sync covers several generations.

``syncfs`` is Linux's; elsewhere (or when it cannot be found) each file, the folder and its parent
are fsynced instead, which is what the per-file path costs anyway.

A failed sync fails every writer it covered (and every later one until a sync succeeds for them):
after a write-back error the kernel may drop the dirty pages, so a later success proves nothing
about earlier writes, and their callers must write again.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from daydreamd.storage.atomic import fsync_dir

SyncFs = Callable[[int], None]
"""Make everything written to the file system holding this open file durable (raises OSError)."""

_KEPT_FAILURES = 64


def _find_syncfs() -> SyncFs | None:
    """libc's ``syncfs``, or None where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"syncfs: {os.strerror(errno)}")

    return syncfs


SYNCFS: SyncFs | None = _find_syncfs()


class GroupSync:
    """Shared durable-write barrier for the threads that save generations."""

    def __init__(self, syncfs: SyncFs | None = SYNCFS) -> None:
        self._syncfs = syncfs
        self._cond = threading.Condition()
        self._started = 0
        self._finished = 0
        self._running = False
        self._failures: deque[tuple[int, OSError]] = deque(maxlen=_KEPT_FAILURES)
        self.rounds = 0
        """Syncs run so far (the benchmarks compare it with the generations saved)."""

    @property
    def grouped(self) -> bool:
        """True when syncs are shared (``syncfs``); False when each caller fsyncs its own files."""
        return self._syncfs is not None

    def sync(self, directory: Path, files: Sequence[str]) -> None:
        """Return once ``files`` (names in ``directory``, written and renamed already) and the folder
        itself are durable; raises OSError when the sync that should have covered them failed."""
        if self._syncfs is None:
            _fsync_each(directory, files)
            return
        with self._cond:
            needed = self._started + 1  # the first sync to start after these files were written
            while self._finished < needed:
                if self._running:
                    self._cond.wait()
                else:
                    self._lead(directory)
            failed = next((error for round_, error in self._failures if round_ >= needed), None)
        if failed is not None:
            raise OSError(failed.errno, f"{failed.strerror} (syncing {directory})")

    def _lead(self, directory: Path) -> None:
        """Run one sync for everyone waiting (called with the lock held; released while syncing)."""
        assert self._syncfs is not None
        self._started += 1
        round_ = self._started
        self._running = True
        self._cond.release()
        error: OSError | None = None
        try:
            fd = os.open(directory, os.O_RDONLY)
            try:
                self._syncfs(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            error = exc
        finally:
            self._cond.acquire()
            self._running = False
            self._finished = round_
            self.rounds += 1
            if error is not None:
                self._failures.append((round_, error))
            self._cond.notify_all()


def _fsync_each(directory: Path, files: Sequence[str]) -> None:
    """Without ``syncfs``: fsync each file, the folder (its entries) and its parent (the folder's)."""
    for name in files:
        fd = os.open(directory / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(directory)
    fsync_dir(directory.parent)
