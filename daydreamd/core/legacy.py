"""The old pipeline's tables, under their old names and columns (pure).

``daydreamctl results --layout legacy`` writes these beside the standard tables so that notebooks
and scripts written for the Dagster pipeline keep working. They live under ``legacy/`` in the
reports folder, in the old folders: ``5_parsing/parsed_scores.csv`` and ``6_summary/*.csv``. A
notebook that read ``data/6_summary/final_results.csv`` reads ``<reports>/legacy/6_summary/``.
``docs/legacy-tables.md`` maps every old name and column to the new one.

The old definitions are followed where they make sense for daydreamd's data, and on purpose:

* **Absolute thresholds.** A *perfect* score is exactly 10, *high* is >= 8, *low* is <= 3, and
  agreement classes use ranges of 1, 2 and 3 points (``relative_*`` divide by 10), whatever the
  template's ``score_max``: an old notebook compares these numbers with ones from old runs,
  which only works if they mean what they meant. The standard tables use each template's own
  scale; use them when templates score on other scales.
* **std_dev** is the *sample* standard deviation (divide by n - 1), as pandas computed it; empty
  for a single score. (The standard tables use the population std.)
* **generation_template** is the essay template, else the draft template; **stage** is
  ``essay2p`` (what the old pipeline called an essay written from a draft: every daydreamd essay).
* **Rounding** as the old tables did: ``final_results`` 2 decimals (percentages 1, the overall
  row's 2), ``generation_scores_pivot`` 2, ``overall_variance`` rows 3 (range and coefficient of
  variation from the rounded values); the rest unrounded (written with at most 4 decimals).
* **Replicates** are separate scores (the old pipeline had none); a pivot cell is the mean of
  the scores that fall in it (``generation_scores_pivot`` took the first one; with replicates
  the mean is the sound choice).
* **Paths** are daydreamd's, relative to the data directory (``gens/essay/<id>/parsed.txt``,
  ``gens/evaluation/<id>/raw.txt``): the old ``data/3_generation/...`` files do not exist.
* **Failed evaluations** are rows of ``parsed_scores`` with an ``error`` and no score, and are in
  no statistic; a coefficient of variation is empty when the mean is 0.
* Every table has its full header even without rows (most old ones were then headerless).
"""

from __future__ import annotations

import math
import operator
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from daydreamd.core.scores import ScoreRow, Scores, essay_path, evaluation_path
from daydreamd.core.table import Cell, Table

LEGACY_DIR = "legacy"
PARSED_SCORES = f"{LEGACY_DIR}/5_parsing/parsed_scores.csv"
GENERATION_SCORES_PIVOT = f"{LEGACY_DIR}/6_summary/generation_scores_pivot.csv"
FINAL_RESULTS = f"{LEGACY_DIR}/6_summary/final_results.csv"
PERFECT_SCORE_PATHS = f"{LEGACY_DIR}/6_summary/perfect_score_paths.csv"
EVALUATION_MODEL_TEMPLATE_PIVOT = f"{LEGACY_DIR}/6_summary/evaluation_model_template_pivot.csv"
EVALUATOR_AGREEMENT = f"{LEGACY_DIR}/6_summary/evaluator_agreement_analysis.csv"
VARIANCE_ANALYSIS = f"{LEGACY_DIR}/6_summary/comprehensive_variance_analysis.csv"

STAGE = "essay2p"
PERFECT = 10.0
HIGH = 8.0
LOW = 3.0
OLD_SCALE = 10.0
"""The old tables' fixed scale: ``relative_std_dev`` and ``relative_range`` divide by it."""
_EPS = 1e-9
"""Float rounding allowed at a threshold (a 9.9999999999 reached through a mean is 10)."""
AGREEMENT_LIMITS: tuple[tuple[float, str], ...] = (
    (1.0, "high_agreement"),
    (2.0, "moderate_agreement"),
    (3.0, "low_agreement"),
)
"""(largest range in points, old class), checked in order; beyond the last: ``poor_agreement``."""
POOR = "poor_agreement"
INSUFFICIENT = "insufficient_data"


# -- the old columns of a score row ---------------------------------------------------------------


def generation_template(row: ScoreRow) -> str:
    """The old ``generation_template``: the essay template, else the draft template."""
    return row.essay_template or row.draft_template


class Scored(NamedTuple):
    """A scored evaluation under the old column names (``evaluation_llm_model`` is the judge).

    Made once per row so that every grouping picks its key with one ``itemgetter`` call.
    """

    combo_id: str
    stage: str
    draft_template: str
    generation_template: str
    generation_model: str
    evaluation_template: str
    evaluation_llm_model: str
    score: float
    essay_gen_id: str
    gen_id: str


def _valid(rows: Iterable[ScoreRow]) -> list[Scored]:
    """The rows with a score: the old tables dropped errors before any statistic."""
    return [
        Scored(
            r.combo_id,
            STAGE,
            r.draft_template,
            generation_template(r),
            r.generation_model,
            r.evaluation_template,
            r.evaluation_model,
            r.score,
            r.essay_gen_id,
            r.gen_id,
        )
        for r in rows
        if r.score is not None
    ]


def _getter(names: Sequence[str]) -> Callable[[Scored], tuple[str, ...]]:
    """The ``names`` columns of a row, as a tuple (even for one name)."""
    positions = [Scored._fields.index(n) for n in names]
    if len(positions) == 1:
        get = operator.itemgetter(positions[0])
        return lambda r: (get(r),)
    return operator.itemgetter(*positions)


def _grouped(rows: Iterable[Scored], names: Sequence[str]) -> dict[tuple[str, ...], list[Scored]]:
    """Rows per value of the ``names`` columns, keys sorted (pandas' groupby order)."""
    key = _getter(names)
    groups: dict[tuple[str, ...], list[Scored]] = {}
    for r in rows:
        found = groups.get(k := key(r))
        if found is None:
            groups[k] = [r]
        else:
            found.append(r)
    return dict(sorted(groups.items()))


def _scores(rows: Iterable[Scored]) -> list[float]:
    return [r.score for r in rows]


# -- small statistics, as pandas computed them ----------------------------------------------------


def sample_std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); None for fewer than two values, like pandas' NaN."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _cv(std: float | None, mean: float) -> float | None:
    """std / mean; None when either is undefined (a single score, or a mean of 0)."""
    return None if std is None or mean == 0 else std / mean


def agreement_class(value_range: float) -> str:
    """The old agreement class of a range of scores, in absolute points."""
    for limit, label in AGREEMENT_LIMITS:
        if value_range <= limit + _EPS:
            return label
    return POOR


def _classify(std: float | None, cv: float | None, value_range: float) -> str:
    """``insufficient_data`` without a spread (one score, or a mean of 0), else by the range."""
    if std is None or cv is None:
        return INSUFFICIENT
    return agreement_class(value_range)


# -- parsed_scores --------------------------------------------------------------------------------

PARSED_COLUMNS = (
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
)


def parsed_scores(scores: Scores) -> Table:
    """``5_parsing/parsed_scores.csv``: every finished evaluation, failed ones with their ``error``.

    ``evaluation_llm_model`` and ``evaluation_model`` both hold the judge: the old table used
    one name, then the other, and notebooks of either era read it.
    """
    rows = tuple(
        (
            r.gen_id,
            r.essay_gen_id,
            r.combo_id,
            STAGE,
            r.draft_template,
            r.essay_template,
            generation_template(r),
            r.generation_model,
            r.evaluation_template,
            r.evaluation_model,
            r.evaluation_model,
            r.score,
            "" if r.score is not None else (r.error_message or r.error_kind),
            r.essay_path,
            r.evaluation_path,
        )
        for r in scores.rows
    )
    return Table(PARSED_SCORES, PARSED_COLUMNS, rows)


# -- the two pivots -------------------------------------------------------------------------------


def _pivot(
    rows: Sequence[Scored], index: Sequence[str], column: Callable[[Scored], str]
) -> tuple[list[str], dict[tuple[str, ...], dict[str, float]], dict[tuple[str, ...], str]]:
    """Column names (sorted), the mean per index key and column, and each key's first essay path."""
    cells: dict[tuple[str, ...], dict[str, list[float]]] = {}
    paths: dict[tuple[str, ...], str] = {}
    names: set[str] = set()
    key_of = _getter(index)
    for r in rows:
        key = key_of(r)
        name = column(r)
        names.add(name)
        cells.setdefault(key, {}).setdefault(name, []).append(r.score)
        if key not in paths:
            paths[key] = essay_path(r.essay_gen_id)
    means = {
        key: {n: math.fsum(v) / len(v) for n, v in found.items()} for key, found in sorted(cells.items())
    }
    return sorted(names), means, paths


GENERATION_PIVOT_INDEX = ("combo_id", "stage", "draft_template", "generation_template", "generation_model")


def generation_scores_pivot(scores: Scores) -> Table:
    """``6_summary/generation_scores_pivot.csv``: a row per generation, a column per
    ``<evaluation_template>_<evaluation_llm_model>``, then ``sum_scores`` and the essay's path.

    Cells and ``sum_scores`` (of the rounded cells) are rounded to 2 decimals, as before. Two
    essays with the same five key columns (generation replicates) share a row, as they did, and
    ``generation_response_path`` is then the first one's.
    """
    columns, means, paths = _pivot(
        _valid(scores.rows),
        GENERATION_PIVOT_INDEX,
        lambda r: f"{r.evaluation_template}_{r.evaluation_llm_model}",
    )
    out = []
    for key, found in means.items():
        cells = [_round(found.get(c), 2) for c in columns]
        total = round(math.fsum(v for v in cells if v is not None), 2)
        out.append((*key, *cells, total, paths[key]))
    header = (*GENERATION_PIVOT_INDEX, *columns, "sum_scores", "generation_response_path")
    return Table(GENERATION_SCORES_PIVOT, header, tuple(out))


MODEL_TEMPLATE_PIVOT_INDEX = ("combo_id", "generation_template", "generation_model")


def evaluation_model_template_pivot(scores: Scores) -> Table:
    """``6_summary/evaluation_model_template_pivot.csv``: a row per (combo, generation template,
    generation model), a column per ``<evaluation_llm_model>_<evaluation_template>`` (judge first).

    A cell is the mean of every score under it (the old table's ``mean``): essays from different
    draft templates, and replicates, share a cell, because the old index had no draft template.
    """
    columns, means, _ = _pivot(
        _valid(scores.rows),
        MODEL_TEMPLATE_PIVOT_INDEX,
        lambda r: f"{r.evaluation_llm_model}_{r.evaluation_template}",
    )
    rows = tuple((*key, *(found.get(c) for c in columns)) for key, found in means.items())
    return Table(EVALUATION_MODEL_TEMPLATE_PIVOT, (*MODEL_TEMPLATE_PIVOT_INDEX, *columns), rows)


# -- final_results --------------------------------------------------------------------------------

FINAL_KEY_COLUMNS = ("generation_template", "generation_model", "evaluation_llm_model", "combo_id")
FINAL_STAT_COLUMNS = (
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
)
FINAL_COLUMNS = ("analysis_type", *FINAL_KEY_COLUMNS, *FINAL_STAT_COLUMNS)
FINAL_GROUPINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("by_generation_template", ("generation_template",)),
    ("by_generation_model", ("generation_model",)),
    ("by_evaluation_model", ("evaluation_llm_model",)),
    ("by_combo_id", ("combo_id",)),
    ("by_template_and_generation_model", ("generation_template", "generation_model")),
    ("by_generation_vs_evaluation_model", ("generation_model", "evaluation_llm_model")),
)
"""The old ``analysis_type`` values and their group columns; ``overall_statistics`` comes last."""


def is_perfect(score: float) -> bool:
    """Exactly 10, the old *perfect* score (whatever the template's scale)."""
    return abs(score - PERFECT) <= _EPS


def final_stats(values: Sequence[float], pct_digits: int = 1) -> tuple[Cell, ...]:
    """The :data:`FINAL_STAT_COLUMNS` of a non-empty group's scores."""
    n = len(values)
    perfect = sum(1 for v in values if is_perfect(v))
    high = sum(1 for v in values if v >= HIGH - _EPS)
    low = sum(1 for v in values if v <= LOW + _EPS)
    return (
        n,
        round(math.fsum(values) / n, 2),
        _round(sample_std(values), 2),
        round(min(values), 2),
        round(max(values), 2),
        perfect,
        round(perfect / n * 100, pct_digits),
        high,
        round(high / n * 100, pct_digits),
        low,
    )


def final_results(scores: Scores) -> Table:
    """``6_summary/final_results.csv``: the old statistics per group, then ``overall_statistics``.

    Only groups with scores have rows, and ``overall_statistics`` only when there is a score.
    The overall row's percentages have 2 decimals, the groups' 1, as before.
    """
    valid = _valid(scores.rows)
    rows: list[tuple[Cell, ...]] = []
    for analysis, names in FINAL_GROUPINGS:
        for key, members in _grouped(valid, names).items():
            named = dict(zip(names, key, strict=True))
            keys = tuple(named.get(c, "") for c in FINAL_KEY_COLUMNS)
            rows.append((analysis, *keys, *final_stats(_scores(members))))
    if valid:
        overall = final_stats(_scores(valid), pct_digits=2)
        rows.append(("overall_statistics", *("",) * len(FINAL_KEY_COLUMNS), *overall))
    return Table(FINAL_RESULTS, FINAL_COLUMNS, tuple(rows))


# -- perfect_score_paths --------------------------------------------------------------------------

PERFECT_COLUMNS = (
    "combo_id",
    "generation_template",
    "generation_model",
    "evaluation_llm_model",
    "score",
    "generation_response_path",
    "evaluation_response_path",
    "notes",
)


def perfect_score_paths(scores: Scores) -> Table:
    """``6_summary/perfect_score_paths.csv``: every score of exactly 10, with both paths."""
    rows = tuple(
        (
            r.combo_id,
            r.generation_template,
            r.generation_model,
            r.evaluation_llm_model,
            r.score,
            essay_path(r.essay_gen_id),
            evaluation_path(r.gen_id),
            f"Perfect score from {r.generation_model} generation + {r.evaluation_llm_model} evaluation",
        )
        for r in _valid(scores.rows)
        if is_perfect(r.score)
    )
    return Table(PERFECT_SCORE_PATHS, PERFECT_COLUMNS, rows)


# -- agreement and variance -----------------------------------------------------------------------

GENERATION_KEY = ("combo_id", "generation_template", "generation_model")
"""What the old analyses took for "the same generated response"."""

AGREEMENT_COLUMNS = (
    *GENERATION_KEY,
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
)


def evaluator_agreement_analysis(scores: Scores) -> Table:
    """``6_summary/evaluator_agreement_analysis.csv``: per generation with two or more scores,
    how far they spread (every judge, template and replicate together, as before)."""
    rows = []
    for key, members in _grouped(_valid(scores.rows), GENERATION_KEY).items():
        values = _scores(members)
        if len(values) < 2:
            continue
        mean = math.fsum(values) / len(values)
        std = sample_std(values)
        low, high = min(values), max(values)
        value_range = high - low
        rows.append(
            (
                *key,
                len(values),
                mean,
                std,
                low,
                high,
                statistics.median(values),
                value_range,
                _cv(std, mean),
                agreement_class(value_range),
                None if std is None else std / OLD_SCALE,
                value_range / OLD_SCALE,
            )
        )
    return Table(EVALUATOR_AGREEMENT, AGREEMENT_COLUMNS, tuple(rows))


VARIANCE_COLUMNS = (
    *GENERATION_KEY,
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
)
"""The old table's columns: those of its three kinds of rows, in the order they first appeared."""


class _Spread(NamedTuple):
    mean: float
    std: float | None
    low: float
    high: float

    @property
    def range(self) -> float:
        return self.high - self.low


def _spread(values: Sequence[float], digits: int | None = None) -> _Spread:
    """Mean, sample std, min and max, each rounded to ``digits`` when given."""
    found = _Spread(math.fsum(values) / len(values), sample_std(values), min(values), max(values))
    if digits is None:
        return found
    mean, std, low, high = found
    return _Spread(round(mean, digits), _round(std, digits), round(low, digits), round(high, digits))


def _variance_row(key: tuple[str, ...], spread: _Spread, fields: dict[str, Cell]) -> tuple[Cell, ...]:
    """One row of the union header: the spread's columns, then ``fields``, the rest empty."""
    cv = _cv(spread.std, spread.mean)
    named: dict[str, Cell] = {
        **dict(zip(GENERATION_KEY, key, strict=True)),
        "mean_score": spread.mean,
        "std_dev": spread.std,
        "min_score": spread.low,
        "max_score": spread.high,
        "score_range": spread.range,
        "coefficient_of_variation": cv,
        "stability_classification": _classify(spread.std, cv, spread.range),
        **fields,
    }
    return tuple(named.get(c) for c in VARIANCE_COLUMNS)


def _overall_variance(valid: list[Scored]) -> list[tuple[Cell, ...]]:
    """Every generation, one score or more (rounded to 3 decimals, as before)."""
    rows = []
    for key, members in _grouped(valid, GENERATION_KEY).items():
        fields: dict[str, Cell] = {
            "analysis_type": "overall_variance",
            "total_evaluations": len(members),
            "num_templates": len({r.evaluation_template for r in members}),
            "num_models": len({r.evaluation_llm_model for r in members}),
        }
        rows.append(_variance_row(key, _spread(_scores(members), 3), fields))
    return rows


def _within(valid: list[Scored], fixed: str) -> list[tuple[Cell, ...]]:
    """``template_variance`` (judge fixed, ``fixed`` = ``evaluation_llm_model``) or
    ``model_variance`` (template fixed): groups of two or more scores, unrounded."""
    by_judge = fixed == "evaluation_llm_model"
    rows = []
    for key, members in _grouped(valid, (*GENERATION_KEY, fixed)).items():
        if len(members) < 2:
            continue
        varied = sorted({r.evaluation_template if by_judge else r.evaluation_llm_model for r in members})
        if by_judge:
            fields: dict[str, Cell] = {
                "analysis_type": "template_variance",
                "eval_model": key[-1],
                "template_evaluations": len(members),
                "num_templates": len(varied),
                "templates_used": ", ".join(varied),
            }
        else:
            fields = {
                "analysis_type": "model_variance",
                "eval_template": key[-1],
                "model_evaluations": len(members),
                "num_models": len(varied),
                "models_used": ", ".join(varied),
            }
        rows.append(_variance_row(key[:-1], _spread(_scores(members)), fields))
    return rows


def comprehensive_variance_analysis(scores: Scores) -> Table:
    """``6_summary/comprehensive_variance_analysis.csv``: the ``overall_variance`` rows (every
    generation), then ``template_variance`` (same judge, two or more scores) and
    ``model_variance`` (same evaluation template, two or more scores)."""
    valid = _valid(scores.rows)
    rows = [
        *_overall_variance(valid),
        *_within(valid, "evaluation_llm_model"),
        *_within(valid, "evaluation_template"),
    ]
    return Table(VARIANCE_ANALYSIS, VARIANCE_COLUMNS, tuple(rows))


def legacy_tables(scores: Scores) -> tuple[Table, ...]:
    """Every old table, in the order they are written."""
    return (
        parsed_scores(scores),
        generation_scores_pivot(scores),
        final_results(scores),
        perfect_score_paths(scores),
        evaluation_model_template_pivot(scores),
        evaluator_agreement_analysis(scores),
        comprehensive_variance_analysis(scores),
    )
