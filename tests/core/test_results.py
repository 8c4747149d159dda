"""Results tables from score rows, checked against numbers worked out by hand.

The fixture is ten evaluations of three essays (see ``ROWS``): two evaluation templates,
``nov`` on 0..10 and ``rig`` on 0..9, two judges ``j1`` and ``j2``, a replicate pair, and one
failed evaluation. Every expected number below was computed on paper from those scores;
``std`` is the population standard deviation (divide by n).
"""

from __future__ import annotations

import random

import pytest

from daydreamd.core.agreement import agreement_class, judge_agreement, spread, variance_analysis
from daydreamd.core.results import (
    SCORE_COLUMNS,
    build_tables,
    evaluation_scores_by_template_model,
    final_results,
    generation_scores,
    perfect_score_paths,
    top_essays,
)
from daydreamd.core.scores import ScoreRow, Scores, with_template_versions
from daydreamd.core.table import AGGREGATED_SCORES, Table, format_cell, format_number

ESSAYS = {
    # essay: (draft, combo, concepts, draft template, generation model)
    "E1": ("D1", "c1", ("alpha", "beta"), "dA", "m1"),
    "E2": ("D2", "c1", ("alpha", "beta"), "dB", "m1"),
    "E3": ("D3", "c2", ("beta", "gamma"), "dA", "m2"),
}


def row(
    gen_id: str, essay: str, template: str, judge: str, score: float | None, replicate: int = 1
) -> ScoreRow:
    draft, combo, concepts, draft_template, model = ESSAYS[essay]
    return ScoreRow(
        gen_id=gen_id,
        essay_gen_id=essay,
        draft_gen_id=draft,
        combo_id=combo,
        concept_ids=concepts,
        draft_template=draft_template,
        essay_template="s1",
        generation_model=model,
        evaluation_template=template,
        evaluation_model=judge,
        replicate=replicate,
        score=score,
        score_max=9.0 if template == "rig" else 10.0,
        error_kind="" if score is not None else "parse_error",
        error_message="" if score is not None else "no score found",
        cohorts=("cohort_a",),
    )


ROWS = (
    row("v1", "E1", "nov", "j1", 8, 1),
    row("v2", "E1", "nov", "j1", 10, 2),
    row("v3", "E1", "nov", "j2", 6),
    row("v4", "E1", "rig", "j1", 9),
    row("v5", "E2", "nov", "j1", 5),
    row("v6", "E2", "nov", "j2", 9),
    row("v7", "E2", "rig", "j1", None),
    row("v8", "E3", "nov", "j1", 7),
    row("v9", "E3", "rig", "j1", 4),
    row("v10", "E3", "rig", "j2", 8),
)


@pytest.fixture(name="scores")
def _scores() -> Scores:
    shuffled = list(ROWS)
    random.Random(7).shuffle(shuffled)
    return Scores(shuffled)


def text(table: Table) -> list[dict[str, str]]:
    """The table as its CSV cells would read."""
    return [{k: format_cell(v) for k, v in zip(table.columns, r, strict=True)} for r in table.rows]


def pick(records: list[dict[str, str]], *columns: str) -> list[tuple[str, ...]]:
    return [tuple(r[c] for c in columns) for r in records]


# ---- conventions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [(7.0, "7"), (7.5, "7.5"), (22 / 3, "7.3333"), (0.28571, "0.2857"), (-0.00001, "0"), (1e6, "1000000")],
)
def test_numbers_are_written_with_at_most_four_decimals(value: float, written: str) -> None:
    """No trailing zeros, no negative zero."""
    assert format_number(value) == written


def test_std_is_the_population_standard_deviation() -> None:
    """Two scores 6 and 9: std 1.5 (half their distance), not the sample std 2.1213."""
    s = spread([6.0, 9.0])
    assert (s.mean, s.std, s.range, s.cv) == (7.5, 1.5, 3.0, 0.2)
    assert spread([4.0]).std == 0.0


@pytest.mark.parametrize(
    ("value_range", "score_max", "label"),
    [
        (0.0, 10, "strong agreement"),
        (1.0, 10, "strong agreement"),
        (1.5, 10, "moderate agreement"),
        (2.0, 10, "moderate agreement"),
        (3.0, 10, "weak agreement"),
        (3.5, 10, "disagreement"),
        (0.9, 9, "strong agreement"),
        (1.0, 9, "moderate agreement"),
        (2.7, 9, "weak agreement"),
        (3.0, 9, "disagreement"),
    ],
)
def test_agreement_classes_scale_with_the_maximum(value_range: float, score_max: float, label: str) -> None:
    """Limits 1, 2, 3 on 0..10; 0.9, 1.8, 2.7 on 0..9."""
    assert agreement_class(value_range, score_max) == label


# ---- aggregated scores -----------------------------------------------------------------------------


def test_aggregated_scores_lists_every_evaluation_in_table_order(scores: Scores) -> None:
    """By draft template, model, essay template, combo, essay, then template, judge, replicate."""
    records = text(build_tables(scores)[0])
    assert [r["gen_id"] for r in records] == ["v1", "v2", "v3", "v4", "v8", "v9", "v10", "v5", "v6", "v7"]
    assert tuple(records[0]) == SCORE_COLUMNS
    assert records[0] == {
        "gen_id": "v1",
        "essay_gen_id": "E1",
        "draft_gen_id": "D1",
        "combo_id": "c1",
        "concept_ids": "alpha;beta",
        "draft_template": "dA",
        "essay_template": "s1",
        "generation_model": "m1",
        "evaluation_template": "nov",
        "evaluation_model": "j1",
        "replicate": "1",
        "state": "done",
        "score": "8",
        "score_max": "10",
        "error_kind": "",
        "error_message": "",
        "cohorts": "cohort_a",
        "essay_path": "gens/essay/E1/parsed.txt",
        "evaluation_path": "gens/evaluation/v1/raw.txt",
    }


def test_failed_evaluation_is_a_row_with_its_kind_and_no_score(scores: Scores) -> None:
    """v7 failed: listed with state failed, its error, an empty score, and counted apart."""
    failed = next(r for r in text(build_tables(scores)[0]) if r["gen_id"] == "v7")
    assert (failed["state"], failed["score"], failed["error_kind"], failed["error_message"]) == (
        "failed",
        "",
        "parse_error",
        "no score found",
    )
    assert (len(scores), scores.scored, scores.failed) == (10, 9, 1)
    assert scores.failures_by_kind() == {"parse_error": 1}


# ---- generation scores -----------------------------------------------------------------------------


def test_generation_scores_one_row_per_essay(scores: Scores) -> None:
    """Means over replicates; _n/_min/_max for the replicated column only; sum of the column means."""
    table = generation_scores(scores)
    assert table.columns[7:] == (
        "nov__j1",
        "nov__j1_n",
        "nov__j1_min",
        "nov__j1_max",
        "nov__j2",
        "rig__j1",
        "rig__j2",
        "sum_scores",
        "scored_columns",
        "failed",
        "essay_path",
    )
    assert [r[:7] for r in pick(text(table), *table.columns)] == [
        ("E1", "D1", "c1", "alpha;beta", "dA", "s1", "m1"),
        ("E3", "D3", "c2", "beta;gamma", "dA", "s1", "m2"),
        ("E2", "D2", "c1", "alpha;beta", "dB", "s1", "m1"),
    ]
    assert pick(text(table), *table.columns[7:]) == [
        ("9", "2", "8", "10", "6", "9", "", "24", "3", "0", "gens/essay/E1/parsed.txt"),
        ("7", "1", "7", "7", "", "4", "8", "19", "3", "0", "gens/essay/E3/parsed.txt"),
        ("5", "1", "5", "5", "9", "", "", "14", "2", "1", "gens/essay/E2/parsed.txt"),
    ]


# ---- final results ---------------------------------------------------------------------------------

FINAL = [
    # analysis_type, group, count, failed, mean, std, min, max, top_count, top_share, high_count, high_share
    ("by_draft_template", "dA", "7", "0", "7.4286", "1.8406", "4", "10", "2", "0.2857", "4", "0.5714"),
    ("by_draft_template", "dB", "2", "1", "7", "2", "5", "9", "0", "0", "1", "0.5"),
    ("by_essay_template", "s1", "9", "1", "7.3333", "1.8856", "4", "10", "2", "0.2222", "5", "0.5556"),
    ("by_generation_model", "m1", "6", "1", "7.8333", "1.7717", "5", "10", "2", "0.3333", "4", "0.6667"),
    ("by_generation_model", "m2", "3", "0", "6.3333", "1.6997", "4", "8", "0", "0", "1", "0.3333"),
    ("by_evaluation_template", "nov", "6", "0", "7.5", "1.7078", "5", "10", "1", "0.1667", "3", "0.5"),
    ("by_evaluation_template", "rig", "3", "1", "7", "2.1602", "4", "9", "1", "0.3333", "2", "0.6667"),
    ("by_evaluation_model", "j1", "6", "1", "7.1667", "2.1148", "4", "10", "2", "0.3333", "3", "0.5"),
    ("by_evaluation_model", "j2", "3", "0", "7.6667", "1.2472", "6", "9", "0", "0", "2", "0.6667"),
    ("by_combo", "c1", "6", "1", "7.8333", "1.7717", "5", "10", "2", "0.3333", "4", "0.6667"),
    ("by_combo", "c2", "3", "0", "6.3333", "1.6997", "4", "8", "0", "0", "1", "0.3333"),
    (
        "by_draft_template_and_generation_model",
        "dA/m1",
        "4",
        "0",
        "8.25",
        "1.479",
        "6",
        "10",
        "2",
        "0.5",
        "3",
        "0.75",
    ),
    (
        "by_draft_template_and_generation_model",
        "dA/m2",
        "3",
        "0",
        "6.3333",
        "1.6997",
        "4",
        "8",
        "0",
        "0",
        "1",
        "0.3333",
    ),
    ("by_draft_template_and_generation_model", "dB/m1", "2", "1", "7", "2", "5", "9", "0", "0", "1", "0.5"),
    ("overall", "", "9", "1", "7.3333", "1.8856", "4", "10", "2", "0.2222", "5", "0.5556"),
]


def test_final_results_by_group(scores: Scores) -> None:
    """Count, failed, mean, population std, min, max, top (at own max) and high (>= 80 %) per group."""
    keys = ("draft_template", "essay_template", "generation_model", "evaluation_template", "evaluation_model")
    got = []
    for r in text(final_results(scores)):
        group = "/".join(r[k] for k in (*keys, "combo_id") if r[k])
        stats = (
            "count",
            "failed",
            "mean",
            "std",
            "min",
            "max",
            "top_count",
            "top_share",
            "high_count",
            "high_share",
        )
        got.append((r["analysis_type"], group, *(r[s] for s in stats)))
    assert got == FINAL


def test_final_results_name_the_concepts_of_each_combo(scores: Scores) -> None:
    rows = text(final_results(scores))
    assert [(r["combo_id"], r["concepts"]) for r in rows if r["analysis_type"] == "by_combo"] == [
        ("c1", "alpha;beta"),
        ("c2", "beta;gamma"),
    ]
    assert {r["concepts"] for r in rows if r["analysis_type"] != "by_combo"} == {""}


def test_top_share_uses_each_templates_own_maximum(scores: Scores) -> None:
    """A 9 on the 0..9 template is a top score; a 9 on the 0..10 one is not (but it is high)."""
    perfect = text(perfect_score_paths(scores))
    assert pick(perfect, "gen_id", "evaluation_template", "score", "score_max") == [
        ("v2", "nov", "10", "10"),
        ("v4", "rig", "9", "9"),
    ]
    assert pick(perfect, "essay_path", "evaluation_path")[0] == (
        "gens/essay/E1/parsed.txt",
        "gens/evaluation/v2/raw.txt",
    )


# ---- agreement and variance ----------------------------------------------------------------------


def test_judge_agreement_per_essay_and_template(scores: Scores) -> None:
    """Judges' replicate means compared per template; a template with one judge has no row."""
    records = text(judge_agreement(scores))
    assert pick(
        records, "essay_gen_id", "evaluation_template", "n_judges", "scores", "mean", "std", "min", "max"
    ) == [
        ("E1", "nov", "2", "j1=9;j2=6", "7.5", "1.5", "6", "9"),
        ("E3", "rig", "2", "j1=4;j2=8", "6", "2", "4", "8"),
        ("E2", "nov", "2", "j1=5;j2=9", "7", "2", "5", "9"),
    ]
    assert pick(records, "range", "cv", "score_max", "agreement") == [
        ("3", "0.2", "10", "weak agreement"),
        ("4", "0.3333", "9", "disagreement"),
        ("4", "0.2857", "10", "disagreement"),
    ]


def test_variance_across_judges_templates_and_replicates(scores: Scores) -> None:
    """Templates on different scales are compared on 0..10 (rig 9/9 -> 10, 4/9 -> 4.4444)."""
    records = text(variance_analysis(scores))
    assert pick(
        records,
        "essay_gen_id",
        "dimension",
        "evaluation_template",
        "evaluation_model",
        "n",
        "scores",
        "mean",
        "std",
        "range",
        "cv",
        "score_max",
        "agreement",
    ) == [
        ("E1", "judges", "nov", "", "2", "j1=9;j2=6", "7.5", "1.5", "3", "0.2", "10", "weak agreement"),
        (
            "E1",
            "templates",
            "",
            "j1",
            "2",
            "nov=9;rig=10",
            "9.5",
            "0.5",
            "1",
            "0.0526",
            "10",
            "strong agreement",
        ),
        (
            "E1",
            "replicates",
            "nov",
            "j1",
            "2",
            "1=8;2=10",
            "9",
            "1",
            "2",
            "0.1111",
            "10",
            "moderate agreement",
        ),
        ("E3", "judges", "rig", "", "2", "j1=4;j2=8", "6", "2", "4", "0.3333", "9", "disagreement"),
        (
            "E3",
            "templates",
            "",
            "j1",
            "2",
            "nov=7;rig=4.4444",
            "5.7222",
            "1.2778",
            "2.5556",
            "0.2233",
            "10",
            "weak agreement",
        ),
        ("E2", "judges", "nov", "", "2", "j1=5;j2=9", "7", "2", "4", "0.2857", "10", "disagreement"),
    ]


# ---- the cross-experiment pivot, the top, the whole set ------------------------------------------


def test_cross_experiment_pivot(scores: Scores) -> None:
    """One row per essay with its cohorts and one column per template__judge (replicate mean)."""
    table = evaluation_scores_by_template_model(scores)
    assert table.columns[7:] == (
        "cohorts",
        "nov__j1",
        "nov__j2",
        "rig__j1",
        "rig__j2",
        "n_scores",
        "failed",
        "essay_path",
    )
    assert pick(text(table), *table.columns[7:-1]) == [
        ("cohort_a", "9", "6", "9", "", "4", "0"),
        ("cohort_a", "7", "", "4", "8", "3", "0"),
        ("cohort_a", "5", "9", "", "", "2", "1"),
    ]


def test_top_essays_by_sum_of_column_means(scores: Scores) -> None:
    """E1 24 (mean 8), E3 19, E2 14."""
    top = top_essays(scores, 2)
    assert [(t.essay_gen_id, t.sum_scores, t.scored_columns, t.mean) for t in top] == [
        ("E1", 24.0, 3, 8.0),
        ("E3", 19.0, 3, pytest.approx(19 / 3)),
    ]


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        # nov: E1 (9 from two replicates, 6) 7.5; E2 (5, 9) 7 on two judges before E3's 7 on one
        (("nov", None), [("E1", 7.5, 2), ("E2", 7.0, 2), ("E3", 7.0, 1)]),
        (("nov", "j2"), [("E2", 9.0, 1), ("E1", 6.0, 1)]),  # E3 has no j2 score on nov
        (("rig", None), [("E1", 9.0, 1), ("E3", 6.0, 2)]),  # E2's rig evaluation failed: unranked
    ],
)
def test_top_essays_by_one_rubric_rank_by_its_mean(
    scores: Scores, by: tuple[str, str | None], expected: list[tuple[str, float, int]]
) -> None:
    top = top_essays(scores, 10, by=by)
    assert [(t.essay_gen_id, t.mean, t.scored_columns) for t in top] == expected


def test_ties_share_their_rank_and_are_marked_also_across_the_cut(scores: Scores) -> None:
    """On nov, E2 and E3 both have the mean 7: both rank 2 (competition ranking), both marked as
    tied, even when the cut shows only E2: its place above E3 is the tie-break's (more judges)."""
    top = top_essays(scores, 10, by=("nov", None))
    assert [(t.essay_gen_id, t.rank, t.tied) for t in top] == [
        ("E1", 1, False),
        ("E2", 2, True),
        ("E3", 2, True),
    ]
    cut = top_essays(scores, 2, by=("nov", None))
    assert [(t.essay_gen_id, t.rank, t.tied) for t in cut] == [("E1", 1, False), ("E2", 2, True)]
    assert [(t.rank, t.tied) for t in top_essays(scores, 3)] == [(1, False), (2, False), (3, False)]


def test_tables_do_not_depend_on_input_order() -> None:
    """Any order of the same rows gives the same tables."""
    first = [text(t) for t in build_tables(Scores(ROWS), cross_experiment=True)]
    for seed in range(3):
        shuffled = list(ROWS)
        random.Random(seed).shuffle(shuffled)
        assert [text(t) for t in build_tables(Scores(shuffled), cross_experiment=True)] == first


def test_no_rows_gives_headers_and_an_empty_overall() -> None:
    """Nothing finished: every table has its header, final_results an overall row of count 0."""
    tables = build_tables(Scores([]), cross_experiment=True)
    assert tables[0].path == AGGREGATED_SCORES
    assert all(t.columns for t in tables)
    assert [len(t.rows) for t in tables] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    overall = text(tables[2])[0]
    assert (overall["analysis_type"], overall["count"], overall["failed"], overall["mean"]) == (
        "overall",
        "0",
        "0",
        "",
    )


def test_rows_without_a_combo_are_still_grouped() -> None:
    """An old store may not know a draft's combo: its scores are grouped under the empty combo."""
    rows = [
        row("v1", "E1", "nov", "j1", 8)._replace(combo_id=""),
        row("v2", "E1", "nov", "j2", 6)._replace(combo_id=""),
    ]
    groups = Scores(rows).groups(("combo_id",))
    assert list(groups) == [("",)] and groups[("",)].n == 2 and groups[("",)].mean == 7


def test_two_versions_of_a_template_are_never_pooled_across_cohorts() -> None:
    """nov's text differs between cohort_a and cohort_b: its rows are named by version; rig is one
    version in both and keeps its id; a row in no known cohort keeps the plain id."""
    versions = {
        "cohort_a": {("evaluation", "nov"): "a" * 64, ("evaluation", "rig"): "c" * 64},
        "cohort_b": {("evaluation", "nov"): "b" * 64, ("evaluation", "rig"): "c" * 64},
    }
    rows = [
        ROWS[0],
        ROWS[3],
        ROWS[4]._replace(cohorts=("cohort_b",)),
        ROWS[5]._replace(cohorts=("elsewhere",)),
    ]
    named = with_template_versions(rows, versions)
    assert [r.evaluation_template for r in named] == ["nov@aaaaaaaa", "rig", "nov@bbbbbbbb", "nov"]
    assert [r.draft_template for r in named] == [r.draft_template for r in rows]  # not in the manifests
    assert with_template_versions(rows, {"cohort_a": versions["cohort_a"]}) == rows  # one version: untouched
    final = {(r["analysis_type"], r["evaluation_template"]) for r in final_results(Scores(named)).records()}
    assert ("by_evaluation_template", "nov@aaaaaaaa") in final and (
        "by_evaluation_template",
        "nov@bbbbbbbb",
    ) in final
