"""How far scores of one essay agree: across judges, templates and replicates (pure).

* **std** is the *population* standard deviation (divide by n): it describes the scores that
  were given, is defined for a single score (0), and for two judges it is half their distance.
* **Agreement classes** from the range (max - min) of the scores compared, on a 0..10 scale
  and scaled by ``score_max / 10`` for other scales: range <= 1 ``strong agreement``,
  <= 2 ``moderate agreement``, <= 3 ``weak agreement``, else ``disagreement`` (on 0..9 the
  limits are 0.9, 1.8 and 2.7).
* Spreads across evaluation templates with different maxima are computed on scores rescaled
  to 0..10 (their ``score_max`` column then says 10).

Two tables come from one pass over the essays: ``analysis/judge_agreement.csv`` and
``analysis/variance_analysis.csv`` (:func:`agreement_tables`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from daydreamd.core.scores import EPS, SCORE_MAX_DEFAULT, EssayScores, Scores
from daydreamd.core.table import (
    ESSAY_COLUMNS,
    JUDGE_AGREEMENT,
    VARIANCE_ANALYSIS,
    Cell,
    Joined,
    Table,
    essay_cells,
    format_number,
    format_optional,
)

AGREEMENT_LIMITS: tuple[tuple[float, str], ...] = (
    (1.0, "strong agreement"),
    (2.0, "moderate agreement"),
    (3.0, "weak agreement"),
)
"""(largest range on a 0..10 scale, class), checked in order; beyond the last: ``disagreement``."""
DISAGREEMENT = "disagreement"


@dataclass(frozen=True, slots=True)
class Spread:
    """How a set of scores spreads: population std, range and coefficient of variation."""

    n: int
    mean: float
    std: float
    min: float
    max: float

    @property
    def range(self) -> float:
        """max - min."""
        return self.max - self.min

    @property
    def cv(self) -> float | None:
        """std / mean (None when the mean is 0)."""
        return self.std / self.mean if self.mean else None


def spread(values: Sequence[float]) -> Spread:
    """Mean, population std, min and max of a non-empty sequence (two-pass, exact sums)."""
    n = len(values)
    if n == 2:
        a, b = values
        low, high = (a, b) if a <= b else (b, a)
        return Spread(2, (a + b) / 2, (high - low) / 2, low, high)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    return Spread(n, mean, std, min(values), max(values))


def agreement_class(value_range: float, score_max: float = SCORE_MAX_DEFAULT) -> str:
    """The plain-words agreement of scores whose range is ``value_range`` on 0..``score_max``."""
    scale = score_max / 10.0
    for limit, label in AGREEMENT_LIMITS:
        if value_range <= limit * scale + EPS:
            return label
    return DISAGREEMENT


SPREAD_COLUMNS = ("mean", "std", "min", "max", "range", "cv", "score_max", "agreement")


class Comparison(NamedTuple):
    """One set of scores of one essay compared along one dimension."""

    dimension: str
    """``judges`` (template fixed), ``templates`` (judge fixed) or ``replicates`` (both fixed)."""
    evaluation_template: str
    evaluation_model: str
    values: tuple[tuple[str, float], ...]
    """(label, score): judge, template or replicate number, with its score."""
    score_max: float

    def cells(self) -> tuple[Cell, ...]:
        """n, scores, mean, std, min, max, range, cv, score_max, agreement: formatted (memoised)."""
        key = (self.values, self.score_max)
        found = _SPREAD_CELLS.get(key)
        if found is None:
            found = _spread_cells(self.values, self.score_max)
            if len(_SPREAD_CELLS) >= 200_000:
                _SPREAD_CELLS.clear()
            _SPREAD_CELLS[key] = found
        return found


_SPREAD_CELLS: dict[tuple[object, float], tuple[Cell, ...]] = {}


def _spread_cells(labelled: tuple[tuple[str, float], ...], score_max: float) -> tuple[Cell, ...]:
    s = spread([v for _, v in labelled])
    listing = ";".join(f"{label}={format_number(value)}" for label, value in labelled)
    return (
        str(s.n),
        listing,
        format_number(s.mean),
        format_number(s.std),
        format_number(s.min),
        format_number(s.max),
        format_number(s.range),
        format_optional(s.cv),
        format_number(score_max),
        agreement_class(s.range, score_max),
    )


def comparisons(scores: Scores, essay: EssayScores) -> Iterator[Comparison]:
    """Across judges (per template), across templates (per judge), across replicates (per pair)."""
    cells = essay.cells
    if len(cells) < 2 and not essay.replicated:
        return
    means = essay.means()
    maxima = scores.score_max
    by_template: dict[str, list[tuple[str, float]]] = {}
    by_judge: dict[str, list[tuple[str, float]]] = {}
    for (template, judge), mean in means.items():  # in (template, judge) order
        found = by_template.get(template)
        if found is None:
            by_template[template] = [(judge, mean)]
        else:
            found.append((judge, mean))
        found = by_judge.get(judge)
        if found is None:
            by_judge[judge] = [(template, mean)]
        else:
            found.append((template, mean))
    for template, values in by_template.items():
        if len(values) > 1:
            yield Comparison("judges", template, "", tuple(values), maxima.get(template, SCORE_MAX_DEFAULT))
    if len(by_judge) < len(means):  # some judge scored it on two or more templates
        for judge in sorted(by_judge):
            values = by_judge[judge]
            if len(values) < 2:
                continue
            scale = scores.shared_scale(tuple(t for t, _ in values))
            if scale is not None:
                yield Comparison("templates", "", judge, tuple(values), scale)
            else:  # different scales: compare on 0..10
                rescaled = tuple((t, v * 10.0 / maxima.get(t, SCORE_MAX_DEFAULT)) for t, v in values)
                yield Comparison("templates", "", judge, rescaled, SCORE_MAX_DEFAULT)
    if essay.replicated:
        for (template, judge), replicate_scores in cells.items():
            if len(replicate_scores) > 1:
                numbered = tuple((str(i), v) for i, v in enumerate(replicate_scores, start=1))
                yield Comparison(
                    "replicates", template, judge, numbered, maxima.get(template, SCORE_MAX_DEFAULT)
                )


JUDGE_AGREEMENT_COLUMNS = (
    *ESSAY_COLUMNS,
    "evaluation_template",
    "n_judges",
    "scores",
    *SPREAD_COLUMNS,
    "essay_path",
)
VARIANCE_COLUMNS = (
    *ESSAY_COLUMNS,
    "dimension",
    "evaluation_template",
    "evaluation_model",
    "n",
    "scores",
    *SPREAD_COLUMNS,
    "essay_path",
)


def agreement_tables(scores: Scores) -> tuple[Table, Table]:
    """``judge_agreement`` and ``variance_analysis``, from one pass over the essays.

    ``analysis/judge_agreement.csv``: per essay and evaluation template, how far the judges
    agree (each judge's score is its mean over replicates). Only essays scored by two or more
    judges on a template have a row: one judge has nobody to agree with.

    ``analysis/variance_analysis.csv``: per essay, the spread across judges, templates and
    replicates. ``dimension`` says what varies: ``judges`` (``evaluation_template`` fixed),
    ``templates`` (``evaluation_model`` fixed; rescaled to 0..10 when the templates' maxima
    differ) or ``replicates`` (both fixed). ``scores`` lists what was compared, ``label=score``.
    """
    judges: list[tuple[Cell, ...]] = []
    variance: list[tuple[Cell, ...]] = []
    joined = Joined()
    for essay in scores.essays.values():
        head: tuple[str, ...] | None = None
        path = ""
        for c in comparisons(scores, essay):
            if head is None:
                head = essay_cells(essay, joined)
                path = essay.first.essay_path
            cells = c.cells()
            variance.append((*head, c.dimension, c.evaluation_template, c.evaluation_model, *cells, path))
            if c.dimension == "judges":
                judges.append((*head, c.evaluation_template, *cells, path))
    return (
        Table(JUDGE_AGREEMENT, JUDGE_AGREEMENT_COLUMNS, tuple(judges), text=True),
        Table(VARIANCE_ANALYSIS, VARIANCE_COLUMNS, tuple(variance), text=True),
    )


def judge_agreement(scores: Scores) -> Table:
    """``analysis/judge_agreement.csv`` (see :func:`agreement_tables`)."""
    return agreement_tables(scores)[0]


def variance_analysis(scores: Scores) -> Table:
    """``analysis/variance_analysis.csv`` (see :func:`agreement_tables`)."""
    return agreement_tables(scores)[1]
