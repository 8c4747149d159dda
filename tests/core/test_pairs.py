"""Agreement statistics per pair of judges (one rubric) and per pair of rubrics (one judge)."""

from __future__ import annotations

import math

import pytest

from daydreamd.core.pairs import agreement_pairs, average_ranks, icc_2_1, mean_abs_diff, spearman
from daydreamd.core.scores import Scores
from tests.core.test_results import ROWS


def test_average_ranks_share_ties() -> None:
    assert average_ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    assert average_ranks([3, 3, 3]) == [2.0, 2.0, 2.0]


def test_spearman_by_hand() -> None:
    # perfect order and perfect reversal
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1 2 3 4 5, y = 2 1 4 3 5: d^2 = 1+1+1+1+0 = 4, no ties: 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [5, 1, 8, 7, 9]) == pytest.approx(0.8)
    # with a tie: x ranks 1 2.5 2.5 4, y ranks 1 2 3 4 -> Pearson of the ranks
    rx, ry = [1, 2.5, 2.5, 4], [1, 2, 3, 4]
    mx, my = 2.5, 2.5
    expected = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True)) / math.sqrt(
        sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)
    )
    assert spearman([6, 7, 7, 9], [1, 2, 3, 4]) == pytest.approx(expected)
    assert expected == pytest.approx(0.9486833)


def test_spearman_needs_three_pairs_and_variation() -> None:
    assert spearman([1, 2], [2, 1]) is None
    assert spearman([5, 5, 5], [1, 2, 3]) is None


def test_icc_by_hand_falls_when_one_judge_scores_everything_higher() -> None:
    """b = a + 1: the ranks agree perfectly (Spearman 1) but the scores do not. Item means 9.5, 6.5,
    8.5, 7.5 around 8: MS items = 2 x 5 / 3; rater means 7.5 and 8.5: MS raters = 4 x 0.5 = 2;
    no residual: MS error 0. ICC(2,1) = (10/3) / (10/3 + 2 x 2 / 4) = 10/13."""
    a, b = [9.0, 6.0, 8.0, 7.0], [10.0, 7.0, 9.0, 8.0]
    assert spearman(a, b) == pytest.approx(1.0)
    assert icc_2_1(a, b) == pytest.approx(10 / 13)
    assert icc_2_1(a, a) == pytest.approx(1.0)
    assert icc_2_1([5.0, 5.0, 5.0], [5.0, 5.0, 5.0]) is None  # nothing varies
    assert icc_2_1([1.0, 2.0], [1.0, 2.0]) is None  # under three essays


def _icc_by_anova_matrix(a: list[float], b: list[float]) -> float:
    """ICC(2,1) written from the ANOVA table with numpy, independently of the code under test."""
    import numpy as np

    x = np.array([a, b]).T  # items x raters
    n, k = x.shape
    grand = x.mean()
    ss_total = ((x - grand) ** 2).sum()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_err = ss_total - ss_rows - ss_cols
    msr, msc, mse = ss_rows / (n - 1), ss_cols / (k - 1), ss_err / ((n - 1) * (k - 1))
    return float((msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([8, 6, 7, 9, 3], [9, 6, 4, 9, 5]),
        ([1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]),  # opposite: negative
        ([7, 7, 8, 8, 2], [7, 8, 7, 8, 3]),  # ties
        ([0.1, 0.5, 0.9], [0.2, 0.5, 0.7]),
    ],
)
def test_icc_matches_an_independent_anova_computation(a: list[float], b: list[float]) -> None:
    assert icc_2_1([float(v) for v in a], [float(v) for v in b]) == pytest.approx(
        _icc_by_anova_matrix([float(v) for v in a], [float(v) for v in b])
    )


def test_mean_abs_diff() -> None:
    assert mean_abs_diff([8, 6, 7], [9, 6, 4]) == pytest.approx(4 / 3)
    assert mean_abs_diff([], []) is None


def test_pairs_compare_judges_within_a_rubric_and_rubrics_within_a_judge() -> None:
    """From the results fixture: nov is scored 0..10 and rig 0..9.

    nov, j1 vs j2: E1 (9 = mean of 8 and 10, 6), E2 (5, 9): n 2, no correlation, |3| and |4| -> 3.5.
    rig, j1 vs j2: only E3 (4, 8): n 1, 4.
    j1, nov vs rig (divided by 10 and 9): E1 0.9 vs 1.0, E3 0.7 vs 4/9 (E2's rig failed):
    (0.1 + 0.2556) / 2 = 0.1778.
    j2, nov vs rig: no essay scored by both.
    """
    table = agreement_pairs(Scores(ROWS))
    records = [
        (r["kind"], r["evaluation_template"], r["evaluation_model"], r["a"], r["b"], r["n"], r["spearman"])
        for r in table.records()
    ]
    assert records == [
        ("judges", "nov", "", "j1", "j2", 2, None),
        ("judges", "rig", "", "j1", "j2", 1, None),
        ("rubrics", "", "j1", "nov", "rig", 2, None),
        ("rubrics", "", "j2", "nov", "rig", 0, None),
    ]
    diffs = [r["mean_abs_diff"] for r in table.records()]
    assert diffs[0] == pytest.approx(3.5) and diffs[1] == pytest.approx(4.0)
    assert diffs[2] == pytest.approx((0.1 + (0.7 - 4 / 9)) / 2) and diffs[3] is None
    assert [r["mean_abs_diff_scale"] for r in table.records()] == ["0..10", "0..9", "0..1", "0..1"]
    assert [r["icc"] for r in table.records()] == [None] * 4  # under three essays each
