"""Two cohorts side by side: what changed between them, and by how much (pure).

An *item* is one evaluation's place in the design, whatever its inputs' versions: its combo, draft
template, essay template, generation model, evaluation template, judge and replicate. The same
item in cohort A and cohort B is either the **same** generation (one gen_id: nothing it depends on
changed, so its score is the same) or a **changed** one (a template's text, a model, a parameter
or a parent changed, so it was generated again); an item only B has is **new**, one only A has is
**gone**. Items are keyed without the draft's and essay's replicates: with several of those, the
scores of an item are averaged on each side.

``comparison/summary.csv``: per evaluation template and judge, the items paired (scored on both
sides), how many changed, both means, and the mean paired difference B - A with its 95 % t
interval; then how many are new and gone, and the failures on each side.
``comparison/items.csv``: every item with its status, gen_ids, scores and difference.

Why pair: the same essay scored before and after a rubric's edit removes the essays' own spread
from the comparison, so a small change of the rubric shows where two independent means would not.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from daydreamd.core.breakdowns import t_interval
from daydreamd.core.scores import ScoreRow
from daydreamd.core.table import Cell, Table

SUMMARY = "comparison/summary.csv"
ITEMS = "comparison/items.csv"
ITEM_FIELDS = (
    "combo_id",
    "draft_template",
    "essay_template",
    "generation_model",
    "evaluation_template",
    "evaluation_model",
    "replicate",
)
SUMMARY_COLUMNS = (
    "evaluation_template",
    "evaluation_model",
    "score_max",
    "paired",
    "changed",
    "same",
    "mean_a",
    "mean_b",
    "mean_diff",
    "ci95_low",
    "ci95_high",
    "new",
    "gone",
    "failed_a",
    "failed_b",
)
ITEM_COLUMNS = (*ITEM_FIELDS, "status", "gen_id_a", "gen_id_b", "score_a", "score_b", "diff")

Item = tuple[str, ...]


@dataclass(slots=True)
class _Side:
    """One cohort's rows of one item."""

    gen_ids: list[str]
    scores: list[float]
    failed: int = 0
    score_max: float = 10.0

    @property
    def score(self) -> float | None:
        return math.fsum(self.scores) / len(self.scores) if self.scores else None


def item_of(row: ScoreRow) -> Item:
    """The item a row scores (see the module docstring)."""
    return (
        row.combo_id,
        row.draft_template,
        row.essay_template,
        row.generation_model,
        row.evaluation_template,
        row.evaluation_model,
        str(row.replicate),
    )


def _sides(rows: Iterable[ScoreRow]) -> dict[Item, _Side]:
    found: dict[Item, _Side] = {}
    for row in rows:
        side = found.get(item := item_of(row))
        if side is None:
            side = found[item] = _Side([], [], score_max=row.score_max)
        side.gen_ids.append(row.gen_id)
        if row.score is None:
            side.failed += 1
        else:
            side.scores.append(row.score)
    return found


def status_of(a: _Side | None, b: _Side | None) -> str:
    """``same``, ``changed``, ``new`` or ``gone``."""
    if a is None:
        return "new"
    if b is None:
        return "gone"
    return "same" if sorted(a.gen_ids) == sorted(b.gen_ids) else "changed"


@dataclass(slots=True)
class _Totals:
    """One (evaluation template, judge): the paired scores and the items by status."""

    score_max: float = 10.0
    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)
    changed: int = 0
    same: int = 0
    new: int = 0
    gone: int = 0
    failed_a: int = 0
    failed_b: int = 0

    def add(self, a: _Side | None, b: _Side | None) -> None:
        status = status_of(a, b)
        setattr(self, status, getattr(self, status) + 1)
        self.failed_a += a.failed if a else 0
        self.failed_b += b.failed if b else 0
        score_a, score_b = (a.score if a else None), (b.score if b else None)
        if score_a is not None and score_b is not None:
            self.a.append(score_a)
            self.b.append(score_b)

    def cells(self) -> tuple[Cell, ...]:
        a, b = self.a, self.b
        n = len(a)
        diffs = [y - x for x, y in zip(a, b, strict=True)]
        mean_diff = math.fsum(diffs) / n if n else None
        interval = None
        if n >= 2 and mean_diff is not None:
            sd = math.sqrt(math.fsum((d - mean_diff) ** 2 for d in diffs) / (n - 1))
            interval = t_interval(mean_diff, sd, n)
        low, high = interval if interval is not None else (None, None)
        return (
            self.score_max,
            n,
            self.changed,
            self.same,
            math.fsum(a) / n if n else None,
            math.fsum(b) / n if n else None,
            mean_diff,
            low,
            high,
            self.new,
            self.gone,
            self.failed_a,
            self.failed_b,
        )


def compare(a_rows: Sequence[ScoreRow], b_rows: Sequence[ScoreRow]) -> tuple[Table, Table]:
    """The summary and the items of cohort A against cohort B (see the module docstring)."""
    a, b = _sides(a_rows), _sides(b_rows)
    totals: defaultdict[tuple[str, str], _Totals] = defaultdict(_Totals)
    items: list[tuple[Cell, ...]] = []
    for item in sorted(a.keys() | b.keys()):
        side_a, side_b = a.get(item), b.get(item)
        total = totals[(item[4], item[5])]
        total.score_max = side_b.score_max if side_b else side_a.score_max if side_a else total.score_max
        total.add(side_a, side_b)
        score_a, score_b = (side_a.score if side_a else None), (side_b.score if side_b else None)
        diff = score_b - score_a if score_a is not None and score_b is not None else None
        items.append(
            (
                *item,
                status_of(side_a, side_b),
                ";".join(sorted(side_a.gen_ids)) if side_a else "",
                ";".join(sorted(side_b.gen_ids)) if side_b else "",
                score_a,
                score_b,
                diff,
            )
        )
    summary = tuple((*key, *totals[key].cells()) for key in sorted(totals))
    return Table(SUMMARY, SUMMARY_COLUMNS, summary), Table(ITEMS, ITEM_COLUMNS, tuple(items))
