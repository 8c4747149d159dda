"""Results: score rows in, tables out (pure).

One :class:`~daydreamd.core.scores.ScoreRow` per finished evaluation (done or failed) is all the
tables need; the shell (:mod:`daydreamd.storage.scores`) reads them from the run state or from
the gens store, indexes them (:class:`~daydreamd.core.scores.Scores`), and writes the tables
:func:`build_tables` returns. Every table is a :class:`~daydreamd.core.table.Table`: a path
relative to the reports folder, a header and rows of plain cells.

Where things are: :mod:`~daydreamd.core.scores` (rows, scales, the index),
:mod:`~daydreamd.core.table` (tables, number formatting), :mod:`~daydreamd.core.agreement`
(spreads and agreement across judges, templates and replicates), and this module (every other
table, the top essays, the means the terminal shows).

Conventions, fixed here and pinned by tests:

* **std** is the *population* standard deviation (divide by n): see ``agreement``.
* **Scales.** Each evaluation template scores on 0..``score_max``: its ``score_max`` column, else
  the scale its text asks for (:mod:`daydreamd.core.scales`), else 10. Means in
  ``final_results`` are of raw scores; *top* means a score at the template's own maximum,
  *high* a score at or above 80 % of it.
* **Failed evaluations** are rows with ``score`` None and an ``error_kind``: listed in
  ``aggregated_scores``, counted as ``failed`` in the summaries, never averaged.
* **Paths** are relative to the data directory (as in ``metadata.json``): an essay's text is
  ``gens/essay/<gen_id>/parsed.txt``, a judge's reply ``gens/evaluation/<gen_id>/raw.txt``.
* Numbers are written with at most 4 decimals and no trailing zeros (``7``, ``7.5``, ``7.3333``).

Performance: a million rows must turn into every table in seconds (``bench/results_scale.py``:
about 16 s and 1.1 GiB for all of them from SQLite), so every row is visited once to build the
indexes, the large tables are made of ready-formatted text, and no pandas (0.5 s to import, and
the CSV and per-essay work stays in Python either way).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from daydreamd.core.agreement import agreement_tables
from daydreamd.core.breakdowns import breakdown_tables
from daydreamd.core.pairs import agreement_pairs
from daydreamd.core.scores import (
    GroupStats,
    ScoreRow,
    Scores,
    column_name,
    essay_path,
    evaluation_path,
    is_top,
)
from daydreamd.core.table import (
    AGGREGATED_SCORES,
    CROSS_EXPERIMENT,
    ESSAY_COLUMNS,
    FINAL_RESULTS,
    GENERATION_SCORES,
    PERFECT_SCORE_PATHS,
    Cell,
    Joined,
    Table,
    essay_cells,
    format_number,
    format_optional,
)

SCORE_COLUMNS = (
    "gen_id",
    "essay_gen_id",
    "draft_gen_id",
    "combo_id",
    "concept_ids",
    "draft_template",
    "essay_template",
    "generation_model",
    "evaluation_template",
    "evaluation_model",
    "replicate",
    "state",
    "score",
    "score_max",
    "error_kind",
    "error_message",
    "cohorts",
    "essay_path",
    "evaluation_path",
)


class _ScoreView:
    """``aggregated_scores`` rows made on the fly: a million rows are never held twice."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[ScoreRow]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[Cell, ...]]:
        joined = Joined()
        for r in self._rows:
            score = r.score
            yield (
                r.gen_id,
                r.essay_gen_id,
                r.draft_gen_id,
                r.combo_id,
                joined[r.concept_ids],
                r.draft_template,
                r.essay_template,
                r.generation_model,
                r.evaluation_template,
                r.evaluation_model,
                str(r.replicate),
                "failed" if score is None else "done",
                "" if score is None else format_number(score),
                format_number(r.score_max),
                r.error_kind,
                r.error_message,
                joined[r.cohorts],
                essay_path(r.essay_gen_id),
                evaluation_path(r.gen_id),
            )

    def __len__(self) -> int:
        return len(self._rows)


def aggregated_scores(scores: Scores) -> Table:
    """``parsing/aggregated_scores.csv``: every finished evaluation, failed ones with their error."""
    return Table(AGGREGATED_SCORES, SCORE_COLUMNS, _ScoreView(scores.rows), text=True)


def generation_scores(scores: Scores) -> Table:
    """``summary/generation_scores.csv``: one row per essay, one column per template x judge.

    Each column holds the mean over replicates; a column where some essay has more than one
    score also gets ``_n``, ``_min`` and ``_max``. ``sum_scores`` adds the column means the
    essay has (``scored_columns`` says how many); ``failed`` counts its failed evaluations.
    """
    keys = scores.columns()
    replicated = {k for e in scores.essays.values() for k, v in e.cells.items() if len(v) > 1}
    header: list[str] = list(ESSAY_COLUMNS)
    for key in keys:
        name = column_name(*key)
        header.append(name)
        if key in replicated:
            header.extend((f"{name}_n", f"{name}_min", f"{name}_max"))
    header.extend(("sum_scores", "scored_columns", "failed", "essay_path"))
    joined = Joined()
    rows = []
    for essay in scores.essays.values():
        cells: list[Cell] = list(essay_cells(essay, joined))
        means = essay.means()
        for key in keys:
            cells.append(format_optional(means.get(key)))
            if key in replicated:
                values = essay.cells.get(key)
                if values:
                    cells.extend((str(len(values)), format_number(min(values)), format_number(max(values))))
                else:
                    cells.extend(("0", "", ""))
        total = format_optional(math.fsum(means.values())) if means else ""
        cells.extend((total, str(len(means)), str(essay.failed), essay.first.essay_path))
        rows.append(tuple(cells))
    return Table(GENERATION_SCORES, tuple(header), tuple(rows), text=True)


GROUPINGS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("by_draft_template", ("draft_template",)),
    ("by_essay_template", ("essay_template",)),
    ("by_generation_model", ("generation_model",)),
    ("by_evaluation_template", ("evaluation_template",)),
    ("by_evaluation_model", ("evaluation_model",)),
    ("by_combo", ("combo_id",)),
    ("by_draft_template_and_generation_model", ("draft_template", "generation_model")),
    ("overall", ()),
)
"""The groups of ``final_results.csv`` (``analysis_type``) and the columns that name each group."""
FINAL_KEY_COLUMNS = (
    "draft_template",
    "essay_template",
    "generation_model",
    "evaluation_template",
    "evaluation_model",
    "combo_id",
)
STAT_COLUMNS = (
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


def final_results(scores: Scores) -> Table:
    """``summary/final_results.csv``: count, mean, std, min, max and top/high shares per group.

    ``count`` is scored evaluations, ``failed`` the failed ones (not in the statistics);
    ``top_share`` is the share at the template's own maximum, ``high_share`` at or above 80 %
    of it. ``overall`` is written even when there is nothing to summarise (count 0). A ``by_combo``
    row names its combo's concepts (``concepts``, their ids joined by ``;``): a reader sees what a
    combo is without looking up its hash.
    """
    rows: list[tuple[Cell, ...]] = []
    concepts = scores.combo_concepts()
    joined = Joined()
    for analysis, fields in GROUPINGS:
        groups = scores.groups(fields)
        if not fields and not groups:
            groups = {(): GroupStats()}
        for group in sorted(groups):
            named = dict(zip(fields, group, strict=True))
            keys = tuple(named.get(c, "") for c in FINAL_KEY_COLUMNS)
            combo = named.get("combo_id")
            names = joined[concepts.get(combo, ())] if combo else ""
            rows.append((analysis, *keys, names, *groups[group].cells()))
    header = ("analysis_type", *FINAL_KEY_COLUMNS, "concepts", *STAT_COLUMNS)
    return Table(FINAL_RESULTS, header, tuple(rows))


PERFECT_COLUMNS = (
    "essay_gen_id",
    "combo_id",
    "concept_ids",
    "draft_template",
    "essay_template",
    "generation_model",
    "evaluation_template",
    "evaluation_model",
    "replicate",
    "score",
    "score_max",
    "gen_id",
    "essay_path",
    "evaluation_path",
)


def perfect_score_paths(scores: Scores) -> Table:
    """``summary/perfect_score_paths.csv``: every evaluation at its template's maximum, with paths."""
    joined = Joined()
    rows = tuple(
        (
            r.essay_gen_id,
            r.combo_id,
            joined[r.concept_ids],
            r.draft_template,
            r.essay_template,
            r.generation_model,
            r.evaluation_template,
            r.evaluation_model,
            str(r.replicate),
            format_number(r.score),
            format_number(r.score_max),
            r.gen_id,
            r.essay_path,
            r.evaluation_path,
        )
        for r in scores.rows
        if r.score is not None and is_top(r.score, r.score_max)
    )
    return Table(PERFECT_SCORE_PATHS, PERFECT_COLUMNS, rows, text=True)


def evaluation_scores_by_template_model(scores: Scores) -> Table:
    """``evaluation_scores_by_template_model.csv``: the cross-experiment pivot.

    One row per essay with the cohorts it belongs to and one column per
    ``<evaluation_template>__<judge_model>`` (mean over replicates).
    """
    keys = scores.columns()
    header = (
        *ESSAY_COLUMNS,
        "cohorts",
        *(column_name(*k) for k in keys),
        "n_scores",
        "failed",
        "essay_path",
    )
    joined = Joined()
    rows = []
    for essay in scores.essays.values():
        means = essay.means()
        rows.append(
            (
                *essay_cells(essay, joined),
                joined[essay.first.cohorts],
                *(format_optional(means.get(k)) for k in keys),
                str(sum(len(v) for v in essay.cells.values())),
                str(essay.failed),
                essay.first.essay_path,
            )
        )
    return Table(CROSS_EXPERIMENT, header, tuple(rows), text=True)


def build_tables(scores: Scores, *, cross_experiment: bool = False) -> tuple[Table, ...]:
    """Every table, in the order they are written; the cross-experiment pivot only when asked."""
    judges, variance = agreement_tables(scores)
    breakdowns, by_judge = breakdown_tables(scores)
    tables = [
        aggregated_scores(scores),
        generation_scores(scores),
        final_results(scores),
        perfect_score_paths(scores),
        judges,
        variance,
        breakdowns,
        by_judge,
        agreement_pairs(scores),
    ]
    if cross_experiment:
        tables.append(evaluation_scores_by_template_model(scores))
    return tuple(tables)


# -- what the terminal, --json and the report show ------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TopEssay:
    """An essay among the best: its sum of column means and what produced it."""

    essay_gen_id: str
    sum_scores: float
    scored_columns: int
    mean: float
    """Mean of its column means."""
    draft_template: str
    essay_template: str
    generation_model: str
    combo_id: str
    essay_path: str
    rank: int = 0
    """1-based, shared by essays that tie on what they are ranked by (1, 2, 2, 4: competition ranking)."""
    tied: bool = False
    """Another essay (shown or just below the cut) has the same sum (or, with ``by``, the same mean):
    the order between them is the tie-break's, not the scores'."""


def top_essays(scores: Scores, n: int = 10, *, by: tuple[str, str | None] | None = None) -> list[TopEssay]:
    """The ``n`` essays with the highest ``sum_scores`` (ties: higher mean, then essay id).

    With ``by`` = (evaluation template, judge or None), only that rubric's columns (per judge, each
    the mean of its replicates) count, of that judge or of every judge on it, and the essays are
    ranked by their mean (ties: more columns, then essay id): a ranking on one rubric and one
    scale, which a sum over every rubric is not. An essay that rubric did not score is not ranked.
    """
    ranked = []
    for essay_id, essay in scores.essays.items():
        means = essay.means()
        if by is not None:
            template, judge = by
            means = {k: v for k, v in means.items() if k[0] == template and judge in (None, k[1])}
        if means:
            total = math.fsum(means.values())
            mean = total / len(means)
            key = (-mean, -len(means)) if by is not None else (-total, -mean)
            ranked.append((key, essay_id, total, mean, len(means)))
    ranked.sort()
    primary = [round(key[0], 9) for key, *_ in ranked]  # the ranking value alone (float noise aside)
    counts = Counter(primary)
    out = []
    for position, (_, essay_id, total, mean, columns) in enumerate(ranked[:n]):
        r = scores.essays[essay_id].first
        out.append(
            TopEssay(
                essay_gen_id=essay_id,
                sum_scores=total,
                scored_columns=columns,
                mean=mean,
                draft_template=r.draft_template,
                essay_template=r.essay_template,
                generation_model=r.generation_model,
                combo_id=r.combo_id,
                essay_path=r.essay_path,
                rank=primary.index(primary[position]) + 1,
                tied=counts[primary[position]] > 1,
            )
        )
    return out


def group_means(table: Table, analysis_type: str) -> list[dict[str, Cell]]:
    """The rows of one ``analysis_type`` of a ``final_results`` table, as dicts without empty keys."""
    out = []
    for record in table.records():
        if record["analysis_type"] == analysis_type:
            out.append({k: v for k, v in record.items() if v != "" and k != "analysis_type"})
    return out


@dataclass(frozen=True, slots=True)
class Completeness:
    """How much of a cohort's evaluation stage has finished: results say it before any mean."""

    total: int
    done: int
    failed: int

    @property
    def partial(self) -> bool:
        """True while some of the cohort's evaluations are not done (failed ones count as not done)."""
        return self.done < self.total

    def sentence(self) -> str:
        """One line for a person: complete, or partial with what the means are (and are not) over."""
        if not self.partial:
            return f"complete: all {self.total:,} evaluations of the cohort are done"
        unfinished = self.total - self.done - self.failed
        return (
            f"PARTIAL: {self.done:,} of {self.total:,} evaluations done, {self.failed:,} failed, "
            f"{unfinished:,} not finished; every mean is over the done evaluations only, "
            "not the cohort's"
        )

    def to_json(self) -> dict[str, object]:
        """For ``results --json``."""
        return {"total": self.total, "done": self.done, "failed": self.failed, "partial": self.partial}


def completeness(progress: Mapping[str, Mapping[str, int]]) -> Completeness | None:
    """The evaluation stage's completeness from per-stage progress counts (None without any)."""
    counts = progress.get("evaluation")
    if not counts:
        return None
    return Completeness(counts.get("total", 0), counts.get("done", 0), counts.get("failed", 0))
