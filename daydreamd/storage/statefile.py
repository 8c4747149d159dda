"""The run state's file: created whole, checked when opened, and set aside only when asked.

A missing file is built under a temporary name and renamed into place, so a crash at first start
never leaves an empty file. An existing file that is empty, is not SQLite, or fails SQLite's
quick check is an :class:`UnreadableStateError` naming it, and is left untouched; the operator
restores a backup, or starts once with ``--new-state``, which renames it aside (:func:`set_aside`).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from daydreamd.core.errors import DaydreamError
from daydreamd.storage.atomic import fsync_dir
from daydreamd.storage.migrations import migrate

SQLITE_HEADER = b"SQLite format 3\x00"


class UnreadableStateError(DaydreamError):
    """The run state file exists but cannot be used: empty, not SQLite, or damaged. It is left as it is."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"the run state {path} is unreadable: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SetAside:
    """An unreadable run state that was renamed aside so a new one could start."""

    path: Path
    reason: str


async def connect_state(path: Path) -> aiosqlite.Connection:
    """A checked, migrated connection to the state at ``path`` (created whole when missing)."""
    if not _existing(path):
        await _create(path)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await _prepare(db, check=True)
    except sqlite3.DatabaseError as exc:
        await db.close()
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise UnreadableStateError(path, f"SQLite says {str(exc)!r}") from None
        raise
    except _Damaged as exc:
        await db.close()
        raise UnreadableStateError(path, f"SQLite's quick check found {exc}") from None
    except BaseException:
        await db.close()
        raise
    return db


class _Damaged(Exception):
    """``PRAGMA quick_check`` did not answer ``ok``."""


async def _prepare(db: aiosqlite.Connection, *, check: bool) -> None:
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA busy_timeout=10000")
    await db.execute("PRAGMA synchronous=NORMAL")
    await db.execute("PRAGMA foreign_keys=ON")
    # 64 MiB of page cache (the default is 2 MiB): a membership sync chunk dirties pages all over the
    # gen_id indexes of a million-row table, and a cache that spills rewrites them to the WAL again
    await db.execute("PRAGMA cache_size=-65536")
    # a membership sync lets the WAL grow to some 400 MiB between checkpoints (Store.bulk_writes):
    # when it starts over, the file is cut back to this size instead of keeping that space
    await db.execute("PRAGMA journal_size_limit=67108864")
    db.row_factory = aiosqlite.Row
    if check:  # about 1.3 s per million generations; corruption found now, not mid-run
        async with db.execute("PRAGMA quick_check(1)") as cursor:
            row = await cursor.fetchone()
        if row is None or row[0] != "ok":
            raise _Damaged(repr(row[0] if row else None))
    await migrate(db)


async def _create(path: Path) -> None:
    """A new, migrated state at ``path``, built under a temporary name and renamed into place."""
    temp = _fresh_temp(path)
    db = await aiosqlite.connect(temp, isolation_level=None)
    try:
        await _prepare(db, check=False)
    finally:
        await db.close()  # the last connection: SQLite checkpoints the WAL into the file
    temp.replace(path)
    fsync_dir(path.parent)


def _fresh_temp(path: Path) -> Path:
    """The temporary name a new state is built under, cleared of what an interrupted build left."""
    temp = path.with_name(f".{path.name}.new")
    for leftover in (temp, *_companions(temp)):
        leftover.unlink(missing_ok=True)
    return temp


def _existing(path: Path) -> bool:
    """Whether a state file exists; raise :class:`UnreadableStateError` for one that is unusable on
    sight (empty, or not SQLite; SQLite itself finds the rest)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        raise UnreadableStateError(path, "the file is empty (0 bytes)")
    with path.open("rb") as file:
        if file.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise UnreadableStateError(path, "the file is not an SQLite database (no SQLite header)")
    return True


def _companions(path: Path) -> tuple[Path, Path]:
    """SQLite's write-ahead log and shared-memory index files of ``path``."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def set_aside(path: Path) -> Path:
    """Rename an unreadable state (and its -wal/-shm) to ``<name>.unreadable-<UTC time>``; return it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.unreadable-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.unreadable-{stamp}-{n}")
        n += 1
    path.replace(aside)
    for companion, moved in zip(_companions(path), _companions(aside), strict=True):
        if companion.exists():
            companion.replace(moved)
    fsync_dir(path.parent)
    return aside
