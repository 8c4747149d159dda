"""Ready work in the run state: what the scheduler may start, and starting it.

Reading ready work writes nothing: a generation the scheduler holds in memory is still
``queued`` in SQLite, so a crash, a revoke or a rebuild needs no clean-up of prefetched work.
Starting is the one write: ``queued -> running`` with a new fencing token, only for rows that are
still queued, current and ready, so whatever changed since the read (a revoke, a retirement)
simply does not start.

Every read is one trip to the database thread (``execute_fetchall``): a statement left open
between trips would see the writes of other tasks on the same connection half-way through.

Keys are ``(mode, llm_model_id)``; which keys have queued work at all comes from the counts
table, and the partial index ``generations_ready_by_model`` makes the look-up for one key a seek.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from daydreamd.core.cohort import Generation
from daydreamd.core.timestamps import utc_now
from daydreamd.storage.store import Claim, Store, row_generation

Key = tuple[str, str]
"""``(mode, llm_model_id)``: ``llm`` work of a model, or ``copy`` work of its drafts."""

_COLUMNS = (
    "g.rowid AS row_order, g.gen_id, g.stage, g.stage_rank, g.parent_gen_id, g.combo_id, g.template_id, "
    "g.llm_model_id, g.replicate, g.mode, g.approval_id"
)
_PARENT_DONE = (
    "(g.parent_gen_id = '' OR EXISTS (SELECT 1 FROM generations p WHERE p.gen_id = g.parent_gen_id "
    "AND p.state = 'done'))"
)
_CHUNK = 500
START_SQL = (
    "UPDATE generations SET state = 'running', lease_token = lease_token + 1, lease_expires = ?, "
    "started_at = ?, updated_at = ? WHERE gen_id IN (SELECT g.gen_id FROM generations g "
    "WHERE g.gen_id IN ({marks}) AND g.mode {mode} AND g.state = 'queued' AND g.retired = 0 AND "
    + _PARENT_DONE
    + ") RETURNING gen_id, stage, parent_gen_id, combo_id, template_id, llm_model_id, replicate, "
    "lease_token, mode, attempts, approval_id, fresh"
)
"""``queued -> running`` with a new fencing token for the rows of ``{marks}`` still queued, current and
ready (parameters: lease expiry, started_at, updated_at, the gen_ids). ``{mode}`` is
:data:`POOL_MODES` or :data:`BATCH_MODES`: a row read as one and re-approved as the other since
(revoked, approved again with ``--batch``) is not started by the wrong one."""
POOL_MODES = "!= 'batch'"
BATCH_MODES = "= 'batch'"


@dataclass(frozen=True, slots=True)
class Ready:
    """A queued generation whose parent is done: it may start once its limits allow."""

    generation: Generation
    mode: str
    approval_id: int | None
    order: tuple[int, int]
    """``(stage rank, rowid)``: parents' stages first, then the cohort's order."""

    @property
    def key(self) -> Key:
        """The queue it waits in."""
        return (self.mode, self.generation.llm_model_id)

    @property
    def gen_id(self) -> str:
        """Its generation id."""
        return self.generation.gen_id


class ReadyWork:
    """Reads ready work and starts it, over the service's one connection."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def keys_with_work(self) -> set[Key]:
        """The keys that have any queued, current row, from the counts table (one small query)."""
        rows = await self._store.db.execute_fetchall(
            "SELECT DISTINCT mode, llm_model_id FROM generation_counts "
            "WHERE state = 'queued' AND retired = 0 AND n > 0"
        )
        return {(str(mode), str(model)) for mode, model in rows}

    async def ready(
        self, key: tuple[str, str | None], *, limit: int, exclude_approvals: Sequence[int] = ()
    ) -> list[Ready]:
        """Up to ``limit`` ready rows of ``key``, parents' stages first, then cohort order (a
        ``None`` model: of every model)."""
        mode, model = key
        params: list[Any] = [mode]
        filters = ""
        if model is not None:
            filters = "AND g.llm_model_id = ?"
            params.append(model)
        if exclude_approvals:
            marks = ", ".join("?" * len(exclude_approvals))
            filters += f" AND (g.approval_id IS NULL OR g.approval_id NOT IN ({marks}))"
            params.extend(exclude_approvals)
        params.append(limit)
        rows = await self._store.db.execute_fetchall(  # one trip: see the module docstring
            f"SELECT {_COLUMNS} FROM generations g WHERE g.state = 'queued' AND g.retired = 0 AND g.mode = ? "
            f"{filters} AND {_PARENT_DONE} ORDER BY g.stage_rank, g.rowid LIMIT ?",
            params,
        )
        return [_ready(row) for row in rows]

    async def children(self, parent_ids: Sequence[str]) -> list[Ready]:
        """Queued, current children of these generations that are ready now (their parent just finished),
        but those that wait for a batch (batches read their own work)."""
        found: list[Ready] = []
        for start in range(0, len(parent_ids), _CHUNK):
            chunk = parent_ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = await self._store.db.execute_fetchall(
                f"SELECT {_COLUMNS} FROM generations g WHERE g.parent_gen_id IN ({marks}) "
                f"AND g.state = 'queued' AND g.retired = 0 AND g.mode != 'batch' AND {_PARENT_DONE}",
                chunk,
            )
            found.extend(_ready(row) for row in rows)
        return found

    async def start(self, items: Iterable[Ready], *, lease_s: float, now: float) -> list[Claim]:
        """Move these rows ``queued -> running`` with a new fencing token, in one transaction and
        one trip to the database thread (:meth:`Store.in_one_trip`).

        Only rows still queued, current and ready start; the claims of those are returned (a row
        revoked or retired since it was read is left out, and its caller gives its slot back).
        """
        ids = [item.gen_id for item in items]
        if not ids:
            return []
        stamp = utc_now()

        def start_all(db: sqlite3.Connection) -> list[Claim]:
            claims: list[Claim] = []
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                sql = START_SQL.format(marks=", ".join("?" * len(chunk)), mode=POOL_MODES)
                claims.extend(claim_of(row) for row in db.execute(sql, (now + lease_s, stamp, stamp, *chunk)))
            return claims

        claims = await self._store.in_one_trip(start_all)
        order = {gen_id: i for i, gen_id in enumerate(ids)}  # RETURNING's order is unspecified
        return sorted(claims, key=lambda c: order[c.generation.gen_id])

    async def claim(
        self, key: tuple[str, str | None], *, limit: int, lease_s: float, now: float | None = None
    ) -> list[Claim]:
        """Read and start up to ``limit`` ready rows of ``key`` at once (what the pool does in two
        steps, for tools and tests that need no lanes)."""
        rows = await self.ready(key, limit=limit)
        return await self.start(rows, lease_s=lease_s, now=time.time() if now is None else now)


def _ready(row: Any) -> Ready:
    return Ready(
        generation=row_generation(row),
        mode=str(row["mode"]),
        approval_id=row["approval_id"],
        order=(int(row["stage_rank"]), int(row["row_order"])),
    )


def claim_of(row: Any) -> Claim:
    """The claim a started row (``START_SQL``'s RETURNING) gives."""
    return Claim(
        row_generation(row),
        row["lease_token"],
        row["mode"],
        row["attempts"],
        row["approval_id"],
        bool(row["fresh"]),
    )
