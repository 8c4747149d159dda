"""``summary/breakdowns.csv``: every grouping within one evaluation template, checked by hand.

The fixture (``ROWS``) is ten evaluations of five essays by one judge ``j1`` under two templates:
``nov`` on 0..10 and ``rig`` on 0..9. E1 is scored twice under ``nov`` (replicates 6 and 9), and
E5's only evaluation failed (its essay template ``s3`` has no score anywhere).

    essay  draft  model  essay tmpl  combo   nov        rig
    E1     dA     m1     s1          c2      6, 9       9
    E2     dB     m1     s2          c3      10         7
    E3     dA     m2     s2          c1      7          8
    E4     dA     m2     s1          c1      8          3
    E5     dB     m2     s3          c3      (failed)   -

Every expected number below was worked out on paper from that table: sd is the sample standard
deviation (divide by n - 1), the interval mean ± t(0.975, n - 1) · sd / √n. For two scores a, b
that is sd = |a - b| / √2 and half-width t(1) · |a - b| / 2 = 6.353102 · |a - b|.
"""

from __future__ import annotations

import math
import random

import pytest

from daydreamd.core.breakdowns import (
    BREAKDOWN_COLUMNS,
    BREAKDOWNS,
    GROUP_BY,
    T975,
    breakdowns_table,
    t_interval,
    t_quantile_975,
)
from daydreamd.core.results import build_tables
from daydreamd.core.scores import ScoreRow, Scores
from daydreamd.core.table import Table, format_cell

ESSAYS = {
    # essay: (draft template, generation model, essay template, combo, concepts)
    "E1": ("dA", "m1", "s1", "c2", ("alpha", "beta")),
    "E2": ("dB", "m1", "s2", "c3", ("gamma", "delta")),
    "E3": ("dA", "m2", "s2", "c1", ("beta", "gamma")),
    "E4": ("dA", "m2", "s1", "c1", ("beta", "gamma")),
    "E5": ("dB", "m2", "s3", "c3", ("gamma", "delta")),
}


def row(gen_id: str, essay: str, template: str, score: float | None, replicate: int = 1) -> ScoreRow:
    draft_template, model, essay_template, combo, concepts = ESSAYS[essay]
    return ScoreRow(
        draft_template=draft_template,
        generation_model=model,
        essay_template=essay_template,
        combo_id=combo,
        essay_gen_id=essay,
        evaluation_template=template,
        evaluation_model="j1",
        replicate=replicate,
        gen_id=gen_id,
        draft_gen_id=f"D{essay}",
        concept_ids=concepts,
        score=score,
        score_max=9.0 if template == "rig" else 10.0,
        error_kind="" if score is not None else "parse_error",
    )


ROWS = (
    row("v1", "E1", "nov", 6, 1),
    row("v2", "E1", "nov", 9, 2),
    row("v3", "E2", "nov", 10),
    row("v4", "E3", "nov", 7),
    row("v5", "E4", "nov", 8),
    row("v6", "E5", "nov", None),
    row("v7", "E1", "rig", 9),
    row("v8", "E2", "rig", 7),
    row("v9", "E3", "rig", 8),
    row("v10", "E4", "rig", 3),
)


def text(table: Table) -> list[tuple[str, ...]]:
    """The table's rows as their CSV cells would read."""
    return [tuple(format_cell(c) for c in r) for r in table.rows]


EXPECTED = [
    # template,max,group_by,group,concepts,n,mean,ci95_low,ci95_high,sd,min,max,top_share,high_share
    #
    # nov (0..10): top is 10, high is >= 8.
    # dB has the single 10: no sd, no interval. dA is 6, 9, 7, 8: mean 7.5, squared deviations
    # 2.25 + 2.25 + 0.25 + 0.25 = 5, sd √(5/3) = 1.2910, half-width 3.182446 · 1.2910 / 2 = 2.0543.
    "nov,10,draft_template,dB,,1,10,,,,10,10,1,1",
    "nov,10,draft_template,dA,,4,7.5,5.4457,9.5543,1.291,6,9,0,0.5",
    # m1 is 6, 9, 10: mean 25/3, deviations -7/3, 2/3, 5/3, sum of squares 78/9, sd √(13/3) = 2.0817,
    # half-width 4.302653 · 2.0817 / √3 = 5.1711. m2 is 7, 8: half-width 6.353102.
    "nov,10,generation_model,m1,,3,8.3333,3.1622,13.5045,2.0817,6,10,0.3333,0.6667",
    "nov,10,generation_model,m2,,2,7.5,1.1469,13.8531,0.7071,7,8,0,0.5",
    # s2 is 10, 7 (half-width 3 · 6.353102 = 19.0593); s1 is 6, 9, 8: mean 23/3, sd √(7/3) = 1.5275,
    # half-width 4.302653 · 1.5275 / √3 = 3.7946.
    "nov,10,essay_template,s2,,2,8.5,-10.5593,27.5593,2.1213,7,10,0.5,0.5",
    "nov,10,essay_template,s1,,3,7.6667,3.8721,11.4612,1.5275,6,9,0,0.6667",
    # c3 is E2's 10 (E5 failed); c1 (7, 8) and c2 (E1's replicates 6, 9) tie at 7.5: by combo id,
    # although c2's rows come first in table order (E1 is draft dA, model m1).
    "nov,10,combo_id,c3,gamma;delta,1,10,,,,10,10,1,1",
    "nov,10,combo_id,c1,beta;gamma,2,7.5,1.1469,13.8531,0.7071,7,8,0,0.5",
    "nov,10,combo_id,c2,alpha;beta,2,7.5,-11.5593,26.5593,2.1213,6,9,0,0.5",
    # the one judge: 6, 9, 10, 7, 8: mean 8, sd √(10/4) = 1.5811, half-width 2.776445 · 1.5811 / √5 = 1.9632.
    "nov,10,evaluation_model,j1,,5,8,6.0368,9.9632,1.5811,6,10,0.2,0.6",
    #
    # rig (0..9): top is 9 (a 9 here, not under nov), high is >= 7.2 (7 is not, 8 is).
    # dA is 9, 8, 3: mean 20/3, deviations 7/3, 4/3, -11/3, sum of squares 186/9, sd √(31/3) = 3.2146,
    # half-width 4.302653 · 3.2146 / √3 = 7.9854.
    "rig,9,draft_template,dB,,1,7,,,,7,7,0,0",
    "rig,9,draft_template,dA,,3,6.6667,-1.3187,14.6521,3.2146,3,9,0.3333,0.6667",
    "rig,9,generation_model,m1,,2,8,-4.7062,20.7062,1.4142,7,9,0.5,0.5",
    "rig,9,generation_model,m2,,2,5.5,-26.2655,37.2655,3.5355,3,8,0,0.5",
    "rig,9,essay_template,s2,,2,7.5,1.1469,13.8531,0.7071,7,8,0,0.5",
    "rig,9,essay_template,s1,,2,6,-32.1186,44.1186,4.2426,3,9,0.5,0.5",
    "rig,9,combo_id,c2,alpha;beta,1,9,,,,9,9,1,1",
    "rig,9,combo_id,c3,gamma;delta,1,7,,,,7,7,0,0",
    "rig,9,combo_id,c1,beta;gamma,2,5.5,-26.2655,37.2655,3.5355,3,8,0,0.5",
    # 9, 7, 8, 3: mean 6.75, sum of squares 5.0625 + 0.0625 + 1.5625 + 14.0625 = 20.75,
    # sd √(20.75/3) = 2.6300, half-width 3.182446 · 2.6300 / 2 = 4.1848.
    "rig,9,evaluation_model,j1,,4,6.75,2.5652,10.9348,2.63,3,9,0.25,0.5",
]


def test_breakdowns_per_evaluation_template() -> None:
    """Each grouping within each template, best mean first, ties by group; nothing pooled."""
    shuffled = list(ROWS)
    random.Random(3).shuffle(shuffled)
    table = breakdowns_table(Scores(shuffled))
    assert table.path == BREAKDOWNS == "summary/breakdowns.csv"
    assert table.columns == BREAKDOWN_COLUMNS
    assert [",".join(r) for r in text(table)] == EXPECTED


def test_no_group_mixes_two_templates() -> None:
    """dA's 4 nov and 3 rig scores stay two rows; pooled they would be one row of 7 (mean 7.1429)."""
    records = [dict(zip(BREAKDOWN_COLUMNS, r, strict=True)) for r in text(breakdowns_table(Scores(ROWS)))]
    d_a = [(r["evaluation_template"], r["n"], r["mean"]) for r in records if r["group"] == "dA"]
    assert d_a == [("nov", "4", "7.5"), ("rig", "3", "6.6667")]
    judges = [(r["evaluation_template"], r["n"]) for r in records if r["group_by"] == "evaluation_model"]
    assert judges == [("nov", "5"), ("rig", "4")]


def test_failed_evaluations_are_not_scores() -> None:
    """E5's failed evaluation is in no row: no group s3 (failures only), c3 and dB count E2 alone."""
    records = [dict(zip(BREAKDOWN_COLUMNS, r, strict=True)) for r in text(breakdowns_table(Scores(ROWS)))]
    assert all(r["group"] != "s3" for r in records)
    nov = {(r["group"], r["n"]) for r in records if r["evaluation_template"] == "nov"}
    assert ("c3", "1") in nov and ("dB", "1") in nov


def test_every_grouping_is_present_in_order() -> None:
    """Per template, the groupings come in GROUP_BY order."""
    rows = text(breakdowns_table(Scores(ROWS)))
    seen = list(dict.fromkeys((r[0], r[2]) for r in rows))
    assert seen == [(t, g) for t in ("nov", "rig") for g in GROUP_BY]


def test_build_tables_writes_the_breakdowns() -> None:
    """The table is among those `results` writes, header-only when nothing is scored."""
    assert BREAKDOWNS in [t.path for t in build_tables(Scores(ROWS))]
    empty = next(t for t in build_tables(Scores([])) if t.path == BREAKDOWNS)
    assert empty.columns == BREAKDOWN_COLUMNS and len(empty.rows) == 0


def test_equal_scores_have_a_zero_width_interval() -> None:
    """Three 7s: sd 0 (not a rounding residue), interval 7..7."""
    rows = [row(f"v{i}", "E1", "nov", 7, i) for i in (1, 2, 3)]
    judge = text(breakdowns_table(Scores(rows)))[-1]
    assert judge[5:10] == ("3", "7", "7", "7", "0")


# ---- the t quantile ---------------------------------------------------------------------------------


def t_density(x: float, df: int) -> float:
    """Student's t density."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def central_mass(q: float, df: int, steps: int = 4000) -> float:
    """P(0 < T < q) by Simpson's rule (the density is smooth: error far below 1e-9 here)."""
    h = q / steps
    inner = sum((4 if i % 2 else 2) * t_density(i * h, df) for i in range(1, steps))
    return h / 3 * (t_density(0.0, df) + inner + t_density(q, df))


@pytest.mark.parametrize("df", [*range(1, len(T975) + 1), 31, 35, 50, 100, 1000])
def test_t_quantile_leaves_2_5_percent_above(df: int) -> None:
    """The t density integrates to 0.475 between 0 and t(0.975, df): table and expansion alike."""
    assert central_mass(t_quantile_975(df), df) == pytest.approx(0.475, abs=1e-8)


def test_t_quantile_known_values() -> None:
    """Closed forms for df 1 (tan(0.475 π)) and 2 (0.95 / √(0.04875)); t(3); the normal far out."""
    assert t_quantile_975(1) == pytest.approx(math.tan(0.475 * math.pi), abs=1e-9)
    assert t_quantile_975(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), abs=1e-9)
    assert t_quantile_975(3) == pytest.approx(3.182446, abs=1e-6)
    assert t_quantile_975(31) == pytest.approx(2.039513, abs=1e-6)
    assert t_quantile_975(10**6) == pytest.approx(1.959966, abs=1e-6)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def test_t_interval_by_hand() -> None:
    """6, 7, 8, 9: mean 7.5, sd 1.2910, t(3) 3.182446, half-width 2.0543; one score: no interval."""
    low, high = t_interval(7.5, math.sqrt(5 / 3), 4) or (0.0, 0.0)
    assert (low, high) == (pytest.approx(5.4457, abs=1e-4), pytest.approx(9.5543, abs=1e-4))
    assert t_interval(7.0, 0.0, 1) is None


def test_breakdowns_by_judge_keep_each_judge_of_a_rubric_apart() -> None:
    """From the results fixture: on nov, j1 scored dA's essays 8 and 10 (E1, two replicates) and 7
    (E3); j2 scored E1 6. On rig, j2 only scored E3 (8)."""
    from daydreamd.core.breakdowns import judge_breakdowns_table
    from daydreamd.core.scores import Scores
    from tests.core.test_results import ROWS

    table = judge_breakdowns_table(Scores(list(ROWS)))
    assert table.path == "summary/breakdowns_by_judge.csv"
    assert table.columns[:4] == ("evaluation_template", "score_max", "evaluation_model", "group_by")
    rows = {
        (r["evaluation_template"], r["evaluation_model"], r["group_by"], r["group"]): r
        for r in table.records()
    }
    j1 = rows["nov", "j1", "draft_template", "dA"]
    assert (j1["n"], j1["mean"], j1["max"]) == (3, pytest.approx(25 / 3), 10)
    assert (
        rows["nov", "j2", "draft_template", "dA"]["n"],
        rows["nov", "j2", "draft_template", "dA"]["sd"],
    ) == (1, None)
    assert rows["rig", "j2", "combo_id", "c2"]["concept_ids"] == "beta;gamma"
    assert not any(group_by == "evaluation_model" for _, _, group_by, _ in rows)
    assert ("rig", "j2", "draft_template", "dB") not in rows  # j2 never scored dB on rig


def test_the_breakdowns_made_from_per_judge_totals_are_the_same_as_made_directly() -> None:
    """``breakdown_tables`` merges the per-judge combo totals instead of a second pass: same rows."""
    from daydreamd.core.breakdowns import breakdown_tables

    rng = random.Random(7)
    rows = [
        row._replace(
            gen_id=f"{row.gen_id}-{i}",
            evaluation_model=rng.choice(["j1", "j2", "j3"]),
            score=None if row.score is None else float(rng.randint(0, 9)),
        )
        for i in range(40)
        for row in ROWS
    ]
    scores = Scores(rows)
    merged, by_judge = breakdown_tables(scores)
    assert text(merged) == text(breakdowns_table(scores))
    assert by_judge.path == "summary/breakdowns_by_judge.csv" and len(by_judge.rows) > len(merged.rows)
