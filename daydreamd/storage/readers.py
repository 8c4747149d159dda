"""Read-only queries of the run state, for the offline verbs (``results``, ``report``).

The schema is :mod:`daydreamd.storage.store`'s (its history in
:mod:`daydreamd.storage.migrations`); the service is the only writer. These queries open the
database with ``mode=ro``, so they work while the service runs and can never change it, and
they are plain ``sqlite3`` (no event loop): the verbs that use them are synchronous. Errors are
``sqlite3``'s; callers say what they mean for the user.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ESSAYS_SQL = """
SELECT e.gen_id, COALESCE(e.parent_gen_id, ''), COALESCE(d.template_id, ''), COALESCE(e.template_id, ''),
       COALESCE(NULLIF(e.llm_model_id, ''), d.llm_model_id, '')
FROM generations e LEFT JOIN generations d ON d.gen_id = e.parent_gen_id
WHERE e.stage = 'essay'
"""
"""Every essay with its draft: gen_id, draft gen_id, draft template, essay template, model."""
EVALUATIONS_SQL = """
SELECT gen_id, parent_gen_id, COALESCE(combo_id, ''), COALESCE(template_id, ''), COALESCE(llm_model_id, ''),
       replicate, state, {score}, error_kind, error_message
FROM generations
WHERE stage = 'evaluation' AND state IN ('done', 'failed')
"""
"""Every finished evaluation; ``{score}`` is ``score``, or ``NULL`` for a state that predates it."""
LATEST_COHORT_SQL = "SELECT cohort_id FROM cohorts ORDER BY last_applied DESC LIMIT 1"
PROGRESS_SQL = (
    "SELECT m.stage, COALESCE(g.state, 'not_in_run_state'), count(*) FROM temp.members m "
    "LEFT JOIN generations g ON g.gen_id = m.gen_id GROUP BY 1, 2"
)


def connect_readonly(db_path: Path) -> sqlite3.Connection:
    """Open the run state read-only (works while the service writes to it); the file must exist."""
    uri = db_path.resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    db.execute("PRAGMA busy_timeout=10000")
    return db


def generation_columns(db: sqlite3.Connection) -> set[str]:
    """The columns of ``generations`` (empty when there is no such table)."""
    return {row[1] for row in db.execute("PRAGMA table_info(generations)")}


def essays(db: sqlite3.Connection) -> Iterator[tuple[str, str, str, str, str]]:
    """Rows of :data:`ESSAYS_SQL`, streamed."""
    return iter(db.execute(ESSAYS_SQL))


def finished_evaluations(db: sqlite3.Connection, *, with_score: bool) -> Iterator[tuple[Any, ...]]:
    """Rows of :data:`EVALUATIONS_SQL`, streamed; ``score`` is NULL unless ``with_score``."""
    return iter(db.execute(EVALUATIONS_SQL.format(score="score" if with_score else "NULL")))


def latest_applied_cohort(db_path: Path) -> str | None:
    """The cohort the service applied last (None without a run state, a cohort, or a readable one)."""
    if not db_path.is_file():
        return None
    try:
        db = connect_readonly(db_path)
        try:
            row = db.execute(LATEST_COHORT_SQL).fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else str(row[0])


def progress_counts(
    db: sqlite3.Connection, members: Iterable[tuple[str, str]]
) -> Iterator[tuple[str, str, int]]:
    """(stage, state, count) of the generations ``members`` lists as (gen_id, stage).

    The members go into a temporary table of this connection (allowed on a read-only one) and
    are counted in SQL; those the run state does not know are ``not_in_run_state``.
    """
    db.execute("CREATE TEMP TABLE members (gen_id TEXT PRIMARY KEY, stage TEXT)")
    db.executemany("INSERT OR IGNORE INTO temp.members VALUES (?, ?)", members)
    return iter(db.execute(PROGRESS_SQL))


def spent_by_cohort(db_path: Path) -> dict[str | None, float]:
    """Dollars recorded per cohort: None for the default cohort, else each named cohort's name.

    A generation two cohorts share counts in both (each would have had to pay for it). Read on a
    connection of its own, in the caller's thread: summing a million attempts takes a second, and
    the service's connection (claims, completions) must not wait on it.
    """
    db = connect_readonly(db_path)
    try:
        spent: dict[str | None, float] = {None: 0.0}
        row = db.execute(
            "SELECT coalesce(sum(a.cost), 0) FROM attempts a CROSS JOIN generations g ON g.gen_id = a.gen_id "
            "WHERE a.cost IS NOT NULL AND g.in_default = 1"
        ).fetchone()
        spent[None] = float(row[0])
        for name, cost in db.execute(
            "SELECT m.cohort, coalesce(sum(a.cost), 0) FROM cohort_members m "
            "JOIN attempts a ON a.gen_id = m.gen_id GROUP BY m.cohort"
        ):
            spent[str(name)] = float(cost)
        return spent
    finally:
        db.close()
