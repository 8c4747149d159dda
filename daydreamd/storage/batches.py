"""Batches in the run state: each batch, its members, and how far its submission got.

A batch goes ``preparing -> submitting -> submitted -> collecting -> closed``:

* ``preparing``: its members were claimed (``queued -> running`` under a new lease token, in the
  same transaction that records them here); nothing has left this machine.
* ``submitting``: the request file is uploaded (``input_file_id``) and the batch is being created
  at the provider with :attr:`BatchRecord.tag` as its metadata. After a crash in this state the
  batch is looked up by that tag: created already, it is adopted; not, it is created then.
* ``submitted``: the provider's batch id is recorded; it is polled until the provider ends it.
* ``collecting``: the provider ended it (``remote_state``: completed, expired, cancelled, failed);
  its results are being saved and committed (a crash here collects again: saving is idempotent and
  each commit is fenced by its member's token).
* ``closed``: every member's result is committed.

Nothing here decides anything; :mod:`daydreamd.daemon.batches` drives the states.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from daydreamd.core.cohort import Generation
from daydreamd.core.timestamps import utc_now
from daydreamd.storage.ready import BATCH_MODES, START_SQL, Ready, claim_of
from daydreamd.storage.store import Claim, Store

_CHUNK = 500


class BatchState(StrEnum):
    """How far a batch got (see the module docstring)."""

    PREPARING = "preparing"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    COLLECTING = "collecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchRecord:
    """A row of ``batches``."""

    id: int
    tag: str
    endpoint: str
    llm_model_id: str
    stage: str
    state: BatchState
    remote_state: str | None
    input_file_id: str | None
    remote_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    requests: int
    completed: int
    failed: int
    price_factor: float
    message: str | None
    created_at: str
    submitted_at: str | None
    closed_at: str | None


_COLUMNS = (
    "id, tag, endpoint, llm_model_id, stage, state, remote_state, input_file_id, remote_id, output_file_id, "
    "error_file_id, requests, completed, failed, price_factor, message, created_at, submitted_at, closed_at"
)
_UPDATABLE = frozenset(
    {
        "state",
        "remote_state",
        "input_file_id",
        "remote_id",
        "output_file_id",
        "error_file_id",
        "requests",
        "completed",
        "failed",
        "message",
        "submitted_at",
        "polled_at",
        "closed_at",
    }
)


def _record(row: Any) -> BatchRecord:
    values = dict(zip(_COLUMNS.split(", "), row, strict=True))
    values["state"] = BatchState(values["state"])
    return BatchRecord(**values)


@dataclass(frozen=True, slots=True)
class Member:
    """A generation in a batch, with what committing its result needs."""

    claim: Claim
    state: str
    """Its generation's state now: ``running`` until its result is committed (``claimed_again``: a
    later claim holds it, so this batch's result is not its to commit)."""

    @property
    def open(self) -> bool:
        """Whether its result is still to be committed (it is running under this batch's claim)."""
        return self.state == "running"

    @property
    def generation(self) -> Generation:
        return self.claim.generation


class BatchStore:
    """The batch tables, over the service's one connection."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def open_batch(
        self,
        items: Sequence[Ready],
        *,
        endpoint: str,
        llm_model_id: str,
        stage: str,
        price_factor: float,
        lease_s: float,
        now: float,
    ) -> tuple[BatchRecord, list[Claim]] | None:
        """Claim ``items`` (those still queued, current and ready) and record them as a new batch in
        one transaction; None when none could be claimed (nothing is recorded then)."""
        ids = [item.gen_id for item in items]
        stamp = utc_now()
        tag = f"ddb_{uuid.uuid4().hex}"

        def claim_and_record(db: sqlite3.Connection) -> tuple[BatchRecord, list[Claim]] | None:
            claims: list[Claim] = []
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                sql = START_SQL.format(marks=", ".join("?" * len(chunk)), mode=BATCH_MODES)
                claims.extend(claim_of(row) for row in db.execute(sql, (now + lease_s, stamp, stamp, *chunk)))
            if not claims:
                return None
            cursor = db.execute(
                "INSERT INTO batches (tag, endpoint, llm_model_id, stage, state, requests, price_factor, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tag,
                    endpoint,
                    llm_model_id,
                    stage,
                    str(BatchState.PREPARING),
                    len(claims),
                    price_factor,
                    stamp,
                ),
            )
            batch_id = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO batch_members (batch_id, gen_id, token) VALUES (?, ?, ?)",
                [(batch_id, c.generation.gen_id, c.token) for c in claims],
            )
            row = db.execute(f"SELECT {_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()
            return _record(row), claims

        return await self._store.in_one_trip(claim_and_record)

    async def unfinished(self) -> list[BatchRecord]:
        """Every batch not closed, oldest first."""
        rows = await self._store.db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM batches WHERE state != 'closed' ORDER BY id"
        )
        return [_record(row) for row in rows]

    async def recent(self, *, closed: int = 5) -> list[BatchRecord]:
        """The batches not closed, and the last ``closed`` closed ones (for status), oldest first."""
        rows = await self._store.db.execute_fetchall(
            f"SELECT {_COLUMNS} FROM batches WHERE state != 'closed' UNION ALL "
            f"SELECT * FROM (SELECT {_COLUMNS} FROM batches WHERE state = 'closed' ORDER BY id DESC LIMIT ?) "
            "ORDER BY id",
            (closed,),
        )
        return [_record(row) for row in rows]

    async def get(self, batch_id: int) -> BatchRecord:
        """One batch by its id.

        Raises:
            KeyError: there is no such batch.
        """
        rows = list(
            await self._store.db.execute_fetchall(f"SELECT {_COLUMNS} FROM batches WHERE id = ?", (batch_id,))
        )
        if not rows:
            raise KeyError(f"no batch {batch_id} in the run state")
        return _record(rows[0])

    async def update(self, batch_id: int, **fields: Any) -> BatchRecord:
        """Set columns of one batch (one transaction); returns the batch as it is now."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not a batch column that changes: {', '.join(sorted(unknown))}")
        values = {
            key: str(value) if isinstance(value, BatchState) else value for key, value in fields.items()
        }
        sets = ", ".join(f"{key} = ?" for key in values)
        async with self._store.transaction() as db:
            await db.execute(f"UPDATE batches SET {sets} WHERE id = ?", (*values.values(), batch_id))
        return await self.get(batch_id)

    async def members(self, batch_id: int) -> list[Member]:
        """The members of a batch, in the order they joined it, with their generations as they are now."""
        rows = await self._store.db.execute_fetchall(
            "SELECT g.gen_id, g.stage, g.parent_gen_id, g.combo_id, g.template_id, g.llm_model_id, "
            "g.replicate, m.token AS lease_token, g.mode, g.attempts, g.approval_id, g.fresh, "
            "CASE WHEN g.lease_token = m.token THEN g.state ELSE 'claimed_again' END AS now_state "
            "FROM batch_members m JOIN generations g ON g.gen_id = m.gen_id WHERE m.batch_id = ? "
            "ORDER BY g.rowid",
            (batch_id,),
        )
        return [Member(claim_of(row), str(row["now_state"])) for row in rows]

    async def leave(self, batch_id: int, gen_ids: Sequence[str]) -> None:
        """Take members out of a batch before it is submitted (they ended without a call)."""
        if not gen_ids:
            return
        async with self._store.transaction() as db:
            await db.executemany(
                "DELETE FROM batch_members WHERE batch_id = ? AND gen_id = ?",
                [(batch_id, g) for g in gen_ids],
            )
            await db.execute(
                "UPDATE batches SET requests = (SELECT count(*) FROM batch_members WHERE batch_id = ?) "
                "WHERE id = ?",
                (batch_id, batch_id),
            )
