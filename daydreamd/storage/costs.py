"""The calls of a scope, summed per (stage, template, model), from the run state's ``attempts``.

Read-only (``mode=ro``, as :mod:`daydreamd.storage.readers`): ``results`` computes costs while the
service runs. The scope is the one the score tables use: a cohort is the generations its
``data/cohorts/<id>/membership.csv`` lists, every stage of them (as in
:func:`daydreamd.storage.score_db.progress_from_db`), streamed into a temporary table and joined
in SQL; ``--all`` is every attempt in the run state. A generation two cohorts share counts in
both (each would have had to pay for it), as in :func:`readers.spent_by_cohort`.

One pass over the attempts, grouped in SQL: the sums and counts, and each call's latency
(``finished_at - started_at``) for the percentiles (:mod:`daydreamd.core.costs`), handed over as
a list of floats per group (a million calls: a few tens of MB).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from daydreamd.core.costs import CallGroup
from daydreamd.storage.cohort_files import read_membership
from daydreamd.storage.layout import DataLayout
from daydreamd.storage.score_inputs import ResultsError, open_state

CALLS_SQL = """
SELECT COALESCE(g.stage, ''), COALESCE(g.template_id, ''), a.llm_model_id,
       count(*), sum(a.outcome = 'ok'), count(DISTINCT a.gen_id),
       sum(a.prompt_tokens), sum(a.completion_tokens), sum(a.reasoning_tokens), sum(a.cost), count(a.cost),
       group_concat(a.finished_at - a.started_at)
FROM {source} LEFT JOIN generations g ON g.gen_id = a.gen_id
GROUP BY 1, 2, 3
"""
"""Per (stage, template, model): calls, ok calls, generations, the token and cost sums (NULL when no
call reported one), the calls that reported a cost, and every call's seconds as ``,``-joined text.

The latencies come back joined because that keeps it one pass: a second query for them would pay
the join (and, for a cohort, the membership look-ups) again, and Python would build a row per call.
A group's text is about 18 bytes a call, far within SQLite's string limit (1 GB) for any
realistic run. An attempt without a ``generations`` row (none should exist) is counted under an
empty stage and template rather than dropped."""
EVERY_ATTEMPT = "attempts a"
MEMBERS_FIRST = "temp.members m CROSS JOIN attempts a ON a.gen_id = m.gen_id"
"""A small cohort's calls: each member's attempts found through the ``attempts_gen`` index."""
ATTEMPTS_FIRST = "attempts a CROSS JOIN temp.members m ON m.gen_id = a.gen_id"
"""A large cohort's calls: every attempt read in order, kept when its generation is a member."""
PROBE_COST = 4
"""About what looking up one member's attempts costs, in attempts read in order: a cohort with
fewer than 1/4 as many members as the run state has attempts is read member by member (a
rejudge-top5 cohort in a million-call state: milliseconds instead of seconds)."""


def read_call_groups(db_path: Path, data_dir: Path, cohort_id: str | None) -> list[CallGroup]:
    """The calls of ``cohort_id``'s members (every call with None), one group per (stage, template, model).

    ResultsError when there is no run state, the cohort has no ``membership.csv``, or the
    database cannot be read.
    """
    membership = None
    if cohort_id is not None:
        membership = DataLayout(data_dir).membership(cohort_id)
        if not membership.is_file():
            raise ResultsError(
                f"cohort {cohort_id} has no {membership}; costs need its members, or use --all"
            )
    db = open_state(db_path)
    try:
        db.execute("BEGIN")  # one snapshot (membership look-ups and sums), while the service adds calls
        source = EVERY_ATTEMPT
        if membership is not None:
            source = _load_members(db, membership)
        return _groups(db, source)
    except sqlite3.DatabaseError as exc:
        raise ResultsError(f"cannot read the calls in {db_path}: {exc}") from exc
    finally:
        db.close()


def _load_members(db: sqlite3.Connection, membership: Path) -> str:
    """Stream the cohort's gen_ids (every stage) into ``temp.members``; the FROM clause to read its calls.

    A primary key, so that a gen_id listed twice is counted once (as the score tables' set does).
    """
    db.execute("CREATE TEMP TABLE members (gen_id TEXT PRIMARY KEY) WITHOUT ROWID")
    members = db.executemany(
        "INSERT OR IGNORE INTO temp.members VALUES (?)",
        ((gen_id,) for _, gen_id in read_membership(membership, None)),
    ).rowcount
    newest = db.execute("SELECT max(id) FROM attempts").fetchone()[0] or 0  # about the count, from the index
    return MEMBERS_FIRST if members * PROBE_COST < newest else ATTEMPTS_FIRST


def _groups(db: sqlite3.Connection, source: str) -> list[CallGroup]:
    """The groups of :data:`CALLS_SQL` over ``source`` (a FROM clause naming the attempts ``a``)."""
    groups = []
    for row in db.execute(CALLS_SQL.format(source=source)):
        (
            stage,
            template,
            model,
            calls,
            ok,
            generations,
            prompt,
            completion,
            reasoning,
            cost,
            priced,
            seconds,
        ) = row
        groups.append(
            CallGroup(
                stage=stage,
                template_id=template,
                llm_model_id=model,
                calls=calls,
                ok_calls=ok,
                generations=generations,
                prompt_tokens=prompt,
                completion_tokens=completion,
                reasoning_tokens=reasoning,
                cost_usd=cost,
                priced_calls=priced,
                latencies_s=[float(v) for v in seconds.split(",")],
            )
        )
    return groups
