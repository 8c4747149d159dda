"""Two cohorts compared item by item, checked by hand (see ``tests/core/test_results.py``'s rows)."""

from __future__ import annotations

import pytest

from daydreamd.core.breakdowns import t_quantile_975
from daydreamd.core.compare import ITEM_COLUMNS, SUMMARY_COLUMNS, compare
from tests.core.test_results import ROWS


def test_a_rubric_edit_shows_as_its_items_changed_with_a_paired_interval() -> None:
    """B re-judged every ``nov`` evaluation (new gen_ids, scores +1, +1, +3 on E1-j2, E2-j1, E2-j2 and
    E3-j1; E1-j1 has two replicates kept apart), left ``rig`` alone, lost v10 and gained a j3 row."""
    bumped = {"v1": 1.0, "v2": 1.0, "v3": 1.0, "v5": 1.0, "v6": 3.0, "v8": 1.0}
    b_rows = [
        r._replace(gen_id=r.gen_id + "b", score=(r.score or 0) + bumped[r.gen_id])
        if r.gen_id in bumped
        else r
        for r in ROWS
        if r.gen_id != "v10"
    ]
    b_rows.append(ROWS[0]._replace(gen_id="v11", evaluation_model="j3"))
    summary, items = compare(ROWS, b_rows)
    assert summary.columns == SUMMARY_COLUMNS and items.columns == ITEM_COLUMNS
    records = {(r["evaluation_template"], r["evaluation_model"]): r for r in summary.records()}
    assert sorted(records) == [("nov", "j1"), ("nov", "j2"), ("nov", "j3"), ("rig", "j1"), ("rig", "j2")]
    nov = records["nov", "j1"]  # v1, v2 (two replicates: two items), v5, v8, all +1
    assert (nov["paired"], nov["changed"], nov["same"], nov["new"], nov["gone"]) == (4, 4, 0, 0, 0)
    assert nov["mean_diff"] == pytest.approx(1.0) and nov["ci95_low"] == pytest.approx(1.0)  # no spread
    j2 = records["nov", "j2"]  # v3 +1, v6 +3: mean 2, sd sqrt(2), n 2
    half = t_quantile_975(1) * 2**0.5 / 2**0.5
    assert (j2["paired"], j2["mean_a"], j2["mean_b"]) == (2, 7.5, 9.5)
    assert (j2["ci95_low"], j2["ci95_high"]) == (pytest.approx(2 - half), pytest.approx(2 + half))
    rig = records["rig", "j1"]  # v4 and v9 the same generations; v7 failed on both sides
    assert (rig["paired"], rig["same"], rig["changed"], rig["mean_diff"]) == (2, 3, 0, 0.0)
    assert (rig["failed_a"], rig["failed_b"], rig["score_max"]) == (1, 1, 9.0)
    assert (records["rig", "j2"]["gone"], records["rig", "j2"]["paired"]) == (1, 0)
    assert (records["nov", "j3"]["new"], records["nov", "j3"]["mean_diff"]) == (1, None)
    statuses = {r["status"] for r in items.records() if r["evaluation_template"] == "rig"}
    assert statuses == {"same", "gone"}
    v6 = next(r for r in items.records() if r["gen_id_a"] == "v6")
    assert (v6["status"], v6["gen_id_b"], v6["score_a"], v6["score_b"], v6["diff"]) == (
        "changed",
        "v6b",
        9,
        12,
        3,
    )


def test_a_cohort_against_itself_has_nothing_changed() -> None:
    summary, items = compare(ROWS, ROWS)
    assert {r["status"] for r in items.records()} == {"same"}
    assert all(r["changed"] == r["new"] == r["gone"] == 0 for r in summary.records())
    assert all(r["mean_diff"] in (0.0, None) for r in summary.records())
