"""What ranking an earlier cohort's essays reads: its membership, its scores, the essays' coordinates.

The curated-inputs verb (``daydreamctl cohort new``, ranking in :mod:`daydreamd.core.spec.curation`)
is offline: it reads the run state (``paths.state_db``) read-only, so the service may be running,
and the source cohort's essays and evaluations from ``data/cohorts/<SRC>/membership.csv``. The
membership goes into a temporary table of the read-only connection, so the scores that count (an
essay and its evaluation both in the cohort) are selected in SQL. Errors are
:class:`~daydreamd.core.spec.curation.CurationError` saying what to do, ``sqlite3``'s included.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daydreamd.core.spec.curation import Criterion, CurationError, Essay, Source
from daydreamd.storage.cohort_files import read_membership
from daydreamd.storage.layout import DataLayout
from daydreamd.storage.readers import connect_readonly

CURRENT_COHORT_FACT = "cohort.current"
"""The ``facts`` row where the service records the cohort in force (``daemon/rebuild``)."""

MEMBERS_SQL = "CREATE TEMP TABLE members (gen_id TEXT PRIMARY KEY, stage TEXT NOT NULL)"
INSERT_MEMBERS_SQL = "INSERT OR IGNORE INTO temp.members VALUES (?, ?)"
USAGE_SQL = """
SELECT DISTINCT g.template_id, g.llm_model_id
FROM temp.members m JOIN generations g ON g.gen_id = m.gen_id
WHERE m.stage = 'evaluation'
"""
"""The (evaluation template, judge) pairs the source cohort's evaluations use, in any state."""
SCORES_SQL = """
SELECT g.parent_gen_id, g.score
FROM temp.members m
JOIN generations g ON g.gen_id = m.gen_id
JOIN temp.members p ON p.gen_id = g.parent_gen_id AND p.stage = 'essay'
WHERE m.stage = 'evaluation' AND g.state = 'done' AND g.score IS NOT NULL
  AND g.template_id = ? AND (? IS NULL OR g.llm_model_id = ?)
"""
"""(essay gen_id, score) of each scored evaluation that counts: both essay and evaluation in the cohort."""
ESSAY_SQL = """
SELECT e.combo_id, e.template_id, e.llm_model_id, e.replicate, e.parent_gen_id,
       d.template_id, d.llm_model_id, d.replicate
FROM generations e LEFT JOIN generations d ON d.gen_id = e.parent_gen_id
WHERE e.gen_id = ? AND e.stage = 'essay'
"""
"""An essay's coordinates and its draft's (the draft's are NULL when the run state lacks it)."""
CURRENT_COHORT_SQL = "SELECT value FROM facts WHERE key = ?"


@contextmanager
def open_run_state(db_path: Path) -> Iterator[sqlite3.Connection]:
    """The run state, read-only, closed on leaving; any ``sqlite3`` error in the block becomes ours.

    The check for the file comes first: ``mode=ro`` would fail on a missing one with a message
    that does not say the scores come from it.
    """
    if not db_path.is_file():
        raise CurationError(
            f"no run state at {db_path} (paths.state_db): the scores to rank come from it; "
            "run the service first, or pass the --config it runs with"
        )
    try:
        db = connect_readonly(db_path)
        try:
            yield db
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise CurationError(f"cannot read the run state {db_path}: {exc}") from exc


def current_cohort(db: sqlite3.Connection) -> str:
    """The cohort the service has in force (``facts``), or an error asking for ``--cohort``."""
    row = db.execute(CURRENT_COHORT_SQL, (CURRENT_COHORT_FACT,)).fetchone()
    if row is None or not row[0]:
        raise CurationError("the run state names no current cohort; pass --cohort with the cohort to rank")
    return str(row[0])


def read_source(db: sqlite3.Connection, layout: DataLayout, cohort_id: str, criterion: Criterion) -> Source:
    """The source cohort's membership (into a temp table of this read-only connection) and its scores."""
    membership = layout.membership(cohort_id)
    if not membership.is_file():
        known = [c for c in layout.cohort_ids() if layout.membership(c).is_file()]
        raise CurationError(
            f"unknown cohort {cohort_id!r}: there is no {membership}; pass --cohort with one of: "
            f"{', '.join(known) or '(none: write one with daydreamctl cohort --write)'}"
        )
    db.execute(MEMBERS_SQL)
    rows = ((gen_id, stage) for stage, gen_id in read_membership(membership, stage=None))
    db.executemany(INSERT_MEMBERS_SQL, rows)
    used = frozenset((str(t), str(j)) for t, j in db.execute(USAGE_SQL))
    judge = criterion.judge
    scores = tuple((str(e), float(s)) for e, s in db.execute(SCORES_SQL, (criterion.template, judge, judge)))
    return Source(cohort_id, used, scores)


def read_essay(db: sqlite3.Connection, gen_id: str) -> Essay:
    """An essay's coordinates and its draft's, from the ``generations`` table."""
    row = db.execute(ESSAY_SQL, (gen_id,)).fetchone()
    if row is None or row[5] is None:
        what = "essay row" if row is None else f"draft row (its parent {row[4]!r})"
        raise CurationError(f"the run state has no {what} for essay {gen_id}; is it the service's state?")
    combo, essay_template, essay_llm, essay_rep, _, draft_template, draft_llm, draft_rep = row
    return Essay(
        gen_id, combo, draft_template, draft_llm, int(draft_rep), essay_template, essay_llm, int(essay_rep)
    )
