"""The run state in SQLite (aiosqlite): what exists, what is approved, running, done or failed.

One service owns the database (a lock file guarantees it), but every state change still goes
through a short ``BEGIN IMMEDIATE`` transaction, and claims carry a fencing token: a worker
whose lease was taken back (restart, revoke) can never commit over a newer claim. Nothing is
ever deleted: generations that leave the cohort are marked retired and keep their state, so a
generation that comes back is still done.

Many cohorts share the one table, so work done for one is done for all: the default cohort (the
spec in ``1_raw``; ``in_default = 1``) and named cohorts (a spec folder each; ``cohort_members``).
A row is retired exactly when no cohort holds it. Reads and approvals take a ``scope``: None for
the default cohort, a name for that named cohort.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Container, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import anyio
import anyio.lowlevel
import anyio.to_thread

from daydreamd.core.cohort import Cohort, Generation
from daydreamd.core.stages import STAGES, Stage, State
from daydreamd.core.timestamps import utc_now
from daydreamd.storage.statefile import SetAside, UnreadableStateError, connect_state, set_aside

_T = TypeVar("_T")
STAGE_RANK = {stage: rank for rank, stage in enumerate(STAGES)}
_STAGE_NAMES = frozenset(str(stage) for stage in STAGES)
SYNC_CHUNK = 2_500
"""Rows per transaction when membership is synced: claims, completions and status reads run between
chunks, and they share the one database thread. gen_ids are hashes, so a chunk's inserts and look-ups
land all over the gen_id index: on a 1.3M-row state a row inserted costs some 15 us of that thread, a
row retired some 9. 2,500 rows keep a chunk near 35 ms (status must answer within 50 ms); 20,000 held
it for 250 to 1,000 ms and saved under a fifth of the total (each commit writes the index pages its
chunk dirtied, about one a row inserted whatever the chunk's size)."""
SYNC_CHECKPOINT_ROWS = 40_000
"""Rows a membership sync writes between checkpoints of the WAL (some 100 MiB of it), each from a
connection of its own (:meth:`Store.checkpoint_aside`): copying that back takes a few hundred
milliseconds, which the database thread would otherwise spend inside some chunk's commit."""
CHECKPOINT_PAGES = 1_000
"""WAL pages (4 KiB) between automatic checkpoints: SQLite's default."""
BULK_CHECKPOINT_PAGES = 100_000
"""WAL pages between automatic checkpoints while a membership sync writes (about 400 MiB of WAL): a
backstop, as the sync checkpoints every :data:`SYNC_CHECKPOINT_ROWS` rows itself. A chunk of inserts
lands all over the gen_id index, and a checkpoint after every commit copied (and synced) those pages
back into the file once per chunk; a checkpoint every few dozen chunks copies each of them once."""
GENERATION_COLUMNS = (
    "gen_id, stage, parent_gen_id, combo_id, template_id, llm_model_id, replicate, mode, state, retired, "
    "attempts, error_kind, error_message, approval_id, lease_token, created_at, updated_at, started_at, finished_at, "
    "score, fresh, parse_key, parse_info, parent_changed"
)


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What a membership sync changed (in the run state, where the pool sees it).

    ``added``: rows inserted (new work, pending); ``revived``: retired rows made live again;
    ``retired``: rows that left the cohort and that no other cohort holds (the pool drops them);
    ``total``: the cohort's size. A row another cohort already holds live changes nothing the pool
    sees when it joins or leaves this one (only its membership mark is written), so it counts in
    neither: ``joined`` counts those taken in, ``kept`` those let go that stay live.
    """

    added: int
    retired: int
    revived: int
    total: int
    joined: int = 0
    kept: int = 0


@dataclass(frozen=True, slots=True)
class Claim:
    """A generation handed to a worker, with the fencing token its commit must present."""

    generation: Generation
    token: int
    mode: str
    attempts: int
    approval_id: int | None = None
    fresh: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRow:
    """One LLM attempt, as recorded in ``attempts``."""

    attempt: int
    started_at: float
    finished_at: float
    outcome: str
    status: int | None = None
    message: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Completion:
    """How a claimed generation ended, to be committed under its token."""

    gen_id: str
    token: int
    llm_model_id: str
    ok: bool
    error_kind: str | None = None
    error_message: str | None = None
    attempts: tuple[AttemptRow, ...] = ()
    score: float | None = None
    """An evaluation's score, recorded so results come from SQLite without reading files."""
    parse_key: str | None = None
    """What parsed.txt depends on (see :func:`daydreamd.core.parsers.parse_key`)."""
    parse_info: str | None = None
    """JSON of how it was parsed (``metadata.json``'s ``parse``)."""
    requeue: bool = False
    """Back to the queue instead of failed (its calls failed while the provider was down)."""


@dataclass(frozen=True, slots=True)
class NamedCohortRecord:
    """A named cohort as last synced (``named_cohorts``): what its membership came from, and its size."""

    name: str
    key: str
    """What the membership was synced from (the spec folder's key): unchanged key, nothing to sync."""
    first_seen: str
    last_applied: str
    counts: dict[str, int]
    """Generations per stage."""


@dataclass(frozen=True, slots=True)
class MembershipDiff:
    """What a membership sync writes: generations to add (or revive, when retired) and gen_ids to retire."""

    add: Sequence[Generation]
    retire: Sequence[str]


def checkpoint_file(path: str) -> None:
    """``PRAGMA wal_checkpoint(PASSIVE)`` on the database at ``path``, through a connection opened
    for it (blocking: run it in a worker thread). Passive: it copies what no reader still needs and
    never waits for a lock, so it never holds up the connection that writes. ``synchronous`` as
    the store's own (``NORMAL``: the file is synced once the copy is done). Closing it checkpoints
    nothing more: the store's connection stays open."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.close()


def membership_diff(generations: Sequence[Generation], live: Sequence[str]) -> MembershipDiff:
    """The difference between a cohort and the membership ``live`` (the gen_ids not retired).

    Pure and CPU-bound (sets over a million ids): run it in a worker thread. It must not hold the
    interpreter lock for long at a time, or the event loop (``status``, the pool) waits that long
    each time it gives the lock up: a set grows by one C call that copies the whole table (about
    45 ms at a million ids), and freeing one is a single call too. So the ids go into small sets
    (:func:`_id_shards`), grown and emptied one by one; ``set(list)`` and ``sorted`` are avoided for
    the same reason. It costs about a second more at a million ids, in a worker thread, against
    status answers held 100 to 250 ms while the sets were whole.
    """
    new_ids = _id_shards(g.gen_id for g in generations)
    live_ids = _id_shards(live)
    try:
        return MembershipDiff(
            add=[g for g in generations if g.gen_id not in live_ids.get(g.gen_id[-_SHARD_KEY:], _NONE)],
            retire=[gen_id for gen_id in live if gen_id not in new_ids.get(gen_id[-_SHARD_KEY:], _NONE)],
        )
    finally:
        for shards in (new_ids, live_ids):
            for shard in shards.values():
                shard.clear()


_SHARD_KEY = 2
"""Characters at the end of an id that pick its set: gen_ids end in hex digits, so 256 sets of a
few thousand ids each at a million (any string works: the key is only a way to split them)."""
_NONE: frozenset[str] = frozenset()


def _id_shards(ids: Iterable[str]) -> dict[str, set[str]]:
    """``ids`` in small sets keyed by their last characters (see :func:`membership_diff`)."""
    shards: dict[str, set[str]] = {}
    for gen_id in ids:
        key = gen_id[-_SHARD_KEY:]
        shard = shards.get(key)
        if shard is None:
            shard = shards[key] = set()
        shard.add(gen_id)
    return shards


class Store:
    """The SQLite run state. Open it with ``async with Store.open(path) as store``."""

    sync_chunk = SYNC_CHUNK
    """Rows per transaction when membership is synced."""
    approve_chunk = 50_000
    """Rows per transaction when an approval queues work."""
    read_chunk = 100_000
    """Rowids per read when the current membership is read."""
    sync_checkpoint_rows = SYNC_CHECKPOINT_ROWS
    """Rows a membership sync writes between checkpoints of the WAL (see :meth:`checkpoint_aside`)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self._write_lock = anyio.Lock()
        self.set_aside: SetAside | None = None
        """Where an unreadable state went when ``open`` was asked to set it aside."""
        self.on_membership_change: Callable[[], None] | None = None
        """Called after each chunk of a membership sync or a cohort's drop is committed: rows may
        have been retired or sent back to pending (the pool then calls off what it armed)."""
        self._bulk = 0
        """Tasks inside :meth:`bulk_writes`."""

    def _membership_changed(self) -> None:
        if self.on_membership_change is not None:
            self.on_membership_change()

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path, *, set_aside_unreadable: bool = False) -> AsyncIterator[Store]:
        """Open (creating and migrating as needed) and close the database at ``path``.

        A missing file is built whole under a temporary name and renamed into place, so a crash
        never leaves an empty file behind. An existing file that is empty, is not SQLite, or fails
        SQLite's quick check raises :class:`UnreadableStateError` and is not touched; with
        ``set_aside_unreadable`` it is renamed aside instead (:func:`set_aside`, recorded in
        :attr:`set_aside`) and a new state is created.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = None
        try:
            db = await connect_state(path)
        except UnreadableStateError as exc:
            if not set_aside_unreadable:
                raise
            aside = SetAside(set_aside(path), exc.reason)
            db = await connect_state(path)
        try:
            store = cls(db)
            store.set_aside = aside
            yield store
        finally:
            await db.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction: ``BEGIN IMMEDIATE`` (take the write lock first), commit or roll back.

        Tasks share one connection, so transactions are serialised here: two interleaved
        ``BEGIN``s on one connection would fail, and one task's rollback would undo another's work.
        """
        async with self._write_lock:
            with anyio.CancelScope(shield=True):  # a BEGIN that ran must always meet its rollback
                await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.db.rollback()
                raise
            with anyio.CancelScope(shield=True):
                await self.db.commit()

    @asynccontextmanager
    async def bulk_writes(self) -> AsyncIterator[None]:
        """While inside (nested, or from several tasks at once), SQLite checkpoints the WAL every
        :data:`BULK_CHECKPOINT_PAGES` pages instead of every :data:`CHECKPOINT_PAGES`; when the last
        one leaves, the usual setting is back and the WAL is checkpointed at once (from a connection
        of its own, :meth:`checkpoint_aside`), not by whichever commit comes next."""
        self._bulk += 1
        try:
            if self._bulk == 1:
                async with self._write_lock:
                    await self.db.execute(f"PRAGMA wal_autocheckpoint = {BULK_CHECKPOINT_PAGES}")
            yield
        finally:
            self._bulk -= 1
            if self._bulk == 0:
                with anyio.CancelScope(shield=True):
                    async with self._write_lock:
                        await self.db.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
                    await self.checkpoint_aside()

    async def checkpoint_aside(self) -> None:
        """Checkpoint the WAL (``PASSIVE``) from a connection of its own, in a worker thread.

        The store's connection has one thread, which every read and write of the service waits for;
        a checkpoint there (or the automatic one a commit runs) holds it for as long as copying the
        WAL takes. From another connection the copy runs beside it: status reads, claims and
        completions go on, and a passive checkpoint takes no lock that they need. Awaited, it keeps
        the WAL from growing without end: what it copied is reused by the next write. An in-memory
        database has no WAL and no file to open: nothing is done.
        """
        rows = await self.db.execute_fetchall("PRAGMA database_list")
        path = next((str(row[2]) for row in rows if row[1] == "main"), "")
        if path:
            await anyio.to_thread.run_sync(checkpoint_file, path)

    async def in_one_trip(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` as one write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back
        if it raises) in a single trip to the database thread, serialised with :meth:`transaction`.

        Every ``await`` on the connection is a round trip between the event loop and the
        database thread, and under load each waits for a busy loop; a transaction of five
        statements costs five of them this way and one here. It uses the connection's
        ``_execute`` (how aiosqlite runs each of its own calls in its thread): with
        :meth:`in_thread`, the one place the project relies on an aiosqlite internal.
        """

        def transaction() -> _T:
            conn = self.db._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return result

        async with self._write_lock:
            with anyio.CancelScope(shield=True):  # it runs to its end in the thread either way
                result: _T = await self.db._execute(transaction)  # type: ignore[no-untyped-call]
        return result

    async def in_thread(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` in the database thread in one trip, inside the caller's :meth:`transaction`.

        For bulk writes: the Python that prepares their statements and counts what they changed
        (a few milliseconds a chunk) then runs beside the event loop, not on it. Cancelled, ``work``
        still runs to its end in the thread, and the transaction's rollback, queued behind it, undoes it. (The connection's ``_execute``, as in :meth:`in_one_trip`.)
        """
        result: _T = await self.db._execute(work, self.db._conn)  # type: ignore[no-untyped-call]
        return result

    # -- facts ---------------------------------------------------------------------------------

    async def get_fact(self, key: str) -> str | None:
        """A recorded fact (e.g. ``fingerprint.applied``), or None."""
        async with self.db.execute("SELECT value FROM facts WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def set_fact(self, key: str, value: str) -> None:
        """Record a fact durably."""
        async with self.transaction() as db:
            await db.execute("INSERT OR REPLACE INTO facts (key, value) VALUES (?, ?)", (key, value))

    # -- membership ----------------------------------------------------------------------------

    async def live_gen_ids(self) -> list[str]:
        """The gen_ids of the default cohort (``in_default = 1``; rows only named cohorts hold are
        not its members) in rowid order, read in rowid ranges so the pool's claims and completions
        run in between."""
        async with self.db.execute("SELECT coalesce(max(rowid), 0) FROM generations") as cursor:
            row = await cursor.fetchone()
        last = int(row[0]) if row else 0
        ids: list[str] = []
        for low in range(0, last, self.read_chunk):
            async with self.db.execute(
                "SELECT gen_id FROM generations WHERE rowid > ? AND rowid <= ? AND in_default = 1 ORDER BY rowid",
                (low, low + self.read_chunk),
            ) as cursor:
                ids.extend(row[0] for row in await cursor.fetchall())
        return ids

    async def sync_membership(
        self,
        cohort: Cohort,
        modes: dict[tuple[Stage, str], str],
        fingerprint: str,
        *,
        diff: MembershipDiff | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> SyncResult:
        """Make the default cohort match ``cohort``: new generations pending, returned ones revived,
        vanished ones out of it (retired unless a named cohort still holds them).

        Only what changed is written: ``diff`` (from :func:`membership_diff`), or, without one, the
        difference between the cohort and the default cohort's rows now (:meth:`live_gen_ids`). The
        writes go in chunks of :attr:`sync_chunk` rows, each its own transaction, so the pool works in
        between; a sync cut short (a crash) leaves a mix of both memberships, which the next sync of
        the cohort completes.
        ``progress(done, total)`` is called after each chunk.
        """
        if diff is None:
            live = await self.live_gen_ids()
            diff = await anyio.to_thread.run_sync(membership_diff, cohort.generations, live)
        revived, added, joined, retired, kept = await self._write_diff(
            diff,
            lambda part: partial(_add_members, part=part, modes=modes, now=utc_now()),
            lambda ids: partial(_retire_members, ids=ids, now=utc_now()),
            progress,
        )
        now = utc_now()
        counts = json.dumps(cohort.counts(), sort_keys=True)
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO cohorts (cohort_id, first_seen, last_applied, fingerprint, counts) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (cohort_id) DO UPDATE SET last_applied = excluded.last_applied, "
                "fingerprint = excluded.fingerprint, counts = excluded.counts",
                (cohort.cohort_id, now, now, fingerprint, counts),
            )
        return SyncResult(added, retired, revived, len(cohort.generations), joined, kept)

    # -- named cohorts -------------------------------------------------------------------------

    async def _write_diff(
        self,
        diff: MembershipDiff,
        add: Callable[[Sequence[Generation]], Callable[[sqlite3.Connection], tuple[int, int, int]]],
        retire: Callable[[Sequence[str]], Callable[[sqlite3.Connection], tuple[int, int]]],
        progress: Callable[[int, int], None] | None,
    ) -> tuple[int, int, int, int, int]:
        """Write a membership diff in chunks of :attr:`sync_chunk` rows, each its own transaction run
        in the database thread (``add(part)`` and ``retire(ids)`` make each chunk's work), the WAL
        checkpointed every :attr:`sync_checkpoint_rows` rows from another connection
        (:meth:`checkpoint_aside`); returns (revived, added, joined, retired, kept)."""
        total, done = len(diff.add) + len(diff.retire), 0
        revived = added = joined = retired = kept = 0
        chunk, unchecked = self.sync_chunk, 0
        async with self.bulk_writes():  # commits leave the WAL to checkpoint_aside (their own is a backstop)
            for start in range(0, len(diff.add), chunk):
                part = diff.add[start : start + chunk]
                async with self.transaction():
                    revived_now, added_now, joined_now = await self.in_thread(add(part))
                self._membership_changed()
                revived, added, joined = revived + revived_now, added + added_now, joined + joined_now
                done, unchecked = done + len(part), unchecked + len(part)
                if progress is not None:
                    progress(done, total)
                if unchecked >= self.sync_checkpoint_rows:
                    await self.checkpoint_aside()
                    unchecked = 0
            for start in range(0, len(diff.retire), chunk):
                ids = diff.retire[start : start + chunk]
                async with self.transaction():
                    retired_now, kept_now = await self.in_thread(retire(ids))
                self._membership_changed()
                retired, kept = retired + retired_now, kept + kept_now
                done, unchecked = done + len(ids), unchecked + len(ids)
                if progress is not None:
                    progress(done, total)
                if unchecked >= self.sync_checkpoint_rows:
                    await self.checkpoint_aside()
                    unchecked = 0
        return revived, added, joined, retired, kept

    async def named_gen_ids(self, name: str) -> list[str]:
        """The gen_ids of the named cohort ``name`` in gen_id order ([] for an unknown name), read in
        ranges of :attr:`read_chunk` so the pool's claims and completions run in between."""
        ids: list[str] = []
        after = ""
        while True:
            rows = list(
                await self.db.execute_fetchall(
                    "SELECT gen_id FROM cohort_members WHERE cohort = ? AND gen_id > ? ORDER BY gen_id LIMIT ?",
                    (name, after, self.read_chunk),
                )
            )
            ids.extend(row[0] for row in rows)
            if len(rows) < self.read_chunk:
                return ids
            after = ids[-1]

    async def sync_named(
        self,
        name: str,
        generations: Sequence[Generation],
        modes: dict[tuple[Stage, str], str],
        *,
        key: str,
        counts: dict[str, int],
        progress: Callable[[int, int], None] | None = None,
    ) -> SyncResult:
        """Make the named cohort ``name`` hold exactly ``generations``, sharing rows with every cohort.

        A generation some cohort already holds is only marked a member (``joined``): done work is
        not redone, so a named cohort over finished generations is finished at once. Missing ones
        are inserted pending, retired ones revived; the ones that left are retired unless another
        cohort (the default included) still holds them (``kept``). Chunked like
        :meth:`sync_membership`, and a sync cut short is completed by the next one; the
        ``named_cohorts`` row is written first with an empty key (so a sync cut short, by a crash or
        a stop, is never taken for done: the next check syncs again) and last with ``key`` and
        ``counts`` (generations per stage).
        """
        live = await self.named_gen_ids(name)
        diff = await anyio.to_thread.run_sync(membership_diff, generations, live)
        async with self.transaction() as db:  # "in progress" until the last chunk: a sync cut short is redone
            await _mark_unsynced(db, name, utc_now())
        revived, added, joined, retired, kept = await self._write_diff(
            diff,
            lambda part: partial(_add_named, name=name, part=part, modes=modes, now=utc_now()),
            lambda ids: partial(_leave_named, name=name, ids=ids, now=utc_now()),
            progress,
        )
        now = utc_now()
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO named_cohorts (name, key, first_seen, last_applied, counts) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET key = excluded.key, last_applied = excluded.last_applied, "
                "counts = excluded.counts",
                (name, key, now, now, json.dumps(counts, sort_keys=True)),
            )
        return SyncResult(added, retired, revived, len(generations), joined, kept)

    async def drop_named(self, name: str) -> int:
        """Remove the named cohort ``name`` (its members and its record); returns how many rows were
        retired: those no other cohort holds. Their state is kept, as for any retired row.

        In chunks of :attr:`sync_chunk` members, each its own transaction; the record goes with
        the last chunk, so a drop cut short is still listed and can be dropped again.
        """
        retired = 0
        async with self.transaction() as db:  # a drop cut short is not "synced" if its spec comes back
            await db.execute("UPDATE named_cohorts SET key = '' WHERE name = ?", (name,))
        chunk = self.sync_chunk

        def drop_chunk(db: sqlite3.Connection) -> tuple[int, bool]:
            rows = _fetchall(db, "SELECT gen_id FROM cohort_members WHERE cohort = ? LIMIT ?", (name, chunk))
            retired_now, _ = _leave_named(db, name, [row[0] for row in rows], utc_now())
            if len(rows) < chunk:
                db.execute("DELETE FROM named_cohorts WHERE name = ?", (name,))
            return retired_now, len(rows) < chunk

        while True:
            async with self.transaction():
                retired_now, last = await self.in_thread(drop_chunk)
            retired += retired_now
            self._membership_changed()
            if last:
                return retired
            await anyio.lowlevel.checkpoint()

    async def named_cohorts(self) -> dict[str, NamedCohortRecord]:
        """Every named cohort as last synced, by name."""
        rows = await self.db.execute_fetchall(
            "SELECT name, key, first_seen, last_applied, counts FROM named_cohorts ORDER BY name"
        )
        return {
            str(name): NamedCohortRecord(str(name), str(key), str(first), str(last), json.loads(counts))
            for name, key, first, last, counts in rows
        }

    # -- approvals -----------------------------------------------------------------------------

    async def approve(
        self,
        *,
        stage: str,
        template_id: str | None,
        llm_model_id: str | None,
        limit: int | None,
        requested_by: str,
        cohort_id: str | None,
        budget_usd: float | None = None,
        plan: str | None = None,
        scope: str | None = None,
        batch_keys: Collection[tuple[str, str]] = (),
    ) -> tuple[int, int]:
        """Queue the matching pending generations of a cohort (``scope``: None for the default one, else
        a named cohort's name); returns (approval id, matched). Rows of other cohorts only stay pending:
        approving one cohort's work must not spend on another's. ``llm`` rows of the (stage, model)
        ``batch_keys`` are queued in mode ``batch``: batches take them, the pool does not."""
        where, params = _scope(stage, template_id, llm_model_id)
        source, member, scoped = _source(scope, "in_default = 1")
        async with self.transaction() as db:
            approval_id = await self._record_approval(
                db, "approve", stage, template_id, llm_model_id, limit, requested_by, cohort_id
            )
            await db.execute(
                "UPDATE approvals SET budget_usd = ?, plan = ? WHERE id = ?", (budget_usd, plan, approval_id)
            )
        # In chunks of their own transactions, parents first (the listing index gives that order without
        # a sort), so claims, completions and status go on while a million rows are queued. After a
        # crash in between, the rows queued so far stay queued under this approval.
        # Online work (the usual case) leaves the mode alone: no per-row test of a million rows.
        mode, keys = (f", {_BATCH_MODE}", (batch_keys_json(batch_keys),)) if batch_keys else ("", ())
        matched = 0
        while limit is None or matched < limit:
            take = self.approve_chunk if limit is None else min(self.approve_chunk, limit - matched)
            async with self.transaction() as db:
                n = await _changes(
                    db,
                    f"UPDATE generations SET state = 'queued', approval_id = ?, updated_at = ?{mode} "
                    f"WHERE rowid IN (SELECT generations.rowid FROM {source} WHERE {member} AND state = 'pending' "
                    f"AND retired = 0 AND {where} ORDER BY stage_rank, generations.rowid LIMIT ?)",
                    (approval_id, utc_now(), *keys, *scoped, *params, take),
                )
                matched += n
                if n < take:
                    await db.execute("UPDATE approvals SET matched = ? WHERE id = ?", (matched, approval_id))
                    break
            await anyio.lowlevel.checkpoint()  # let waiting writers in between chunks
        else:
            async with self.transaction() as db:
                await db.execute("UPDATE approvals SET matched = ? WHERE id = ?", (matched, approval_id))
        return approval_id, matched

    async def revoke(
        self,
        *,
        stage: str,
        template_id: str | None,
        llm_model_id: str | None,
        requested_by: str,
        cohort_id: str | None = None,
        scope: str | None = None,
    ) -> int:
        """Send queued (not started) generations of a cohort back to pending; returns how many.

        ``scope`` as for :meth:`approve`; the default cohort's also takes retired rows (no cohort
        holds them, and the default one always took them), never rows only named cohorts hold.
        """
        where, params = _scope(stage, template_id, llm_model_id)
        where, scoped = _where_in(scope, "(in_default = 1 OR retired = 1)", f"state = 'queued' AND {where}")
        async with self.transaction() as db:
            approval_id = await self._record_approval(
                db, "revoke", stage, template_id, llm_model_id, None, requested_by, cohort_id
            )
            revoked = await _changes(
                db,
                f"UPDATE generations SET state = 'pending', approval_id = NULL, updated_at = ?, {_ONLINE_MODE} "
                f"WHERE {where}",
                (utc_now(), *scoped, *params),
            )
            await db.execute("UPDATE approvals SET matched = ? WHERE id = ?", (revoked, approval_id))
        return revoked

    async def pending_ids(
        self,
        *,
        stage: str,
        template_id: str | None,
        llm_model_id: str | None,
        limit: int | None,
        scope: str | None = None,
    ) -> list[str]:
        """The gen_ids an approval with this scope would queue now, in the order it would take them."""
        where, params = _scope(stage, template_id, llm_model_id)
        source, member, scoped = _source(scope, "in_default = 1")
        async with self.db.execute(
            f"SELECT generations.gen_id FROM {source} WHERE {member} AND state = 'pending' AND retired = 0 "
            f"AND {where} ORDER BY stage_rank, generations.rowid LIMIT ?",
            (*scoped, *params, -1 if limit is None else limit),
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    async def retry(
        self,
        *,
        stage: str | None,
        kind: str | None,
        template_id: str | None,
        llm_model_id: str | None,
        fresh: bool,
        requested_by: str,
        cohort_id: str | None = None,
        scope: str | None = None,
        batch_keys: Collection[tuple[str, str]] = (),
    ) -> int:
        """Send failed generations of a cohort (``scope`` as for :meth:`approve`) back to queued;
        returns how many. Calls of the (stage, model) ``batch_keys`` go into batches, every other one online."""
        clauses, params = ["state = 'failed'", "retired = 0"], []
        for column, value in (
            ("stage", stage),
            ("error_kind", kind),
            ("template_id", template_id),
            ("llm_model_id", llm_model_id),
        ):
            if value:
                clauses.append(f"{column} = ?")
                params.append(value)
        where, scoped = _where_in(scope, "in_default = 1", " AND ".join(clauses))
        async with self.transaction() as db:
            approval_id = await self._record_approval(
                db, "retry", stage or "*", template_id, llm_model_id, None, requested_by, cohort_id
            )
            retried = await _changes(
                db,
                "UPDATE generations SET state = 'queued', fresh = ?, error_kind = NULL, error_message = NULL, "
                f"updated_at = ?, {_RETRY_MODE} WHERE {where}",
                (int(fresh), utc_now(), batch_keys_json(batch_keys), *scoped, *params),
            )
            await db.execute("UPDATE approvals SET matched = ? WHERE id = ?", (retried, approval_id))
        return retried

    async def budgets(self) -> tuple[int, dict[int, float]]:
        """The newest approval id, and the approvals up to it that carry a budget: id -> dollars.

        One read, so no approval can fall between the two: an id above the first is one whose
        budget (if any) is not in the second yet.
        """
        rows = await self.db.execute_fetchall(
            "SELECT id, budget_usd FROM approvals WHERE (budget_usd IS NOT NULL AND action = 'approve') "
            "OR id = (SELECT MAX(id) FROM approvals)"
        )
        newest = max((row[0] for row in rows), default=0)
        return newest, {row[0]: row[1] for row in rows if row[1] is not None}

    async def usage_by_approval(self, approval_ids: Sequence[int]) -> list[dict[str, Any]]:
        """Attempts' cost and tokens per (approval, model), for the approvals given."""
        if not approval_ids:
            return []
        marks = ", ".join("?" * len(approval_ids))
        async with self.db.execute(
            "SELECT g.approval_id AS approval_id, a.llm_model_id AS model, count(*) AS calls, "
            "sum(a.cost) AS cost, sum(CASE WHEN a.cost IS NULL THEN a.prompt_tokens END) AS unpriced_prompt, "
            "sum(CASE WHEN a.cost IS NULL THEN a.completion_tokens END) AS unpriced_completion "
            f"FROM attempts a JOIN generations g ON g.gen_id = a.gen_id WHERE g.approval_id IN ({marks}) "
            "GROUP BY g.approval_id, a.llm_model_id",
            tuple(approval_ids),
        ) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

    async def usage_by_template_model(self) -> list[dict[str, Any]]:
        """Average tokens of successful attempts per (stage, template, model): what a plan expects."""
        async with self.db.execute(
            "SELECT g.stage AS stage, g.template_id AS template_id, a.llm_model_id AS model, count(*) AS calls, "
            "avg(a.prompt_tokens) AS prompt_tokens, avg(a.completion_tokens) AS completion_tokens, "
            "avg(a.cost) AS cost FROM attempts a JOIN generations g ON g.gen_id = a.gen_id "
            "WHERE a.outcome = 'ok' GROUP BY g.stage, g.template_id, a.llm_model_id"
        ) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

    async def rows(self, gen_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The rows of these generations (in chunks, for big plans)."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(gen_ids), 500):
            chunk = gen_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT {GENERATION_COLUMNS} FROM generations WHERE gen_id IN ({marks})", tuple(chunk)
            ) as cursor:
                found.extend(dict(row) for row in await cursor.fetchall())
        return found

    async def generations_by_id(self, gen_ids: Collection[str]) -> dict[str, Generation]:
        """gen_id -> its ``Generation``, for the ids given that have a row (retired ones included: a
        named cohort's spec may name any generation the run state ever had). Read in chunks."""
        ids = list(gen_ids)
        found: dict[str, Generation] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT {GENERATION_COLUMNS} FROM generations WHERE gen_id IN ({marks})", tuple(chunk)
            ) as cursor:
                found.update((row["gen_id"], row_generation(row)) for row in await cursor.fetchall())
        return found

    async def states(self, gen_ids: Sequence[str]) -> dict[str, str]:
        """gen_id -> state for the ids given (missing ids are left out)."""
        result: dict[str, str] = {}
        for start in range(0, len(gen_ids), 500):
            chunk = gen_ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            async with self.db.execute(
                f"SELECT gen_id, state FROM generations WHERE gen_id IN ({marks})", tuple(chunk)
            ) as cursor:
                result.update({row[0]: row[1] for row in await cursor.fetchall()})
        return result

    @staticmethod
    async def _record_approval(
        db: aiosqlite.Connection,
        action: str,
        stage: str,
        template_id: str | None,
        llm_model_id: str | None,
        limit: int | None,
        requested_by: str,
        cohort_id: str | None,
    ) -> int:
        cursor = await db.execute(
            "INSERT INTO approvals (created_at, requested_by, action, cohort_id, stage, template_id, llm_model_id, "
            "limit_n, matched) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (utc_now(), requested_by, action, cohort_id, stage, template_id, llm_model_id, limit),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    # -- the pool ------------------------------------------------------------------------------

    async def running(self, *, batches: bool = False) -> list[tuple[str, str]]:
        """``(stage, gen_id)`` of every ``running`` row the pool runs (``batches``: and those batches
        hold, which the pool must leave alone)."""
        only = "" if batches else " AND mode != 'batch'"
        async with self.db.execute(
            f"SELECT stage, gen_id FROM generations WHERE state = 'running'{only}"
        ) as cursor:
            return [(str(stage), str(gen_id)) for stage, gen_id in await cursor.fetchall()]

    async def requeue(self, gen_ids: Sequence[str]) -> int:
        """Send these ``running`` rows back to the queue (their owner is gone); count them."""
        if not gen_ids:
            return 0
        async with self.transaction() as db:
            cursor = await db.executemany(
                "UPDATE generations SET state = 'queued', lease_expires = NULL, updated_at = ? WHERE gen_id = ? AND state = 'running'",
                [(utc_now(), gen_id) for gen_id in gen_ids],
            )
            return cursor.rowcount  # total_changes would count the generation_counts triggers' writes too

    async def recover(self) -> int:
        """At startup: every ``running`` row belongs to a dead process; send it back to ``queued``,
        but for the members of open batches (the batch goes on: it was submitted, or will be)."""
        async with self.transaction() as db:
            return await _changes(
                db,
                "UPDATE generations SET state = 'queued', lease_expires = NULL, updated_at = ? WHERE state = 'running' "
                "AND NOT (mode = 'batch' AND EXISTS (SELECT 1 FROM batch_members m JOIN batches b ON b.id = m.batch_id "
                "WHERE m.gen_id = generations.gen_id AND m.token = generations.lease_token AND b.state != 'closed'))",
                (utc_now(),),
            )

    async def complete(self, completions: Sequence[Completion]) -> int:
        """Commit outcomes (one transaction); a stale token changes nothing. Returns rows committed."""
        return sum(await self.complete_each(completions))

    async def complete_each(self, completions: Sequence[Completion]) -> list[bool]:
        """Commit outcomes in one transaction; for each, whether it was committed (False: stale token).

        Three statements for the whole batch, whatever its size: which tokens still hold, the
        updates, the attempts, all in one trip to the database thread (:meth:`in_one_trip`). The
        pool batches completions, so this is on its hot path.
        """
        if not completions:
            return []
        return await self.in_one_trip(lambda db: _complete(db, completions, utc_now()))

    async def release(self, claims: Iterable[Claim]) -> int:
        """Give unfinished claims back (shutdown, armed work called off): running -> queued under the
        same token check. A row whose approving cohort no longer holds it (a sync ran while it was
        running) goes back to pending instead: another cohort has not approved it."""
        params = [(utc_now(), c.generation.gen_id, c.token) for c in claims]
        if not params:
            return 0
        async with self.transaction() as db:
            cursor = await db.executemany(
                "UPDATE generations SET state = 'queued', lease_expires = NULL, updated_at = ? "
                "WHERE gen_id = ? AND lease_token = ? AND state = 'running'",
                params,
            )
            released = cursor.rowcount  # total_changes would count the generation_counts triggers' writes too
            await _unqueue_strays(db, [gen_id for _, gen_id, _ in params], utc_now())
            return released

    # -- reading -------------------------------------------------------------------------------

    async def counts(self, *, scope: str | None = None) -> dict[str, dict[str, int]]:
        """Generations of a cohort per stage and state; retired ones counted apart under ``retired``.

        The default cohort (``scope`` None) is the live rows of the counts table less the few live
        rows only named cohorts hold (their partial index), so neither is a scan of generations;
        its ``retired`` is every retired row, as before there were named cohorts. A named cohort
        is counted from its members (it has no retired ones: a member is live).
        """
        result = {str(s): {str(state): 0 for state in State} for s in STAGES}
        if scope is None:
            rows = await self.db.execute_fetchall(  # a few dozen rows, never a scan of generations
                "SELECT stage, state, retired, sum(n) FROM ("
                "SELECT stage, state, retired, n FROM generation_counts WHERE n != 0 UNION ALL "
                "SELECT stage, state, 0, -count(*) FROM generations WHERE retired = 0 AND in_default = 0 "
                "GROUP BY stage, state) GROUP BY stage, state, retired HAVING sum(n) != 0"
            )  # (one trip, one statement: two reads could fall either side of another task's write)
        else:
            rows = await self.db.execute_fetchall(
                f"SELECT stage, state, retired, count(*) FROM {_NAMED_SOURCE} WHERE cohort_members.cohort = ? "
                "GROUP BY stage, state, retired",
                (scope,),
            )
        for stage, state, retired, n in rows:
            result.setdefault(stage, {})
            key = str(State.RETIRED) if retired else state
            result[stage][key] = result[stage].get(key, 0) + n
        return result

    async def llm_keys(
        self,
        *,
        state: str,
        stage: str | None,
        template_id: str | None,
        llm_model_id: str | None,
        kind: str | None = None,
        scope: str | None = None,
    ) -> set[tuple[str, str]]:
        """The (stage, model) of a cohort's live rows in ``state`` that make calls (``llm`` or ``batch``
        mode), narrowed as an approval or a retry narrows them: the work ``--batch`` would apply to."""
        if template_id is None and kind is None:  # from the counts table, without a scan
            return {
                (row["stage"], row["llm_model_id"])
                for row in await self.counts_by_model(scope=scope)
                if row["state"] == state
                and row["mode"] in ("llm", "batch")
                and stage in (None, row["stage"])
                and llm_model_id in (None, row["llm_model_id"])
            }
        clauses, params = ["state = ?", "retired = 0", "mode IN ('llm', 'batch')"], [state]
        for column, value in (
            ("stage", stage),
            ("template_id", template_id),
            ("llm_model_id", llm_model_id),
            ("error_kind", kind),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where, scoped = _where_in(scope, "in_default = 1", " AND ".join(clauses))
        rows = await self.db.execute_fetchall(
            f"SELECT DISTINCT stage, llm_model_id FROM generations WHERE {where}", (*scoped, *params)
        )
        return {(str(row[0]), str(row[1])) for row in rows}

    async def counts_by_model(self, *, scope: str | None = None) -> list[dict[str, Any]]:
        """Live generations of a cohort per (stage, state, model, mode): the default cohort's (``scope``
        None) from the counts table less the rows only named cohorts hold, a named one's from its members."""
        if scope is None:
            rows = await self.db.execute_fetchall(
                "SELECT stage, state, llm_model_id, mode, sum(n) AS n FROM ("
                "SELECT stage, state, llm_model_id, mode, n FROM generation_counts WHERE retired = 0 AND n != 0 "
                "UNION ALL SELECT stage, state, llm_model_id, mode, -count(*) FROM generations "
                "WHERE retired = 0 AND in_default = 0 GROUP BY stage, state, llm_model_id, mode) "
                "GROUP BY stage, state, llm_model_id, mode HAVING sum(n) != 0 "
                "ORDER BY stage, state, llm_model_id, mode"
            )
        else:
            rows = await self.db.execute_fetchall(
                f"SELECT stage, state, llm_model_id, mode, count(*) AS n FROM {_NAMED_SOURCE} "
                "WHERE cohort_members.cohort = ? AND retired = 0 GROUP BY stage, state, llm_model_id, mode "
                "ORDER BY stage, state, llm_model_id, mode",
                (scope,),
            )
        return [dict(row) for row in rows]

    async def generations(
        self, *, stage: str | None, state: str | None, limit: int, scope: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of a cohort as dicts, filtered by stage and state (``retired`` selects retired rows,
        which no cohort holds: ``scope`` is ignored for them).

        ``scope`` as for :meth:`approve`. Without a state the default cohort lists retired rows too
        (as it did before there were named cohorts), never the rows only named cohorts hold.
        """
        source, member, params = "generations", "retired = 1", list[Any]()
        if state != State.RETIRED:
            # with a state, retired = 0 is among the clauses below
            default = "in_default = 1" if state else "(in_default = 1 OR retired = 1)"
            source, member, params = _source(scope, default)
        clauses = [member]
        if stage:  # stage_rank too: the listing indexes are ordered by it, so nothing is sorted
            clauses.extend(["stage_rank = ?", "stage = ?"])
            params.extend([_rank(stage), stage])
        if state and state != State.RETIRED:
            clauses.extend(["state = ?", "retired = 0"])
            params.append(state)
        async with self.db.execute(
            f"SELECT {_GENERATION_COLUMNS_QUALIFIED} FROM {source} WHERE {' AND '.join(clauses)} "
            "ORDER BY stage_rank, generations.rowid LIMIT ?",
            (*params, limit),
        ) as cursor:
            return [dict(row) for row in await cursor.fetchall()]

    async def generation(self, gen_id: str) -> dict[str, Any] | None:
        """One row with its attempts, or None."""
        async with self.db.execute(
            f"SELECT {GENERATION_COLUMNS} FROM generations WHERE gen_id = ?", (gen_id,)
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        async with self.db.execute(
            "SELECT attempt, started_at, finished_at, outcome, status, message, prompt_tokens, completion_tokens, "
            "total_tokens, reasoning_tokens, cost FROM attempts WHERE gen_id = ? ORDER BY id",
            (gen_id,),
        ) as cur:
            attempts = [dict(a) for a in await cur.fetchall()]
        return {**dict(row), "attempt_log": attempts}

    async def failures_by_kind(self, *, scope: str | None = None) -> dict[str, dict[str, int]]:
        """Failed generations of a cohort (``scope`` as for :meth:`approve`) by stage and failure kind.

        The default cohort's: every live failure less those only named cohorts hold, both read from
        partial indexes alone; a named cohort's from its members.
        """
        params: tuple[Any, ...] = ()
        if scope is None:
            sql = (
                "SELECT stage, kind, sum(n) FROM ("
                "SELECT stage, coalesce(error_kind, 'unknown') AS kind, count(*) AS n "
                "FROM generations INDEXED BY generations_failed "
                "WHERE state = 'failed' AND retired = 0 GROUP BY stage, error_kind UNION ALL "
                "SELECT stage, coalesce(error_kind, 'unknown'), -count(*) "
                "FROM generations INDEXED BY generations_outside_default "
                "WHERE state = 'failed' AND retired = 0 AND in_default = 0 GROUP BY stage, error_kind) "
                "GROUP BY stage, kind HAVING sum(n) != 0"
            )
        else:
            sql, params = (
                f"SELECT stage, coalesce(error_kind, 'unknown'), count(*) FROM {_NAMED_SOURCE} "
                "WHERE cohort_members.cohort = ? AND state = 'failed' AND retired = 0 GROUP BY stage, error_kind",
                (scope,),
            )
        async with self.db.execute(sql, params) as cursor:
            result: dict[str, dict[str, int]] = {}
            for stage, kind, n in await cursor.fetchall():
                result.setdefault(stage, {})[kind] = n
            return result

    async def recent_errors(self, since_s: float = 3600.0) -> dict[str, int]:
        """Failed attempts by outcome in the last ``since_s`` seconds."""
        async with self.db.execute(
            "SELECT outcome, count(*) FROM attempts WHERE outcome != 'ok' AND finished_at > ? GROUP BY outcome",
            (time.time() - since_s,),
        ) as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}


_COUNT_KEY = "stage, state, llm_model_id, mode"
_ADD_COUNTS = (
    "INSERT INTO generation_counts (stage, state, retired, llm_model_id, mode, n) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO UPDATE SET n = n + excluded.n"
)
CountKey = tuple[str, str, int, str, str]
"""(stage, state, retired, llm_model_id, mode): a row of ``generation_counts``."""


def _add_members(
    db: sqlite3.Connection, part: Sequence[Generation], modes: dict[tuple[Stage, str], str], now: str
) -> tuple[int, int, int]:
    """Make ``part`` members of the default cohort: revive the retired rows, mark the rows only named
    cohorts hold, insert the missing ones (state ``pending``), and count the revived and inserted in
    ``generation_counts`` in the same transaction (no trigger does: see migration m008; marking a
    live row changes no count). Returns (revived, added, joined)."""
    delta: Counter[CountKey] = Counter()
    ids = json.dumps([g.gen_id for g in part])
    revived = list(
        _fetchall(
            db,
            f"UPDATE generations SET retired = 0, in_default = 1, updated_at = ? WHERE retired = 1 AND gen_id IN "
            f"(SELECT value FROM json_each(?)) RETURNING gen_id, {_COUNT_KEY}",
            (now, ids),
        )
    )
    back = set()
    for gen_id, stage, state, model, mode in revived:
        back.add(gen_id)
        delta[(stage, state, 1, model, mode)] -= 1
        delta[(stage, state, 0, model, mode)] += 1
    joined: list[Any] = []
    if _any_outside_default(db):  # (a look at a partial index: none while no named cohort holds any)
        joined = list(
            _fetchall(
                db,
                "UPDATE generations SET in_default = 1, updated_at = ? WHERE retired = 0 AND in_default = 0 "
                "AND gen_id IN (SELECT value FROM json_each(?)) RETURNING gen_id",
                (now, ids),
            )
        )
        back.update(row[0] for row in joined)
    added = _insert_pending(db, _new_rows(part, back, modes, now), delta, in_default=True)
    return len(revived), added, len(joined)


def _insert_pending(
    db: sqlite3.Connection, rows: list[tuple[Any, ...]], delta: Counter[CountKey], *, in_default: bool
) -> int:
    """Insert these rows (from :func:`_new_rows`) pending, in the default cohort or not, and apply
    ``delta`` plus their counts to ``generation_counts``; returns how many were inserted.

    A row already there (a diff against a stale membership) is left as it is, and the counts are
    then taken again from the table, the slow and always-right way."""
    before = db.total_changes
    db.executemany(
        "INSERT OR IGNORE INTO generations (gen_id, stage, stage_rank, parent_gen_id, combo_id, "
        "template_id, llm_model_id, replicate, mode, state, created_at, updated_at, in_default) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        [(*row, int(in_default)) for row in rows],
    )
    added = db.total_changes - before
    for row in rows:
        delta[(str(row[1]), str(State.PENDING), 0, str(row[6]), str(row[8]))] += 1
    _apply_counts(db, delta)
    if added != len(rows):
        _recount(db)
    return added


def _retire_members(db: sqlite3.Connection, ids: Sequence[str], now: str) -> tuple[int, int]:
    """Take these rows out of the default cohort: retire those no named cohort holds (and count it in
    ``generation_counts``), only unmark the others. Returns (retired, kept)."""
    members = json.dumps(list(ids))
    retired = list(
        _fetchall(
            db,
            f"UPDATE generations SET retired = 1, in_default = 0, updated_at = ? WHERE retired = 0 "
            f"AND in_default = 1 AND gen_id IN (SELECT value FROM json_each(?)) AND NOT EXISTS "
            f"(SELECT 1 FROM cohort_members WHERE cohort_members.gen_id = generations.gen_id) RETURNING {_COUNT_KEY}",
            (now, members),
        )
    )
    delta: Counter[CountKey] = Counter()
    for stage, state, model, mode in retired:
        delta[(stage, state, 0, model, mode)] -= 1
        delta[(stage, state, 1, model, mode)] += 1
    _apply_counts(db, delta)
    kept = 0
    if _any_named_member(db):  # (none: every row left was retired above, and nothing is kept)
        kept = _rowcount(  # held by a named cohort: they stay live, out of the default cohort
            db,
            "UPDATE generations SET in_default = 0, updated_at = ? WHERE in_default = 1 "
            "AND gen_id IN (SELECT value FROM json_each(?))",
            (now, members),
        )
    if kept:  # what the default cohort approved and did not start is not the named cohorts' to run
        _unqueue(db, ids, now, _DEFAULT_APPROVAL, ())
    return len(retired), kept


def _add_named(
    db: sqlite3.Connection,
    name: str,
    part: Sequence[Generation],
    modes: dict[tuple[Stage, str], str],
    now: str,
) -> tuple[int, int, int]:
    """Make ``part`` members of the named cohort ``name``: the rows that exist are shared (a retired
    one revived, outside the default cohort), the missing ones inserted pending, outside the default
    cohort; revivals and inserts counted in ``generation_counts``. Returns (revived, added, joined)."""
    ids = json.dumps([g.gen_id for g in part])
    new = {  # its members now; the others were already (a diff against a stale membership)
        row[0]
        for row in _fetchall(
            db,
            "INSERT OR IGNORE INTO cohort_members (cohort, gen_id) SELECT ?, value FROM json_each(?) RETURNING gen_id",
            (name, ids),
        )
    }
    existing = {
        row[0]: row[1]
        for row in _fetchall(
            db,
            "SELECT gen_id, retired FROM generations WHERE gen_id IN (SELECT value FROM json_each(?))",
            (ids,),
        )
    }
    delta: Counter[CountKey] = Counter()
    revived: list[Any] = []
    if any(existing.values()):
        revived = list(
            _fetchall(
                db,
                f"UPDATE generations SET retired = 0, updated_at = ? WHERE retired = 1 AND gen_id IN "
                f"(SELECT value FROM json_each(?)) RETURNING {_COUNT_KEY}",
                (now, json.dumps([gen_id for gen_id, retired in existing.items() if retired])),
            )
        )
    for stage, state, model, mode in revived:
        delta[(stage, state, 1, model, mode)] -= 1
        delta[(stage, state, 0, model, mode)] += 1
    if revived:  # queued under another cohort's approval before it was retired: this one did not approve it
        _unqueue(db, [gen_id for gen_id, retired in existing.items() if retired], now, _ANY_APPROVAL, ())
    joined = sum(1 for gen_id, retired in existing.items() if not retired and gen_id in new)
    added = _insert_pending(db, _new_rows(part, existing, modes, now), delta, in_default=False)
    return len(revived), added, joined


def _leave_named(db: sqlite3.Connection, name: str, ids: Sequence[str], now: str) -> tuple[int, int]:
    """Take these rows out of the named cohort ``name``: retire those no cohort holds any more (and
    count it in ``generation_counts``). Returns (retired, kept): kept stay live for another cohort."""
    if not ids:
        return 0, 0
    left = [
        row[0]
        for row in _fetchall(
            db,
            "DELETE FROM cohort_members WHERE cohort = ? AND gen_id IN (SELECT value FROM json_each(?)) RETURNING gen_id",
            (name, json.dumps(list(ids))),
        )
    ]
    retired = list(
        _fetchall(
            db,
            f"UPDATE generations SET retired = 1, updated_at = ? WHERE retired = 0 AND in_default = 0 "
            f"AND gen_id IN (SELECT value FROM json_each(?)) AND NOT EXISTS "
            f"(SELECT 1 FROM cohort_members WHERE cohort_members.gen_id = generations.gen_id) RETURNING {_COUNT_KEY}",
            (now, json.dumps(left)),
        )
    )
    delta: Counter[CountKey] = Counter()
    for stage, state, model, mode in retired:
        delta[(stage, state, 0, model, mode)] -= 1
        delta[(stage, state, 1, model, mode)] += 1
    _apply_counts(db, delta)
    if len(left) > len(
        retired
    ):  # kept by other cohorts: what this one approved and did not start is not theirs
        _unqueue(db, left, now, "cohort_id = ?", (name,))
    return len(retired), len(left) - len(retired)


_IN_BATCH_KEYS = "(stage || ' ' || llm_model_id) IN (SELECT value FROM json_each(?))"
_BATCH_MODE = f"mode = CASE WHEN mode = 'llm' AND {_IN_BATCH_KEYS} THEN 'batch' ELSE mode END"
"""Queued ``llm`` rows of the (stage, model) keys in the JSON list parameter (:func:`batch_keys_json`) go
into batches. Mode only ever changes with the state in the same statement: the counts trigger fires on
state changes and moves the count from the old (state, mode) to the new one."""
_RETRY_MODE = (
    f"mode = CASE WHEN mode IN ('llm', 'batch') THEN CASE WHEN {_IN_BATCH_KEYS} THEN 'batch' ELSE 'llm' END "
    "ELSE mode END"
)
"""As :data:`_BATCH_MODE`, for rows that may have run in a batch before: the retry decides again."""
_ONLINE_MODE = "mode = CASE mode WHEN 'batch' THEN 'llm' ELSE mode END"
"""A row that goes back to pending is no batch's any more: its next approval decides."""


def batch_keys_json(keys: Collection[tuple[str, str]]) -> str:
    """(stage, model) keys as the JSON list :data:`_IN_BATCH_KEYS` matches (a space never occurs in
    either: both are plain ids)."""
    return json.dumps(sorted(f"{stage} {model}" for stage, model in keys))


_ANY_APPROVAL = "1"
_DEFAULT_APPROVAL = "cohort_id IS NULL OR cohort_id NOT IN (SELECT name FROM named_cohorts)"
"""An approval of the default cohort: it records the default cohort's id of the day, never a name."""


def _unqueue(
    db: sqlite3.Connection, ids: Sequence[str], now: str, approval: str, params: Sequence[Any]
) -> int:
    """Send back to pending the rows of ``ids`` still live and queued under an approval matching
    ``approval`` (SQL over ``approvals``): approved for a cohort that no longer holds them, they are
    not another cohort's to pay for until that cohort approves them. Counts follow (the state trigger)."""
    return _rowcount(
        db,
        f"UPDATE generations SET state = 'pending', approval_id = NULL, updated_at = ?, {_ONLINE_MODE} "
        "WHERE state = 'queued' AND retired = 0 AND gen_id IN (SELECT value FROM json_each(?)) "
        f"AND approval_id IN (SELECT id FROM approvals WHERE {approval})",
        (now, json.dumps(list(ids)), *params),
    )


async def _unqueue_strays(db: aiosqlite.Connection, ids: Sequence[str], now: str) -> int:
    """Send back to pending the rows of ``ids`` queued under an approval whose cohort no longer holds
    them: a default-cohort approval for a row outside the default cohort, or a named cohort's for a
    row that is not its member (what :func:`_unqueue` does for queued rows during a sync, for rows
    that were running then)."""
    return await _changes(
        db,
        f"UPDATE generations SET state = 'pending', approval_id = NULL, updated_at = ?, {_ONLINE_MODE} "
        "WHERE state = 'queued' AND retired = 0 AND gen_id IN (SELECT value FROM json_each(?)) AND ("
        f"(in_default = 0 AND approval_id IN (SELECT id FROM approvals WHERE {_DEFAULT_APPROVAL})) "
        "OR EXISTS (SELECT 1 FROM approvals a WHERE a.id = generations.approval_id "
        "AND a.cohort_id IN (SELECT name FROM named_cohorts) AND NOT EXISTS "
        "(SELECT 1 FROM cohort_members m WHERE m.cohort = a.cohort_id AND m.gen_id = generations.gen_id)))",
        (now, json.dumps(list(ids))),
    )


async def _mark_unsynced(db: aiosqlite.Connection, name: str, now: str) -> None:
    """Record ``name`` with an empty key: listed (so a removed spec drops it), not synced."""
    await db.execute(
        "INSERT INTO named_cohorts (name, key, first_seen, last_applied, counts) VALUES (?, '', ?, ?, '{}') "
        "ON CONFLICT (name) DO UPDATE SET key = ''",
        (name, now, now),
    )


def _any_named_member(db: sqlite3.Connection) -> bool:
    """Whether any named cohort has a member."""
    rows = _fetchall(db, "SELECT EXISTS (SELECT 1 FROM cohort_members)")
    return bool(next(iter(rows))[0])


def _any_outside_default(db: sqlite3.Connection) -> bool:
    """Whether any live row is outside the default cohort (only named cohorts hold it)."""
    rows = _fetchall(db, "SELECT EXISTS (SELECT 1 FROM generations WHERE retired = 0 AND in_default = 0)")
    return bool(next(iter(rows))[0])


def _new_rows(
    part: Sequence[Generation], skip: Container[str], modes: dict[tuple[Stage, str], str], now: str
) -> list[tuple[Any, ...]]:
    """The insert parameters of the generations of ``part`` not in ``skip``."""
    return [
        (
            g.gen_id,
            g.stage.value,
            STAGE_RANK[g.stage],
            g.parent_gen_id,
            g.combo_id,
            g.template_id,
            g.llm_model_id,
            g.replicate,
            modes.get((g.stage, g.template_id), "llm"),
            now,
            now,
        )
        for g in part
        if g.gen_id not in skip
    ]


def _apply_counts(db: sqlite3.Connection, delta: Counter[CountKey]) -> None:
    changed = [(*key, n) for key, n in delta.items() if n]
    if changed:
        db.executemany(_ADD_COUNTS, changed)


def _recount(db: sqlite3.Connection) -> None:
    """Count every key from the table itself (the slow, always-right way)."""
    db.execute("DELETE FROM generation_counts")
    db.execute(
        "INSERT INTO generation_counts (stage, state, retired, llm_model_id, mode, n) "
        "SELECT stage, state, retired, llm_model_id, mode, count(*) FROM generations "
        "GROUP BY stage, state, retired, llm_model_id, mode"
    )


def _rank(stage: str) -> int:
    """A stage's ``stage_rank`` (-1, matching nothing, for an unknown stage)."""
    return STAGE_RANK[Stage(stage)] if stage in _STAGE_NAMES else -1


_NAMED_SOURCE = "cohort_members CROSS JOIN generations ON generations.gen_id = cohort_members.gen_id"
"""A named cohort's rows (with ``cohort_members.cohort = ?``), found from its members: CROSS JOIN keeps
that order, where the planner would otherwise walk a listing index over every cohort's rows."""
_GENERATION_COLUMNS_QUALIFIED = ", ".join(f"generations.{c.strip()}" for c in GENERATION_COLUMNS.split(","))


def _source(scope: str | None, default: str) -> tuple[str, str, list[Any]]:
    """Where a cohort's rows are read: (FROM clause, the condition selecting them, its parameters).

    ``default`` is the condition of the default cohort (``scope`` None); a named cohort is read from
    its members (:data:`_NAMED_SOURCE`). Columns of ``generations`` that ``cohort_members`` also has
    (``gen_id``, ``rowid``) must be qualified in statements over the source.
    """
    if scope is None:
        return "generations", default, []
    return _NAMED_SOURCE, "cohort_members.cohort = ?", [scope]


def _where_in(scope: str | None, default: str, where: str) -> tuple[str, list[Any]]:
    """The WHERE of an UPDATE of ``generations`` that meets ``where`` within a cohort, and its parameters
    (before ``where``'s): ``default`` joined to it, or the rowids of a named cohort's rows."""
    if scope is None:
        return f"{default} AND {where}", []
    return (
        f"rowid IN (SELECT generations.rowid FROM {_NAMED_SOURCE} WHERE cohort_members.cohort = ? AND {where})",
        [scope],
    )


def _scope(stage: str, template_id: str | None, llm_model_id: str | None) -> tuple[str, list[Any]]:
    # stage_rank (implied by stage) lets the listing index serve the scope in (stage_rank, rowid) order
    clauses, params = ["stage_rank = ?", "stage = ?"], [_rank(stage), stage]
    if template_id:
        clauses.append("template_id = ?")
        params.append(template_id)
    if llm_model_id:
        clauses.append("llm_model_id = ?")
        params.append(llm_model_id)
    return " AND ".join(clauses), params


def _fetchall(db: sqlite3.Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
    return db.execute(sql, params).fetchall()


def _rowcount(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> int:
    return db.execute(sql, params).rowcount


async def _changes(db: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> int:
    cursor = await db.execute(sql, params)
    return cursor.rowcount


def row_generation(row: Any) -> Generation:
    """The cohort ``Generation`` of a ``generations`` row (any mapping with its columns)."""
    return Generation(
        Stage(row["stage"]),
        row["gen_id"],
        row["parent_gen_id"],
        row["combo_id"],
        row["template_id"],
        row["llm_model_id"],
        row["replicate"],
    )


def _complete(db: sqlite3.Connection, completions: Sequence[Completion], now: str) -> list[bool]:
    """The statements of :meth:`Store.complete_each`, in the database thread."""
    holding: set[tuple[str, int]] = set()
    for start in range(0, len(completions), 500):
        chunk = completions[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = db.execute(
            f"SELECT gen_id, lease_token FROM generations WHERE state = 'running' AND gen_id IN ({marks})",
            [c.gen_id for c in chunk],
        ).fetchall()
        holding.update((row[0], row[1]) for row in rows)
    committed = [(c.gen_id, c.token) in holding for c in completions]
    fresh = [c for c, ok in zip(completions, committed, strict=True) if ok]
    db.executemany(
        "UPDATE generations SET state = ?, attempts = attempts + ?, error_kind = ?, error_message = ?, "
        "score = ?, finished_at = ?, updated_at = ?, lease_expires = NULL, fresh = 0, "
        "parse_key = ?, parse_info = ?, parent_changed = 0 "
        "WHERE gen_id = ? AND lease_token = ? AND state = 'running'",
        [
            (
                str(State.DONE if c.ok else State.QUEUED if c.requeue else State.FAILED),
                len(c.attempts),
                c.error_kind,
                c.error_message,
                c.score if c.ok else None,
                now,
                now,
                c.parse_key,
                c.parse_info,
                c.gen_id,
                c.token,
            )
            for c in fresh
        ],
    )
    db.executemany(
        "INSERT INTO attempts (gen_id, llm_model_id, attempt, started_at, finished_at, outcome, status, "
        "message, prompt_tokens, completion_tokens, total_tokens, reasoning_tokens, cost) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [_attempt_params(c, a) for c in fresh for a in c.attempts],
    )
    return committed


def _attempt_params(c: Completion, a: AttemptRow) -> tuple[Any, ...]:
    return (
        c.gen_id,
        c.llm_model_id,
        a.attempt,
        a.started_at,
        a.finished_at,
        a.outcome,
        a.status,
        a.message,
        a.prompt_tokens,
        a.completion_tokens,
        a.total_tokens,
        a.reasoning_tokens,
        a.cost,
    )
