"""Atomic file writes: readers see the old file or the new one, never a torn one.

Every file daydreamd writes (cohort files, generation artifacts, reports) goes through here:
write a temp file in the same folder, fsync it, rename it over the target, fsync the folder.
A crash at any point leaves either the previous contents or the new ones.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: Path, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` atomically (str is written as UTF-8)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    write_atomic_with(path, lambda f: f.write(payload))


def write_atomic_with(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Replace ``path`` atomically with what ``write`` puts into a binary file object.

    For large outputs (membership of a million rows) that should be streamed, not built in memory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
