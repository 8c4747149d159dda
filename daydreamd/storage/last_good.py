"""The last good experiment, kept in the run state: the files of ``1_raw`` that last built a cohort.

The cohort is a pure function of these bytes and the settings, so keeping the bytes (not the
cohort) is enough to serve it again: a start (or a reload) while ``1_raw`` has errors builds the
last good cohort from this copy, and approvals, status and queued work go on while the status
shows what is wrong with the files now. One copy is kept (table ``last_good_raw``, migration
m006) with its fingerprint in the fact :data:`FACT`; it is replaced, in one transaction, whenever
other files build a cohort. A copy whose bytes no longer match its fingerprint is not used.
"""

from __future__ import annotations

from daydreamd.core.snapshot import RAW_DIR_NAME, RawFiles
from daydreamd.storage.store import Store

FACT = "raw.last_good"
"""The fingerprint of the files in ``last_good_raw``."""


class LastGoodRaw:
    """Saves and loads the copy of the files that last built a cohort."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._saved: str | None = None
        """The fingerprint known to be saved (saves the read before every rebuild's check)."""

    async def fingerprint(self) -> str | None:
        """The fingerprint of the saved copy, or None when there is none."""
        if self._saved is None:
            self._saved = await self.store.get_fact(FACT)
        return self._saved

    async def save(self, raw: RawFiles) -> bool:
        """Keep ``raw`` (files that built a cohort) as the last good copy; False if it already is."""
        if raw.missing or raw.unreadable or raw.bad_names:
            raise ValueError("only a complete snapshot of files that built a cohort can be kept")
        if await self.fingerprint() == raw.fingerprint:
            return False
        async with self.store.transaction() as db:
            await db.execute("DELETE FROM last_good_raw")
            await db.executemany(
                "INSERT INTO last_good_raw (path, data) VALUES (?, ?)", sorted(raw.files.items())
            )
            await db.execute(
                "INSERT OR REPLACE INTO facts (key, value) VALUES (?, ?)", (FACT, raw.fingerprint)
            )
        self._saved = raw.fingerprint
        return True

    async def load(self, *, label: str = RAW_DIR_NAME) -> RawFiles | None:
        """The saved copy as a snapshot (paths shown as ``<label>/...``), or None when there is none
        or its bytes do not match its fingerprint."""
        fingerprint = await self.fingerprint()
        if fingerprint is None:
            return None
        async with self.store.db.execute("SELECT path, data FROM last_good_raw ORDER BY path") as cursor:
            files = {str(row[0]): bytes(row[1]) for row in await cursor.fetchall()}
        raw = RawFiles.of(files, label=label)
        return raw if raw.fingerprint == fingerprint else None
