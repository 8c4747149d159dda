"""Re-parsing in the run state: which generations a parser change affects, and what it changed.

Each template's generations were parsed under a *parse key* (parser, version, and for evaluations
the verdict label and scale). ``template_parse_keys`` remembers the key last applied to each
template, so a rebuild finds the templates whose key moved without scanning every generation;
``generations.parse_key`` says which rows still carry an old key, so an interrupted re-parse
resumes where it stopped. ``parse_history`` keeps every value a re-parse replaced.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daydreamd.core.retry import FailureKind
from daydreamd.core.stages import State
from daydreamd.core.timestamps import utc_now
from daydreamd.storage.store import Store

MARK_CHILDREN = (
    "UPDATE generations SET parent_changed = 1 WHERE parent_gen_id = ? AND state IN ('done', 'failed')"
)
"""Mark the finished children of a parent whose parsed text changed. Its ``state IN ('done', 'failed')``
is, word for word, the condition of the partial index ``generations_parent_finished`` (migration m012):
the planner uses a partial index only for a query that repeats its condition."""


@dataclass(frozen=True, slots=True)
class ReparseRow:
    """A finished generation that may need re-parsing."""

    gen_id: str
    state: State
    parse_key: str | None
    score: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Reparsed:
    """The outcome of re-parsing one saved reply, to record."""

    gen_id: str
    old_state: State
    new_state: State
    old_key: str | None
    new_key: str
    old_parsed: str | None
    new_parsed: str | None
    old_score: float | None
    new_score: float | None
    parse_info: str
    """JSON of the new ``parse`` record."""
    error_message: str | None = None

    @property
    def changed(self) -> bool:
        """Whether the parsed text or the state differs from before (the key alone does not count)."""
        return self.old_parsed != self.new_parsed or self.old_state is not self.new_state


_REPARSABLE = (
    "retired = 0 AND (state = 'done' OR (state = 'failed' AND error_kind = 'parse_error')) "
    "AND stage = ? AND template_id = ?"
)


class ParseState:
    """The run state's view of parse keys and re-parses (shares the store's connection and lock)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def recorded_keys(self) -> dict[tuple[str, str], str]:
        """``(stage, template_id) -> parse key`` last applied to each template's generations."""
        async with self.store.db.execute(
            "SELECT stage, template_id, parse_key FROM template_parse_keys"
        ) as cur:
            return {(row[0], row[1]): row[2] for row in await cur.fetchall()}

    async def record_keys(self, keys: Mapping[tuple[str, str], str]) -> None:
        """Remember that these templates' generations are parsed under these keys."""
        async with self.store.transaction() as db:
            await db.executemany(
                "INSERT INTO template_parse_keys (stage, template_id, parse_key) VALUES (?, ?, ?) "
                "ON CONFLICT (stage, template_id) DO UPDATE SET parse_key = excluded.parse_key",
                [(stage, template, key) for (stage, template), key in keys.items()],
            )

    async def candidates(self, stage: str, template_id: str, key: str, *, force: bool) -> list[ReparseRow]:
        """Done (or parse-failed) generations of a template in the cohort; with ``force`` even those
        already under ``key``."""
        sql = f"SELECT gen_id, state, parse_key, score FROM generations WHERE {_REPARSABLE}"
        params: tuple[Any, ...] = (stage, template_id)
        if not force:
            sql += " AND (parse_key IS NULL OR parse_key != ?)"
            params = (*params, key)
        async with self.store.db.execute(sql + " ORDER BY gen_id", params) as cur:
            return [ReparseRow(row[0], State(row[1]), row[2], row[3]) for row in await cur.fetchall()]

    async def apply(self, results: Sequence[Reparsed], *, reason: str) -> int:
        """Record re-parses in one transaction; flag the children of changed texts; return how many
        rows were updated (a row whose state moved meanwhile, e.g. retried, is left alone)."""
        if not results:
            return 0
        now = utc_now()
        async with self.store.transaction() as db:
            cursor = await db.executemany(
                "UPDATE generations SET state = ?, score = ?, parse_key = ?, parse_info = ?, error_kind = ?, error_message = ?, updated_at = ? "
                "WHERE gen_id = ? AND state = ? AND retired = 0",
                [
                    (
                        str(r.new_state),
                        r.new_score,
                        r.new_key,
                        r.parse_info,
                        None if r.new_state is State.DONE else str(FailureKind.PARSE_ERROR),
                        r.error_message,
                        now,
                        r.gen_id,
                        str(r.old_state),
                    )
                    for r in results
                ],
            )
            # rowcount, not total_changes: that counts the generation_counts triggers' writes too
            updated = cursor.rowcount
            changed = [r for r in results if r.changed]
            await db.executemany(
                "INSERT INTO parse_history (gen_id, at, old_key, new_key, old_state, new_state, old_parsed, new_parsed, old_score, new_score, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.gen_id,
                        now,
                        r.old_key,
                        r.new_key,
                        str(r.old_state),
                        str(r.new_state),
                        r.old_parsed,
                        r.new_parsed,
                        r.old_score,
                        r.new_score,
                        reason,
                    )
                    for r in changed
                ],
            )
            await db.executemany(
                MARK_CHILDREN,
                [(r.gen_id,) for r in changed if r.old_parsed != r.new_parsed],
            )
        return updated

    async def history(self, gen_id: str) -> list[dict[str, Any]]:
        """Every re-parse that changed ``gen_id``, oldest first."""
        async with self.store.db.execute(
            "SELECT at, reason, old_key, new_key, old_state, new_state, old_parsed, new_parsed, old_score, new_score "
            "FROM parse_history WHERE gen_id = ? ORDER BY id",
            (gen_id,),
        ) as cur:
            return [dict(row) for row in await cur.fetchall()]

    async def parent_changed(self) -> dict[str, int]:
        """Per stage, finished generations made from a parent text that a re-parse has since changed."""
        async with self.store.db.execute(
            "SELECT stage, count(*) FROM generations WHERE parent_changed = 1 AND retired = 0 GROUP BY stage"
        ) as cur:
            return {row[0]: row[1] for row in await cur.fetchall()}
