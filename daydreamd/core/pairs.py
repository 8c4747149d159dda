"""Agreement as statistics: ``analysis/agreement_pairs.csv`` (pure).

``judge_agreement.csv`` classes each essay (strong, moderate, ...); a paper needs numbers over the
whole set. For every pair of judges on the same evaluation template (``kind`` ``judges``), and
every pair of evaluation templates on the same judge (``kind`` ``rubrics``), over the essays both
scored (each side's score is its mean over replicates):

* ``n``: the essays both scored;
* ``spearman``: Spearman's rank correlation, ties given their average rank (the Pearson
  correlation of the ranks); empty under 3 essays or when one side gives every essay the same score;
* ``icc``: the intraclass correlation ICC(2,1) of Shrout and Fleiss (two-way random effects,
  absolute agreement, one rater), from the two-way ANOVA of the essays x the two sides: unlike a
  rank correlation it falls when one side scores everything higher. Empty under 3 essays or when
  no score varies. For a pair of rubrics it is computed on the 0..1 scale below;
* ``mean_abs_diff``: the mean absolute difference of the two scores, on the template's scale for
  a pair of judges; for a pair of rubrics (two scales, maybe different) on a 0..1 scale: each
  score divided by its template's maximum (``mean_abs_diff_scale`` says which).

Why not pool: two judges on two rubrics are not judges disagreeing, so judges are only compared
on one rubric, and rubrics only within one judge.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from itertools import combinations

from daydreamd.core.scores import SCORE_MAX_DEFAULT, Scores
from daydreamd.core.table import Cell, Table

AGREEMENT_PAIRS = "analysis/agreement_pairs.csv"
PAIR_COLUMNS = (
    "kind",
    "evaluation_template",
    "evaluation_model",
    "a",
    "b",
    "n",
    "spearman",
    "icc",
    "mean_abs_diff",
    "mean_abs_diff_scale",
)
MIN_FOR_CORRELATION = 3
"""Fewer paired essays than this give no correlation (two points always correlate perfectly)."""


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``, tied values sharing the average of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        rank = (start + end) / 2 + 1
        for position in range(start, end + 1):
            ranks[order[position]] = rank
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho with average ranks for ties; None under 3 pairs or without variation."""
    if len(a) != len(b) or len(a) < MIN_FOR_CORRELATION:
        return None
    return _pearson(average_ranks(a), average_ranks(b))


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    mean_x, mean_y = math.fsum(x) / len(x), math.fsum(y) / len(y)
    dx = [v - mean_x for v in x]
    dy = [v - mean_y for v in y]
    sxx, syy = math.fsum(d * d for d in dx), math.fsum(d * d for d in dy)
    if sxx == 0 or syy == 0:
        return None
    return math.fsum(p * q for p, q in zip(dx, dy, strict=True)) / math.sqrt(sxx * syy)


def icc_2_1(a: Sequence[float], b: Sequence[float]) -> float | None:
    """ICC(2,1) of two raters over the same items (Shrout and Fleiss 1979, absolute agreement);
    None under 3 items or when the denominator vanishes (no variation at all).

    From the two-way ANOVA's sums of squares, written with five exact sums (one pass each over the
    scores, no per-item residuals): a million-essay table pays for them in every pair.
    """
    n, k = len(a), 2
    if n != len(b) or n < MIN_FOR_CORRELATION:
        return None
    sa, sb = math.fsum(a), math.fsum(b)
    saa, sbb = math.fsum(x * x for x in a), math.fsum(y * y for y in b)
    sab = math.fsum(x * y for x, y in zip(a, b, strict=True))
    correction = (sa + sb) ** 2 / (n * k)  # n k x grand mean squared
    ss_total = saa + sbb - correction
    ss_items = (saa + sbb + 2 * sab) / k - correction
    ss_raters = (sa * sa + sb * sb) / n - correction
    ms_items = ss_items / (n - 1)
    ms_raters = ss_raters / (k - 1)
    ms_error = max(0.0, ss_total - ss_items - ss_raters) / ((n - 1) * (k - 1))
    denominator = ms_items + (k - 1) * ms_error + k * (ms_raters - ms_error) / n
    if denominator <= 1e-12:
        return None
    return (ms_items - ms_error) / denominator


def mean_abs_diff(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The mean of ``|a_i - b_i|`` (None for no pairs)."""
    if not a:
        return None
    return math.fsum(abs(p - q) for p, q in zip(a, b, strict=True)) / len(a)


def agreement_pairs(scores: Scores) -> Table:
    """``analysis/agreement_pairs.csv``: judge pairs per rubric, then rubric pairs per judge."""
    by_template: defaultdict[str, defaultdict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    by_judge: defaultdict[str, defaultdict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for essay_id, essay in scores.essays.items():
        for (template, judge), mean in essay.means().items():
            by_template[template][judge][essay_id] = mean
            by_judge[judge][template][essay_id] = mean
    rows: list[tuple[Cell, ...]] = []
    for template in sorted(by_template):
        scale = scores.score_max.get(template, SCORE_MAX_DEFAULT)
        for (a, a_scores), (b, b_scores) in _pairs(by_template[template]):
            rows.append(_row("judges", template, "", a, b, a_scores, b_scores, 1.0, 1.0, f"0..{scale:g}"))
    for judge in sorted(by_judge):
        for (a, a_scores), (b, b_scores) in _pairs(by_judge[judge]):
            a_max = scores.score_max.get(a, SCORE_MAX_DEFAULT)
            b_max = scores.score_max.get(b, SCORE_MAX_DEFAULT)
            rows.append(_row("rubrics", "", judge, a, b, a_scores, b_scores, 1 / a_max, 1 / b_max, "0..1"))
    return Table(AGREEMENT_PAIRS, PAIR_COLUMNS, tuple(rows))


def _pairs(
    sides: dict[str, dict[str, float]],
) -> Iterator[tuple[tuple[str, dict[str, float]], tuple[str, dict[str, float]]]]:
    """Every pair of sides (judges or rubrics) in name order."""
    return combinations(sorted(sides.items()), 2)


def _row(
    kind: str,
    template: str,
    judge: str,
    a: str,
    b: str,
    a_scores: dict[str, float],
    b_scores: dict[str, float],
    a_factor: float,
    b_factor: float,
    scale: str,
) -> tuple[Cell, ...]:
    # Essays both scored, in a's order: every statistic here is exact and order-free (fsum, ranks).
    both = [essay for essay in a_scores if essay in b_scores]
    x = [a_scores[e] * a_factor for e in both]
    y = [b_scores[e] * b_factor for e in both]
    return (kind, template, judge, a, b, len(both), spearman(x, y), icc_2_1(x, y), mean_abs_diff(x, y), scale)
