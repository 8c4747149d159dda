"""Score rows and progress from the run state (SQLite, opened read-only).

The score is the one recorded when each evaluation finished; a ``done`` evaluation without one
(a run state that predates recorded scores) has its score read from ``parsed.txt``. The queries
are :mod:`daydreamd.storage.readers`'; the database is opened with ``mode=ro``, so results can be
computed while the service runs.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from daydreamd.core.scores import SCORE_MAX_DEFAULT, ScoreRow
from daydreamd.storage import readers
from daydreamd.storage.cohort_files import read_membership
from daydreamd.storage.layout import DataLayout
from daydreamd.storage.score_inputs import (
    Loaded,
    ResultsError,
    RowContext,
    one_line_breaks,
    open_state,
    stage_order,
)


def read_rows_from_db(db_path: Path, data_dir: Path, *, cohort_id: str | None) -> Loaded:
    """Score rows of every finished evaluation in scope, from the run state.

    Two queries: the essays with their drafts (one self-join), then the finished evaluations;
    each evaluation is joined to its essay through a dict. The same result as one query with
    two self-joins, in 2.5 s instead of 4 s for a million evaluations, and the essay's fields
    are shared by its evaluations instead of copied into each.
    """
    ctx = RowContext.load(data_dir, cohort_id)
    warnings: list[str] = []
    db = open_state(db_path)
    try:
        columns = readers.generation_columns(db)
        if not columns:
            raise ResultsError(f"{db_path} has no generations table; is it a daydreamd run state?")
        with_score = "score" in columns
        if not with_score:
            warnings.append(f"{db_path} predates recorded scores; scores are read from parsed.txt files")
        intern = sys.intern
        essays: dict[str, tuple[str, str, str, str, str]] = {
            e: (e, draft, intern(draft_template), intern(essay_template), intern(model))
            for e, draft, draft_template, essay_template, model in readers.essays(db)
        }
        rows = list(_db_rows(ctx, essays, readers.finished_evaluations(db, with_score=with_score)))
    except sqlite3.DatabaseError as exc:
        raise ResultsError(f"cannot read {db_path}: {exc}") from exc
    finally:
        db.close()
    return Loaded(ctx.fill_concepts(rows), "sqlite", warnings)


_NO_ESSAY = ("", "", "", "", "")


def _db_rows(
    ctx: RowContext, essays: dict[str, tuple[str, str, str, str, str]], cursor: Iterable[tuple[Any, ...]]
) -> Iterator[ScoreRow]:
    intern = sys.intern
    combos, maxima, members = ctx.combos, ctx.score_max, ctx.members
    single = (ctx.cohort_id,) if ctx.cohort_id is not None else None
    cohorts_of = ctx.cohorts_of
    new = tuple.__new__
    for gid, essay_id, combo, template, judge, replicate, state, score, kind, message in cursor:
        if members is not None and gid not in members:
            continue
        if state == "done":
            kind, message = "", ""
            if score is None:
                score, kind = ctx.read_score(gid)
        else:
            score, kind, message = None, kind or "unknown", one_line_breaks(message or "")
        essay = essays.get(essay_id) or (intern(essay_id or ""), *_NO_ESSAY[1:])
        e_id, draft, draft_template, essay_template, model = essay
        combo = intern(combo)
        template = intern(template)
        yield new(
            ScoreRow,
            (
                draft_template,
                model,
                essay_template,
                combo,
                e_id,
                template,
                intern(judge),
                replicate if replicate is not None else 1,
                gid,
                draft,
                combos.get(combo, ()),
                score,
                maxima.get(template, SCORE_MAX_DEFAULT),
                kind,
                message,
                single if single is not None else cohorts_of.get(gid, ()),
            ),
        )


def progress_from_db(db_path: Path, data_dir: Path, cohort_id: str) -> dict[str, dict[str, int]]:
    """Per stage: the cohort's size (``total``) and its generations per state in the run state.

    Membership is streamed into a temporary table of the read-only connection and counted in SQL.
    Generations the run state does not know yet are ``not_in_run_state``.
    """
    path = DataLayout(data_dir).membership(cohort_id)
    if not path.is_file():
        return {}
    db = open_state(db_path)
    try:
        members = ((gen_id, stage) for stage, gen_id in read_membership(path, None))
        progress: dict[str, dict[str, int]] = {}
        for stage, state, n in readers.progress_counts(db, members):
            counts = progress.setdefault(stage, {"total": 0})
            counts[state] = counts.get(state, 0) + n
            counts["total"] += n
    except sqlite3.DatabaseError as exc:
        raise ResultsError(f"cannot read {db_path}: {exc}") from exc
    finally:
        db.close()
    return stage_order(progress)
