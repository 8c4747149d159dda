"""Breakdowns that never mix rubrics: ``summary/breakdowns.csv`` (pure).

Why a table apart from ``final_results``: two evaluation templates are two rubrics, often on
two scales (0..10 and 0..9), and ``final_results`` groups by draft template, model, combo or
judge across all of them, so its means pool rubrics. Here every grouping is repeated *within*
each evaluation template: every number is about scores given under one rubric, on one scale.

Rows: per evaluation template, per grouping (:data:`GROUP_BY`, in that order), one row per group
with at least one score, best mean first (equal means, as written to 4 decimals, by group).
Failed evaluations are not scores: they are in no row, and a group of failures only has no row
(``final_results`` counts failures). Replicates count as separate scores.

Statistics, per group:

* ``sd`` is the *sample* standard deviation (divide by n - 1): the one the interval needs. It is
  named apart from the ``std`` (population) of the other tables so the two are never confused;
  empty for a single score.
* ``ci95_low``, ``ci95_high``: the Student t interval on the mean,
  mean ± t(0.975, n - 1) · sd / √n (:func:`t_interval`); empty for a single score. It is not
  clipped to the scale: a small group's interval reaching past 0..``score_max`` says how little
  it knows.
* ``top_share``: share at the template's own maximum; ``high_share``: share at or above 80 % of
  it (as in ``final_results``, :func:`~daydreamd.core.scores.is_top`).

Performance: :class:`~daydreamd.core.scores.Scores` has visited every row once already; the
groupings by draft template, model, essay template and judge come from its per-group index
(:meth:`~daydreamd.core.scores.Scores.groups`, a few hundred entries), and the one by combo from
one pass over its per-essay index (scores per template and judge), so no row is read again and
no group is re-scanned.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from daydreamd.core.scores import SCORE_MAX_DEFAULT, GroupStats, Scores
from daydreamd.core.table import Cell, Joined, Table

BREAKDOWNS = "summary/breakdowns.csv"
BREAKDOWNS_BY_JUDGE = "summary/breakdowns_by_judge.csv"

GROUP_BY = ("draft_template", "generation_model", "essay_template", "combo_id", "evaluation_model")
"""The groupings, in row order; each is named by the column it groups by in the other tables
(``evaluation_model`` is the judge)."""

BREAKDOWN_COLUMNS = (
    "evaluation_template",
    "score_max",
    "group_by",
    "group",
    "concept_ids",
    "n",
    "mean",
    "ci95_low",
    "ci95_high",
    "sd",
    "min",
    "max",
    "top_share",
    "high_share",
)

# -- the t quantile ----------------------------------------------------------------------------------

T975 = (
    12.706204736174694,
    4.302652729749462,
    3.1824463052837078,
    2.7764451051977934,
    2.5705818356363146,
    2.4469118511449786,
    2.364624251592784,
    2.306004135204166,
    2.262157162798205,
    2.228138851986274,
    2.200985160091639,
    2.1788128296672284,
    2.1603686564627913,
    2.144786687917804,
    2.131449545559776,
    2.1199052992212546,
    2.1098155778333156,
    2.1009220402410382,
    2.0930240544083087,
    2.085963447265864,
    2.0796138447276795,
    2.0738730679040254,
    2.0686576104190486,
    2.0638985616280245,
    2.0595385527532972,
    2.0555294386428735,
    2.0518305164802846,
    2.0484071417952454,
    2.045229642132703,
    2.0422724563012378,
)
"""t(0.975, df) for df = 1..30 (``scipy.stats.t.ppf``; the tests check each against the t density)."""
Z975 = 1.959963984540054
"""The normal quantile at 0.975, which the expansion starts from."""


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (no scipy in the core).

    df 1..30 from :data:`T975`. Beyond it, the Cornish-Fisher expansion of t around the normal
    quantile (Abramowitz & Stegun 26.7.5, four terms): off by less than 3e-8 at df 31 and less
    each df after, far below the 4 decimals written, where the normal value alone (1.96) would be
    4 % too narrow at df 31.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {df}")
    if df <= len(T975):
        return T975[df - 1]
    x = Z975
    x2 = x * x
    g1 = x * (x2 + 1) / 4
    g2 = x * ((5 * x2 + 16) * x2 + 3) / 96
    g3 = x * (((3 * x2 + 19) * x2 + 17) * x2 - 15) / 384
    g4 = x * ((((79 * x2 + 776) * x2 + 1482) * x2 - 1920) * x2 - 945) / 92160
    return x + (g1 + (g2 + (g3 + g4 / df) / df) / df) / df


def t_interval(mean: float, sd: float, n: int) -> tuple[float, float] | None:
    """The 95 % Student t interval on a mean of ``n`` scores (None for fewer than two)."""
    if n < 2:
        return None
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


# -- the rows ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Breakdown:
    """One group's scores under one evaluation template."""

    evaluation_template: str
    score_max: float
    group_by: str
    """One of :data:`GROUP_BY`."""
    group: str
    concept_ids: tuple[str, ...]
    """The combo's concepts (only for ``combo_id`` groups)."""
    n: int
    mean: float
    sd: float | None
    """Sample standard deviation (None for one score)."""
    min: float
    max: float
    top_share: float
    high_share: float
    judge: str = ""
    """The judge whose scores these are ('' for every judge of the template)."""

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % t interval on the mean (None for one score)."""
        return None if self.sd is None else t_interval(self.mean, self.sd, self.n)

    def order(self) -> tuple[str, str, int, float, str]:
        """Template, judge, grouping, best mean first, then group: means equal as written tie on the group."""
        return (
            self.evaluation_template,
            self.judge,
            GROUP_BY.index(self.group_by),
            -round(self.mean, 4),
            self.group,
        )

    def cells(self, joined: Joined) -> tuple[Cell, ...]:
        """The row's :data:`BREAKDOWN_COLUMNS`."""
        interval = self.interval
        low, high = interval if interval is not None else (None, None)
        return (
            self.evaluation_template,
            self.score_max,
            self.group_by,
            self.group,
            joined[self.concept_ids],
            self.n,
            self.mean,
            low,
            high,
            self.sd,
            self.min,
            self.max,
            self.top_share,
            self.high_share,
        )


def sample_sd(stats: GroupStats) -> float | None:
    """Sample standard deviation from a group's exact sums (None for fewer than two scores)."""
    if stats.n < 2:
        return None
    total = math.fsum(stats.sums)
    variance = max(0.0, (math.fsum(stats.squares) - total * total / stats.n) / (stats.n - 1))
    sd = math.sqrt(variance)
    return 0.0 if sd < 1e-6 else sd  # the rounding residue of equal scores


def breakdown(
    evaluation_template: str,
    score_max: float,
    group_by: str,
    group: str,
    stats: GroupStats,
    concept_ids: tuple[str, ...] = (),
    judge: str = "",
) -> Breakdown | None:
    """A group's row, or None when it has no score (failures only)."""
    if stats.n == 0:
        return None
    return Breakdown(
        evaluation_template=evaluation_template,
        score_max=score_max,
        group_by=group_by,
        group=group,
        concept_ids=concept_ids,
        n=stats.n,
        mean=math.fsum(stats.sums) / stats.n,
        sd=sample_sd(stats),
        min=stats.low,
        max=stats.high,
        top_share=stats.top_count / stats.n,
        high_share=stats.high_count / stats.n,
        judge=judge,
    )


CombosAndConcepts = tuple[dict[tuple[str, ...], GroupStats], dict[str, tuple[str, ...]]]
"""Totals per (template[, judge], combo), and each combo's concept ids."""


def combo_groups(scores: Scores, *, per_judge: bool = False) -> CombosAndConcepts:
    """Totals per (evaluation template, combo) (per (template, judge, combo) with ``per_judge``),
    and each combo's concepts, from the essay index.

    :class:`Scores` keeps combo totals across templates only, so they are gathered here from
    each essay's scores per (template, judge): one pass, replicates and all. Lists per combo, then
    per template (not per (template, combo) pair): no key tuple per score list, 20 % faster.
    """
    by_combo: dict[str, defaultdict[tuple[str, ...], list[float]]] = {}
    concepts: dict[str, tuple[str, ...]] = {}
    for essay in scores.essays.values():
        first = essay.first
        templates = by_combo.get(first.combo_id)
        if templates is None:
            templates = by_combo[first.combo_id] = defaultdict(list)
            concepts[first.combo_id] = first.concept_ids
        for (template, judge), values in essay.cells.items():
            templates[(template, judge) if per_judge else (template,)].extend(values)
    groups = {}
    for combo, templates in by_combo.items():
        for key, values in templates.items():
            stats = groups[(*key, combo)] = GroupStats()
            stats.add_scores(values, scores.score_max.get(key[0], SCORE_MAX_DEFAULT))
    return groups, concepts


def _per_template(per_judge: dict[tuple[str, ...], GroupStats]) -> dict[tuple[str, ...], GroupStats]:
    """(template, judge, combo) totals merged into (template, combo) ones."""
    merged: dict[tuple[str, ...], GroupStats] = {}
    for (template, _judge, combo), stats in per_judge.items():
        total = merged.get((template, combo))
        if total is None:
            total = merged[template, combo] = GroupStats()
        total.merge(stats)
    return merged


def breakdowns(scores: Scores, combo_totals: CombosAndConcepts | None = None) -> list[Breakdown]:
    """Every group's row under every evaluation template, in table order (``combo_totals``: what
    :func:`combo_groups` gives, when the caller has it already)."""
    combos, concepts = combo_totals or combo_groups(scores)
    out = []
    for group_by in GROUP_BY:
        groups = combos if group_by == "combo_id" else scores.groups(("evaluation_template", group_by))
        for (template, group), stats in groups.items():
            row = breakdown(
                template,
                scores.score_max.get(template, SCORE_MAX_DEFAULT),
                group_by,
                group,
                stats,
                concepts.get(group, ()) if group_by == "combo_id" else (),
            )
            if row is not None:
                out.append(row)
    out.sort(key=Breakdown.order)
    return out


def judge_breakdowns(scores: Scores, combo_totals: CombosAndConcepts | None = None) -> list[Breakdown]:
    """As :func:`breakdowns`, for each judge of each evaluation template apart: does one judge's
    preference hold for the other judges of the same rubric? (``combo_totals``: per judge.)"""
    combos, concepts = combo_totals or combo_groups(scores, per_judge=True)
    out = []
    for group_by in GROUP_BY:
        if group_by == "evaluation_model":
            continue  # within one judge, grouping by judge says nothing new
        groups = (
            combos
            if group_by == "combo_id"
            else scores.groups(("evaluation_template", "evaluation_model", group_by))
        )
        for (template, judge, group), stats in groups.items():
            concept_ids = concepts.get(group, ()) if group_by == "combo_id" else ()
            maximum = scores.score_max.get(template, SCORE_MAX_DEFAULT)
            row = breakdown(template, maximum, group_by, group, stats, concept_ids, judge=judge)
            if row is not None:
                out.append(row)
    out.sort(key=Breakdown.order)
    return out


def judge_breakdowns_table(scores: Scores, combo_totals: CombosAndConcepts | None = None) -> Table:
    """``summary/breakdowns_by_judge.csv``: :func:`breakdowns_table`'s rows per judge, the judge in
    ``evaluation_model`` after ``score_max``."""
    joined = Joined()
    found = judge_breakdowns(scores, combo_totals)
    rows = tuple((*(cells := b.cells(joined))[:2], b.judge, *cells[2:]) for b in found)
    columns = (*BREAKDOWN_COLUMNS[:2], "evaluation_model", *BREAKDOWN_COLUMNS[2:])
    return Table(BREAKDOWNS_BY_JUDGE, columns, rows)


def breakdowns_table(scores: Scores, combo_totals: CombosAndConcepts | None = None) -> Table:
    """``summary/breakdowns.csv``: n, mean, 95 % t interval, sample sd, extremes and top/high shares
    per group, within each evaluation template (never across two)."""
    joined = Joined()
    rows = tuple(b.cells(joined) for b in breakdowns(scores, combo_totals))
    return Table(BREAKDOWNS, BREAKDOWN_COLUMNS, rows)


def breakdown_tables(scores: Scores) -> tuple[Table, Table]:
    """Both breakdown tables, from one pass over the essays for the combos (per judge, then merged)."""
    per_judge, concepts = combo_groups(scores, per_judge=True)
    return (
        breakdowns_table(scores, (_per_template(per_judge), concepts)),
        judge_breakdowns_table(scores, (per_judge, concepts)),
    )
