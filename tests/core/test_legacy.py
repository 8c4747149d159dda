"""The old pipeline's tables (``--layout legacy``), checked against numbers worked out by hand.

The fixture is nine evaluations of three essays (see ``ROWS``): ``nov`` on 0..10 and ``rig`` on
0..5, judges ``j1`` and ``j2``, a replicate pair, one failed evaluation, and scores on the old
thresholds (10, 8, 3) and agreement limits (ranges 1 and 3). E1 and E2 share a combo, essay
template and model (the old "same generation" key) but not a draft template; E3 has no essay
template, so its ``generation_template`` is its draft template. Valid scores:
10, 8, 10, 5, 3, 4, 7, 4. ``std_dev`` is the sample std (n - 1), as pandas computed it.
"""

from __future__ import annotations

import random

import pytest

from daydreamd.core import legacy
from daydreamd.core.scores import ScoreRow, Scores
from daydreamd.core.table import Cell, Table

ESSAYS = {
    # essay: (draft, combo, draft template, essay template, generation model)
    "E1": ("D1", "c1", "dA", "s1", "m1"),
    "E2": ("D2", "c1", "dB", "s1", "m1"),
    "E3": ("D3", "c2", "dA", "", "m2"),
}


def row(
    gen_id: str, essay: str, template: str, judge: str, score: float | None, replicate: int = 1
) -> ScoreRow:
    draft, combo, draft_template, essay_template, model = ESSAYS[essay]
    return ScoreRow(
        gen_id=gen_id,
        essay_gen_id=essay,
        draft_gen_id=draft,
        combo_id=combo,
        concept_ids=("alpha", "beta"),
        draft_template=draft_template,
        essay_template=essay_template,
        generation_model=model,
        evaluation_template=template,
        evaluation_model=judge,
        replicate=replicate,
        score=score,
        score_max=5.0 if template == "rig" else 10.0,
        error_kind="" if score is not None else "parse_error",
        error_message="" if score is not None else "no score found",
    )


ROWS = (
    row("v1", "E1", "nov", "j1", 10, 1),
    row("v2", "E1", "nov", "j1", 8, 2),
    row("v3", "E1", "nov", "j2", 10),
    row("v4", "E1", "rig", "j1", 5),  # the top of its 0..5 scale, but not a legacy "perfect" 10
    row("v5", "E2", "nov", "j1", 3),
    row("v6", "E2", "nov", "j2", None),
    row("v7", "E2", "rig", "j2", 4),
    row("v8", "E3", "nov", "j1", 7),
    row("v9", "E3", "rig", "j1", 4),
)


@pytest.fixture(name="scores")
def _scores() -> Scores:
    shuffled = list(ROWS)
    random.Random(3).shuffle(shuffled)
    return Scores(shuffled)


def records(table: Table) -> list[dict[str, Cell]]:
    return table.records()


def approx_rows(table: Table) -> list[tuple[Cell, ...]]:
    """Rows with floats compared to 4 decimals (what the CSV holds)."""
    return [tuple(pytest.approx(c, abs=5e-5) if isinstance(c, float) else c for c in r) for r in table.rows]


# ---- headers: what old notebooks select by name ------------------------------------------------


def test_every_legacy_table_has_its_old_name_and_exact_header(scores: Scores) -> None:
    """Pinned: a renamed or reordered column breaks somebody's notebook."""
    headers = {t.path: t.columns for t in legacy.legacy_tables(scores)}
    assert headers == {
        "legacy/5_parsing/parsed_scores.csv": (
            "gen_id",
            "parent_gen_id",
            "combo_id",
            "stage",
            "draft_template",
            "essay_template",
            "generation_template",
            "generation_model",
            "evaluation_template",
            "evaluation_llm_model",
            "evaluation_model",
            "score",
            "error",
            "generation_response_path",
            "evaluation_response_path",
        ),
        "legacy/6_summary/generation_scores_pivot.csv": (
            "combo_id",
            "stage",
            "draft_template",
            "generation_template",
            "generation_model",
            "nov_j1",
            "nov_j2",
            "rig_j1",
            "rig_j2",
            "sum_scores",
            "generation_response_path",
        ),
        "legacy/6_summary/final_results.csv": (
            "analysis_type",
            "generation_template",
            "generation_model",
            "evaluation_llm_model",
            "combo_id",
            "count",
            "average",
            "std_dev",
            "min_score",
            "max_score",
            "perfect_scores",
            "perfect_score_pct",
            "high_scores_8plus",
            "high_score_pct",
            "low_scores_3minus",
        ),
        "legacy/6_summary/perfect_score_paths.csv": (
            "combo_id",
            "generation_template",
            "generation_model",
            "evaluation_llm_model",
            "score",
            "generation_response_path",
            "evaluation_response_path",
            "notes",
        ),
        "legacy/6_summary/evaluation_model_template_pivot.csv": (
            "combo_id",
            "generation_template",
            "generation_model",
            "j1_nov",
            "j1_rig",
            "j2_nov",
            "j2_rig",
        ),
        "legacy/6_summary/evaluator_agreement_analysis.csv": (
            "combo_id",
            "generation_template",
            "generation_model",
            "evaluator_count",
            "mean_score",
            "std_dev",
            "min_score",
            "max_score",
            "median_score",
            "score_range",
            "coefficient_of_variation",
            "agreement_classification",
            "relative_std_dev",
            "relative_range",
        ),
        "legacy/6_summary/comprehensive_variance_analysis.csv": (
            "combo_id",
            "generation_template",
            "generation_model",
            "total_evaluations",
            "mean_score",
            "std_dev",
            "min_score",
            "max_score",
            "num_templates",
            "num_models",
            "score_range",
            "coefficient_of_variation",
            "analysis_type",
            "eval_model",
            "template_evaluations",
            "templates_used",
            "eval_template",
            "model_evaluations",
            "models_used",
            "stability_classification",
        ),
    }


def test_without_scores_every_table_still_has_its_header() -> None:
    """Most old tables were headerless when empty; a header always is what readers expect."""
    for table in legacy.legacy_tables(Scores([])):
        assert table.columns and not list(table.rows), table.path
    pivot = legacy.generation_scores_pivot(Scores([]))
    assert pivot.columns == (*legacy.GENERATION_PIVOT_INDEX, "sum_scores", "generation_response_path")


# ---- parsed_scores -----------------------------------------------------------------------------


def test_parsed_scores_lists_every_evaluation_with_old_names(scores: Scores) -> None:
    """Failed ones with their error and no score; the judge under both of its old names."""
    found = records(legacy.parsed_scores(scores))
    assert [r["gen_id"] for r in found] == ["v1", "v2", "v3", "v4", "v8", "v9", "v5", "v6", "v7"]
    assert found[0] == {
        "gen_id": "v1",
        "parent_gen_id": "E1",
        "combo_id": "c1",
        "stage": "essay2p",
        "draft_template": "dA",
        "essay_template": "s1",
        "generation_template": "s1",
        "generation_model": "m1",
        "evaluation_template": "nov",
        "evaluation_llm_model": "j1",
        "evaluation_model": "j1",
        "score": 10,
        "error": "",
        "generation_response_path": "gens/essay/E1/parsed.txt",
        "evaluation_response_path": "gens/evaluation/v1/raw.txt",
    }
    failed = next(r for r in found if r["gen_id"] == "v6")
    assert (failed["score"], failed["error"]) == (None, "no score found")
    e3 = next(r for r in found if r["gen_id"] == "v8")
    assert (e3["essay_template"], e3["generation_template"]) == ("", "dA")  # falls back to the draft's


# ---- pivots ------------------------------------------------------------------------------------


def test_generation_scores_pivot_one_row_per_old_generation_key(scores: Scores) -> None:
    """E1's replicates 10 and 8 average to 9; E2's failed nov_j2 is empty; sums of the cells."""
    assert legacy.generation_scores_pivot(scores).rows == (
        ("c1", "essay2p", "dA", "s1", "m1", 9.0, 10.0, 5.0, None, 24.0, "gens/essay/E1/parsed.txt"),
        ("c1", "essay2p", "dB", "s1", "m1", 3.0, None, None, 4.0, 7.0, "gens/essay/E2/parsed.txt"),
        ("c2", "essay2p", "dA", "dA", "m2", 7.0, None, 4.0, None, 11.0, "gens/essay/E3/parsed.txt"),
    )


def test_generation_scores_pivot_rounds_to_two_decimals() -> None:
    """Replicates 7, 8, 8 average 7.6667: written 7.67, and the sum is of the rounded cells."""
    rows = [row(f"r{i}", "E1", "nov", "j1", s, i) for i, s in enumerate((7, 8, 8), start=1)]
    rows.append(row("x", "E1", "rig", "j1", 10 / 3))
    table = legacy.generation_scores_pivot(Scores(rows))
    assert table.rows == (("c1", "essay2p", "dA", "s1", "m1", 7.67, 3.33, 11.0, "gens/essay/E1/parsed.txt"),)


def test_evaluation_model_template_pivot_pools_draft_templates(scores: Scores) -> None:
    """Judge first in the column name; E1 and E2 share a row (no draft template in the old key):
    j1_nov is the mean of 10, 8 and 3."""
    assert legacy.evaluation_model_template_pivot(scores).rows == (
        ("c1", "s1", "m1", 7.0, 5.0, 10.0, 4.0),
        ("c2", "dA", "m2", 7.0, 4.0, None, None),
    )


# ---- final_results -----------------------------------------------------------------------------

S1 = (6, 6.67, 3.08, 3.0, 10.0, 2, 33.3, 3, 50.0, 1)
"""E1 and E2: 10, 8, 10, 5, 3, 4: mean 6.6667, sample std sqrt(47.3333 / 5) = 3.0768; 10 twice
(perfect), 8 counts as high and 3 as low (both limits are inclusive)."""
E3 = (2, 5.5, 2.12, 4.0, 7.0, 0, 0.0, 0, 0.0, 0)
"""E3: 7 and 4: sample std sqrt(4.5) = 2.1213."""
J2 = (2, 7.0, 4.24, 4.0, 10.0, 1, 50.0, 1, 50.0, 0)
"""j2: 10 and 4: sample std sqrt(18) = 4.2426."""


def test_final_results_groups_as_the_old_pipeline_did(scores: Scores) -> None:
    """Every old analysis type, groups sorted, statistics by hand (see the constants above)."""
    assert legacy.final_results(scores).rows == (
        ("by_generation_template", "dA", "", "", "", *E3),
        ("by_generation_template", "s1", "", "", "", *S1),
        ("by_generation_model", "", "m1", "", "", *S1),
        ("by_generation_model", "", "m2", "", "", *E3),
        # j1: 10, 8, 5, 3, 7, 4: mean 6.1667, sample std sqrt(34.8333 / 5) = 2.6394
        ("by_evaluation_model", "", "", "j1", "", 6, 6.17, 2.64, 3.0, 10.0, 1, 16.7, 2, 33.3, 1),
        ("by_evaluation_model", "", "", "j2", "", *J2),
        ("by_combo_id", "", "", "", "c1", *S1),
        ("by_combo_id", "", "", "", "c2", *E3),
        ("by_template_and_generation_model", "dA", "m2", "", "", *E3),
        ("by_template_and_generation_model", "s1", "m1", "", "", *S1),
        # m1 x j1: 10, 8, 5, 3: mean 6.5, sample std sqrt(29 / 3) = 3.1091
        (
            "by_generation_vs_evaluation_model",
            "",
            "m1",
            "j1",
            "",
            4,
            6.5,
            3.11,
            3.0,
            10.0,
            1,
            25.0,
            2,
            50.0,
            1,
        ),
        ("by_generation_vs_evaluation_model", "", "m1", "j2", "", *J2),
        ("by_generation_vs_evaluation_model", "", "m2", "j1", "", *E3),
        # all 8: mean 6.375 (a tie, rounded half to even: 6.38), sample std sqrt(53.875 / 7) = 2.7743
        ("overall_statistics", "", "", "", "", 8, 6.38, 2.77, 3.0, 10.0, 2, 25.0, 3, 37.5, 1),
    )


def test_final_results_keeps_the_old_absolute_thresholds() -> None:
    """On a 0..100 template, 10 is a "perfect" score and 100 (the template's top) is not: the old
    numbers keep their old meaning. Both are "high" (>= 8), neither "low" (<= 3)."""
    rows = [row("a", "E1", "nov", "j1", 10), row("b", "E1", "nov", "j2", 100)]
    rows = [r._replace(score_max=100.0) for r in rows]
    overall = legacy.final_results(Scores(rows)).rows[-1]
    assert overall[0] == "overall_statistics"
    assert overall[-5:] == (1, 50.0, 2, 100.0, 0)


def test_final_results_single_score_has_no_std_and_overall_pct_has_two_decimals() -> None:
    """One score: std_dev empty (pandas' NaN). Three scores, one perfect: 33.3 per group, 33.33 overall."""
    one = legacy.final_results(Scores([row("a", "E1", "nov", "j1", 10)])).records()[0]
    assert (one["count"], one["std_dev"]) == (1, None)
    three = [row("a", "E1", "nov", "j1", 10), row("b", "E1", "nov", "j2", 1), row("c", "E1", "rig", "j1", 2)]
    table = legacy.final_results(Scores(three))
    group = next(r for r in table.records() if r["analysis_type"] == "by_generation_template")
    overall = table.records()[-1]
    assert (group["perfect_score_pct"], overall["perfect_score_pct"]) == (33.3, 33.33)


# ---- perfect_score_paths -----------------------------------------------------------------------


def test_perfect_score_paths_are_the_tens_only(scores: Scores) -> None:
    """v4 is at rig's maximum (5) but is not a 10: the old table listed 10s."""
    assert legacy.perfect_score_paths(scores).rows == (
        (
            "c1",
            "s1",
            "m1",
            "j1",
            10,
            "gens/essay/E1/parsed.txt",
            "gens/evaluation/v1/raw.txt",
            "Perfect score from m1 generation + j1 evaluation",
        ),
        (
            "c1",
            "s1",
            "m1",
            "j2",
            10,
            "gens/essay/E1/parsed.txt",
            "gens/evaluation/v3/raw.txt",
            "Perfect score from m1 generation + j2 evaluation",
        ),
    )


# ---- agreement and variance --------------------------------------------------------------------


def test_evaluator_agreement_analysis_per_old_generation(scores: Scores) -> None:
    """c1/s1/m1 pools E1 and E2 (range 7: poor); c2 has 7 and 4 (range 3: low, the limit counts)."""
    assert list(legacy.evaluator_agreement_analysis(scores).rows) == approx_rows(
        Table(
            "",
            (),
            (
                (
                    "c1",
                    "s1",
                    "m1",
                    6,
                    20 / 3,
                    3.07679,
                    3.0,
                    10.0,
                    6.5,
                    7.0,
                    0.46152,
                    "poor_agreement",
                    0.30768,
                    0.7,
                ),
                (
                    "c2",
                    "dA",
                    "m2",
                    2,
                    5.5,
                    2.12132,
                    4.0,
                    7.0,
                    5.5,
                    3.0,
                    0.38569,
                    "low_agreement",
                    0.21213,
                    0.3,
                ),
            ),
        )
    )


def test_comprehensive_variance_analysis_rows(scores: Scores) -> None:
    """overall_variance for every generation (rounded to 3; cv from the rounded values), then
    template_variance (one judge) and model_variance (one template) where two or more scores."""
    found = [
        {k: v for k, v in r.items() if v is not None}
        for r in records(legacy.comprehensive_variance_analysis(scores))
    ]
    key1 = {"combo_id": "c1", "generation_template": "s1", "generation_model": "m1"}
    key2 = {"combo_id": "c2", "generation_template": "dA", "generation_model": "m2"}
    expected = [
        {
            **key1,
            "total_evaluations": 6,
            "mean_score": 6.667,
            "std_dev": 3.077,
            "min_score": 3.0,
            "max_score": 10.0,
            "num_templates": 2,
            "num_models": 2,
            "score_range": 7.0,
            "coefficient_of_variation": 3.077 / 6.667,
            "analysis_type": "overall_variance",
            "stability_classification": "poor_agreement",
        },
        {
            **key2,
            "total_evaluations": 2,
            "mean_score": 5.5,
            "std_dev": 2.121,
            "min_score": 4.0,
            "max_score": 7.0,
            "num_templates": 2,
            "num_models": 1,
            "score_range": 3.0,
            "coefficient_of_variation": 2.121 / 5.5,
            "analysis_type": "overall_variance",
            "stability_classification": "low_agreement",
        },
        # j1 on c1: 10, 8, 5, 3 (nov and rig); j2 on c1: 10, 4; j1 on c2: 7, 4
        _within(key1, "template", "j1", 4, 6.5, 3.10913, 3.0, 10.0, "nov, rig", "poor_agreement"),
        _within(key1, "template", "j2", 2, 7.0, 4.24264, 4.0, 10.0, "nov, rig", "poor_agreement"),
        _within(key2, "template", "j1", 2, 5.5, 2.12132, 4.0, 7.0, "nov, rig", "low_agreement"),
        # nov on c1: 10, 8, 10, 3 (j1 and j2); rig on c1: 5, 4 (range 1: high, the limit counts)
        _within(key1, "model", "nov", 4, 7.75, 3.30404, 3.0, 10.0, "j1, j2", "poor_agreement"),
        _within(key1, "model", "rig", 2, 4.5, 0.70711, 4.0, 5.0, "j1, j2", "high_agreement"),
    ]
    assert len(found) == len(expected)
    for got, want in zip(found, expected, strict=True):
        assert got == {k: pytest.approx(v, abs=5e-5) if isinstance(v, float) else v for k, v in want.items()}


def _within(
    key: dict[str, str],
    kind: str,
    fixed: str,
    n: int,
    mean: float,
    std: float,
    low: float,
    high: float,
    used: str,
    stability: str,
) -> dict[str, Cell]:
    """An expected template_variance (judge ``fixed``) or model_variance (template ``fixed``) row."""
    template = kind == "template"
    return {
        **key,
        "mean_score": mean,
        "std_dev": std,
        "min_score": low,
        "max_score": high,
        "score_range": high - low,
        "coefficient_of_variation": std / mean,
        "analysis_type": f"{kind}_variance",
        "eval_model" if template else "eval_template": fixed,
        "template_evaluations" if template else "model_evaluations": n,
        "num_templates" if template else "num_models": 2,
        "templates_used" if template else "models_used": used,
        "stability_classification": stability,
    }


def test_a_single_score_is_insufficient_data_and_not_an_agreement_row() -> None:
    """One evaluation: an overall_variance row without std or cv, and no agreement row."""
    scores = Scores([row("a", "E3", "nov", "j1", 6)])
    variance = legacy.comprehensive_variance_analysis(scores).records()
    assert len(variance) == 1
    assert (variance[0]["std_dev"], variance[0]["coefficient_of_variation"]) == (None, None)
    assert variance[0]["stability_classification"] == "insufficient_data"
    assert legacy.evaluator_agreement_analysis(scores).rows == ()


@pytest.mark.parametrize(
    ("value_range", "label"),
    [
        (0.0, "high_agreement"),
        (1.0, "high_agreement"),
        (1.5, "moderate_agreement"),
        (2.0, "moderate_agreement"),
        (3.0, "low_agreement"),
        (3.5, "poor_agreement"),
    ],
)
def test_old_agreement_classes_are_absolute_points(value_range: float, label: str) -> None:
    """Limits 1, 2 and 3 points, inclusive, whatever the scale."""
    assert legacy.agreement_class(value_range) == label


def test_sample_std() -> None:
    """n - 1: 6 and 9 give 2.1213 (the population std would be 1.5); one value has none."""
    assert legacy.sample_std([6.0, 9.0]) == pytest.approx(2.12132, abs=1e-5)
    assert legacy.sample_std([4.0]) is None
