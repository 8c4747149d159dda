"""Atomic file writes: readers see the old file or the new one, never a torn one.

Every file daydreamd writes (cohort files, generation artifacts, reports) goes through here:
write a temp file in the same folder, rename it over the target. Whether the result is also
*durable* (survives a power failure or a kernel crash, not only a killed process) is the
caller's choice, because each step costs an ``fsync``:

- :func:`write_atomic`, :func:`write_atomic_many`, :func:`write_atomic_with`: fsync each temp
  file before its rename, then fsync the folder once: durable when they return.
- :func:`replace_file` with ``sync=True``: the new contents are durable before the name points
  at them, so a crash can never put a torn file where a durable one was; the rename itself is
  durable only after a later :func:`fsync_dir` of the folder (callers batch several renames
  under one folder fsync). With ``sync=False`` (files that can be re-created from durable ones),
  a power failure may leave the old file, no file, or the new name with missing or partial
  contents; a killed process still leaves the old file or the whole new one.

The temp name is fixed per process and thread (``.<name>.<pid>.<thread>.tmp``) rather than
random: a writer never races itself, a leftover from a killed process is simply truncated on
the next write, and it saves the cost of ``mkstemp`` on the runner's hot path.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically and durably (str is written as UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(str(path), data.encode("utf-8") if isinstance(data, str) else data)
    fsync_dir(path.parent)


def write_atomic_many(directory: Path, files: Iterable[tuple[str, bytes | str]]) -> None:
    """Write several files of one folder, in order, each atomically; one folder fsync at the end.

    Files written earlier in the sequence are on disk (renamed into place) before later ones
    are started, so callers order them by importance (a paid-for reply before derived files).
    """
    directory.mkdir(parents=True, exist_ok=True)
    base = str(directory)
    for name, data in files:
        _replace(os.path.join(base, name), data.encode("utf-8") if isinstance(data, str) else data)
    fsync_dir(directory)


def write_atomic_with(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` atomically with what ``write`` puts into a binary file object.

    For large outputs (membership of a million rows) that should be streamed, not built in memory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(str(path))
    try:
        with open(os.open(tmp, _FLAGS, 0o644), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def replace_file(directory: Path, name: str, data: bytes | str, *, sync: bool) -> None:
    """Replace ``directory/name`` atomically; ``sync`` makes the contents durable before the rename.

    The folder must exist and is not fsynced: see the module docstring for what a crash leaves.
    """
    _replace(
        os.path.join(directory, name), data.encode("utf-8") if isinstance(data, str) else data, sync=sync
    )


_pid = os.getpid()


def _after_fork() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


def _temp_name(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.{_pid}.{threading.get_ident()}.tmp")


def _replace(path: str, payload: bytes, *, sync: bool = True) -> None:
    tmp = _temp_name(path)
    fd = os.open(tmp, _FLAGS, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files that a dead process left in ``directory`` (not recursive); count them.

    A temp file is only ever half a write: the real file is either the old one or absent, so
    removing it loses nothing. Files of this process are kept (a write may be in progress).
    """
    mine = f".{os.getpid()}."
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:  # missing, not a folder, unreadable: nothing to sweep (what writes there says why)
        return 0
    for entry in entries:
        name = entry.name
        if name.startswith(".") and name.endswith(".tmp") and mine not in name and entry.is_file():
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed
