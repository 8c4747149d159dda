"""Results: score rows in, tables out (pure).

One :class:`ScoreRow` per finished evaluation (done or failed) is all this module needs; the
shell (:mod:`daydreamd.storage.scores`) reads them from the run state or from the gens store, and
writes the tables this module returns. Every table is a :class:`Table`: a path relative to
the reports folder, a header and rows of plain cells.

Conventions, fixed here and pinned by tests:

* **std** is the *population* standard deviation (divide by n): it describes the scores that
  were given, is defined for a single score (0), and for two judges it is half their distance.
* **Scales.** Each evaluation template scores on 0..``score_max`` (10 unless the template's
  ``score_max`` column says otherwise, e.g. 9). Means in ``final_results`` are of raw scores;
  *top* means a score at the template's own maximum, *high* a score at or above 80 % of it.
  Spreads across evaluation templates with different maxima are computed on scores rescaled
  to 0..10 (their ``score_max`` column then says 10).
* **Agreement classes** from the range (max - min) of the scores compared, on a 0..10 scale
  and scaled by ``score_max / 10`` for other scales: range <= 1 ``strong agreement``,
  <= 2 ``moderate agreement``, <= 3 ``weak agreement``, else ``disagreement`` (on 0..9 the
  limits are 0.9, 1.8 and 2.7).
* **Failed evaluations** are rows with ``score`` None and an ``error_kind``: listed in
  ``aggregated_scores``, counted as ``failed`` in the summaries, never averaged.
* **Paths** are relative to the data directory (as in ``metadata.json``): an essay's text is
  ``gens/essay/<gen_id>/parsed.txt``, a judge's reply ``gens/evaluation/<gen_id>/raw.txt``.
* Numbers are written with at most 4 decimals and no trailing zeros (``7``, ``7.5``, ``7.3333``).

Performance: a million rows must turn into every table in seconds (``bench/results_scale.py``:
about 16 s and 1.1 GiB for all of them from SQLite), so rows are NamedTuples (immutable like a
frozen dataclass, built in 1.3 s per million instead of 3.2 s, and sorted by plain tuple order:
the field order *is* the table order), every row is visited once to build the indexes, the
large tables are made of ready-formatted text, and no pandas (0.5 s to import, and the CSV
and per-essay work stays in Python either way).
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

SCORE_MAX_DEFAULT = 10.0
HIGH_FRACTION = 0.8
"""A *high* score is at or above this fraction of the template's maximum."""
AGREEMENT_LIMITS: tuple[tuple[float, str], ...] = (
    (1.0, "strong agreement"),
    (2.0, "moderate agreement"),
    (3.0, "weak agreement"),
)
"""(largest range on a 0..10 scale, class), checked in order; beyond the last: ``disagreement``."""
DISAGREEMENT = "disagreement"
_EPS = 1e-9

Cell = str | int | float | None


# -- input ---------------------------------------------------------------------------------------


class ScoreRow(NamedTuple):
    """One finished evaluation: what it scored, how, and the score (None when it failed).

    The first nine fields are the table order (draft template, generation model, essay
    template, combo, essay, evaluation template, judge, replicate, gen_id): sorting rows
    sorts them as every table lists them.
    """

    draft_template: str
    generation_model: str
    """The model that wrote the draft and the essay (an essay inherits its draft's model)."""
    essay_template: str
    combo_id: str
    essay_gen_id: str
    evaluation_template: str
    evaluation_model: str
    """The judge model."""
    replicate: int
    gen_id: str
    """The evaluation's gen_id (unique)."""
    draft_gen_id: str
    concept_ids: tuple[str, ...]
    score: float | None
    score_max: float = SCORE_MAX_DEFAULT
    error_kind: str = ""
    """Why it failed ('' when it has a score)."""
    error_message: str = ""
    cohorts: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the evaluation produced a score."""
        return self.score is not None

    @property
    def essay_path(self) -> str:
        """The essay's text, relative to the data directory."""
        return essay_path(self.essay_gen_id)

    @property
    def evaluation_path(self) -> str:
        """The judge's full reply, relative to the data directory."""
        return evaluation_path(self.gen_id)


def essay_path(essay_gen_id: str) -> str:
    """``gens/essay/<gen_id>/parsed.txt``: the essay's text."""
    return f"gens/essay/{essay_gen_id}/parsed.txt" if essay_gen_id else ""


def evaluation_path(gen_id: str) -> str:
    """``gens/evaluation/<gen_id>/raw.txt``: the judge's reply with its reasoning."""
    return f"gens/evaluation/{gen_id}/raw.txt"


def sort_rows(rows: Iterable[ScoreRow]) -> list[ScoreRow]:
    """Rows in table order, so both sources give byte-identical tables (gen_ids are unique)."""
    return sorted(rows)


# -- output --------------------------------------------------------------------------------------


class Rows(Protocol):
    """What a table's rows need to be: sized and re-iterable (a tuple, or a lazy view)."""

    def __iter__(self) -> Iterator[tuple[Cell, ...]]: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Table:
    """A table to write: ``path`` relative to the reports folder, its header and its rows.

    ``text`` tables hold only strings, already formatted (the big ones, written fast); the
    others hold numbers too (ints, floats, None), which :func:`format_cell` writes.
    """

    path: str
    columns: tuple[str, ...]
    rows: Rows
    text: bool = False

    def records(self) -> list[dict[str, Cell]]:
        """Rows as dicts (for JSON and tests)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


_FORMATTED: dict[float, str] = {}


def format_number(value: float) -> str:
    """At most 4 decimals, no trailing zeros: ``7``, ``7.5``, ``7.3333``; never ``-0`` ('' if not finite).

    Memoised: scores and their means repeat a lot, and a million rows format millions of cells.
    """
    text = _FORMATTED.get(value)
    if text is None:
        if not math.isfinite(value):
            return ""
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        if text == "-0":
            text = "0"
        if len(_FORMATTED) >= 500_000:
            _FORMATTED.clear()
        _FORMATTED[value] = text
    return text


def _num(value: float | None) -> str:
    return "" if value is None else format_number(value)


def format_cell(value: Cell) -> str:
    """A cell as CSV text: '' for None, numbers by :func:`format_number`."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return format_number(value)


# -- statistics ----------------------------------------------------------------------------------


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
        if value_range <= limit * scale + _EPS:
            return label
    return DISAGREEMENT


def is_top(score: float, score_max: float) -> bool:
    """At the template's own maximum."""
    return score >= score_max - _EPS


def is_high(score: float, score_max: float) -> bool:
    """At or above 80 % of the template's maximum."""
    return score >= HIGH_FRACTION * score_max - _EPS


@dataclass(slots=True)
class GroupStats:
    """Totals of one group of evaluations: exact sums, extremes, top/high/failed counts."""

    n: int = 0
    sums: list[float] = field(default_factory=list)
    squares: list[float] = field(default_factory=list)
    low: float = math.inf
    high: float = -math.inf
    top_count: int = 0
    high_count: int = 0
    failed: int = 0

    def add_scores(self, scores: list[float], score_max: float) -> None:
        """Add scores that share one maximum."""
        if not scores:
            return
        self.n += len(scores)
        self.sums.append(math.fsum(scores))
        self.squares.append(math.fsum(map(operator.mul, scores, scores)))
        self.low = min(self.low, min(scores))
        self.high = max(self.high, max(scores))
        top, high = score_max - _EPS, HIGH_FRACTION * score_max - _EPS
        self.top_count += sum(map(top.__le__, scores))  # C loops: a million scores in milliseconds
        self.high_count += sum(map(high.__le__, scores))

    def merge(self, other: GroupStats) -> None:
        """Add another group's totals."""
        self.n += other.n
        self.sums.extend(other.sums)
        self.squares.extend(other.squares)
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        self.top_count += other.top_count
        self.high_count += other.high_count
        self.failed += other.failed

    @property
    def mean(self) -> float | None:
        """Mean of the scores (None without any)."""
        return math.fsum(self.sums) / self.n if self.n else None

    def cells(self) -> tuple[Cell, ...]:
        """count, failed, mean, std, min, max, top_count, top_share, high_count, high_share."""
        if self.n == 0:
            return (0, self.failed, None, None, None, None, 0, None, 0, None)
        mean = math.fsum(self.sums) / self.n
        variance = max(0.0, math.fsum(self.squares) / self.n - mean * mean)
        std = math.sqrt(variance)
        if std < 1e-6:  # the rounding residue of equal scores
            std = 0.0
        return (
            self.n,
            self.failed,
            mean,
            std,
            self.low,
            self.high,
            self.top_count,
            self.top_count / self.n,
            self.high_count,
            self.high_count / self.n,
        )


# -- the index every table is built from ---------------------------------------------------------


@dataclass(slots=True)
class EssayScores:
    """One essay's evaluations: scores per (evaluation template, judge), and failures."""

    first: ScoreRow
    """Any row of the essay: where its draft, combo, templates and model are read from."""
    cells: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """Scores per (evaluation template, judge), in key order (rows are sorted), replicates in order."""
    failed: int = 0
    replicated: bool = False
    """True when some (template, judge) scored it more than once."""
    _means: dict[tuple[str, str], float] | None = None

    def means(self) -> dict[tuple[str, str], float]:
        """Mean over replicates per (evaluation template, judge), in key order (computed once)."""
        if self._means is None:
            self._means = {
                key: (v[0] if len(v) == 1 else math.fsum(v) / len(v)) for key, v in self.cells.items()
            }
        return self._means


def _move(
    source: defaultdict[tuple[str, str], list[float]],
    target: defaultdict[tuple[str, ...], list[float]],
    prefix: tuple[str, ...],
) -> None:
    """Append ``source``'s lists to ``target`` under ``prefix`` + their key, and empty ``source``."""
    for key, values in source.items():
        target[prefix + key].extend(values)
    source.clear()


_NO_ROW = ScoreRow("", "", "", "", "", "", "", 0, "", "", (), None)

FINE_FIELDS = (
    "draft_template",
    "generation_model",
    "essay_template",
    "evaluation_template",
    "evaluation_model",
)
"""What the index groups by (every grouping of ``final_results`` but the combo is a roll-up of it)."""


class Scores:
    """Score rows in table order, with the per-essay and per-group indexes all tables share.

    Building it visits every row once; the tables then work from the indexes.
    """

    def __init__(self, rows: Iterable[ScoreRow], *, presorted: bool = False) -> None:
        self.rows: list[ScoreRow] = list(rows)
        if not presorted:
            self.rows.sort()
        self.essays: dict[str, EssayScores] = {}
        """Essay gen_id -> its scores, in table order."""
        self.score_max: dict[str, float] = {}
        """Evaluation template -> its maximum, as the rows say."""
        self.kinds: dict[str, int] = {}
        """Failed evaluations per error kind."""
        fine: defaultdict[tuple[str, ...], list[float]] = defaultdict(list)
        fine_failed: defaultdict[tuple[str, ...], int] = defaultdict(int)
        by_combo: dict[str, defaultdict[str, list[float]]] = {}
        combo_failed: defaultdict[str, int] = defaultdict(int)
        # Rows are sorted by (draft template, model, essay template, combo, essay): scores are
        # gathered per pair for the current prefix and moved to the index when it changes
        # (cheaper than a 5-part key per row); per combo, per template.
        here: defaultdict[tuple[str, str], list[float]] = defaultdict(list)
        combo_here: defaultdict[str, list[float]] = defaultdict(list)
        essays, maxima, kinds = self.essays, self.score_max, self.kinds
        current_id: str | None = None
        essay = EssayScores(_NO_ROW)
        cells = essay.cells
        prefix: tuple[str, ...] = ()
        combo = "\0no combo yet"  # a value no combo id has, so the first row always sets it
        for row in self.rows:  # one pass; the hot loop of every table, so indexes not names
            if row[4] != current_id:  # an essay's rows are adjacent (sorted by it)
                current_id = row[4]
                found = essays.get(current_id)
                if found is None:
                    found = essays[current_id] = EssayScores(row)
                essay, cells = found, found.cells
                if row[:3] != prefix:
                    _move(here, fine, prefix)
                    prefix = row[:3]
                if row[3] != combo:
                    combo = row[3]
                    found_combo = by_combo.get(combo)
                    if found_combo is None:
                        found_combo = by_combo[combo] = defaultdict(list)
                    combo_here = found_combo
            score = row[11]
            pair = row[5:7]
            if pair[0] not in maxima:
                maxima[pair[0]] = row[12]
            if score is None:
                essay.failed += 1
                fine_failed[prefix + pair] += 1
                combo_failed[combo] += 1
                kind = row[13] or "unknown"
                kinds[kind] = kinds.get(kind, 0) + 1
                continue
            found_cell = cells.get(pair)
            if found_cell is None:
                cells[pair] = [score]
            else:
                found_cell.append(score)
                essay.replicated = True
            here[pair].append(score)
            combo_here[pair[0]].append(score)
        _move(here, fine, prefix)
        combos = {(c, t): values for c, templates in by_combo.items() for t, values in templates.items()}
        self._fine = self._stats(fine, fine_failed, template_at=3)
        self._combos: dict[str, GroupStats] = {}
        for (combo_id, _), stats in self._stats(combos, {}, template_at=1).items():
            self._combos.setdefault(combo_id, GroupStats()).merge(stats)
        for combo_id, failed in combo_failed.items():
            self._combos.setdefault(combo_id, GroupStats()).failed += failed
        self._scales: dict[tuple[str, ...], float | None] = {}

    def _stats(
        self,
        lists: Mapping[tuple[str, ...], list[float]],
        failed: Mapping[tuple[str, ...], int],
        *,
        template_at: int,
    ) -> dict[tuple[str, ...], GroupStats]:
        out = {}
        for key in lists.keys() | failed.keys():
            stats = GroupStats(failed=failed.get(key, 0))
            stats.add_scores(lists.get(key, []), self.score_max.get(key[template_at], SCORE_MAX_DEFAULT))
            out[key] = stats
        return out

    def __len__(self) -> int:
        return len(self.rows)

    def shared_scale(self, templates: tuple[str, ...]) -> float | None:
        """The maximum these evaluation templates share, or None when they differ (memoised)."""
        found = self._scales.get(templates, -1.0)
        if found == -1.0:
            scales = {self.score_max.get(t, SCORE_MAX_DEFAULT) for t in templates}
            found = self._scales[templates] = scales.pop() if len(scales) == 1 else None
        return found

    @property
    def scored(self) -> int:
        """Rows with a score."""
        return len(self.rows) - self.failed

    @property
    def failed(self) -> int:
        """Rows without a score."""
        return sum(self.kinds.values())

    def failures_by_kind(self) -> dict[str, int]:
        """Failed evaluations per error kind, most frequent first."""
        return dict(sorted(self.kinds.items(), key=lambda item: (-item[1], item[0])))

    def columns(self) -> list[tuple[str, str]]:
        """Every (evaluation template, judge) pair that has at least one score, sorted."""
        return sorted({(key[3], key[4]) for key, stats in self._fine.items() if stats.n})

    def groups(self, fields: Sequence[str]) -> dict[tuple[str, ...], GroupStats]:
        """Totals per value of ``fields`` (from :data:`FINE_FIELDS`, or ``("combo_id",)``)."""
        if tuple(fields) == ("combo_id",):
            return {(combo,): stats for combo, stats in self._combos.items()}
        positions = [FINE_FIELDS.index(f) for f in fields]
        out: dict[tuple[str, ...], GroupStats] = {}
        for key, stats in self._fine.items():
            group = tuple(key[p] for p in positions)
            total = out.get(group)
            if total is None:
                total = out[group] = GroupStats()
            total.merge(stats)
        return out


def column_name(evaluation_template: str, evaluation_model: str) -> str:
    """``<evaluation_template>__<judge_model>``: one column of the per-essay tables."""
    return f"{evaluation_template}__{evaluation_model}"


# -- tables --------------------------------------------------------------------------------------

AGGREGATED_SCORES = "parsing/aggregated_scores.csv"
GENERATION_SCORES = "summary/generation_scores.csv"
FINAL_RESULTS = "summary/final_results.csv"
PERFECT_SCORE_PATHS = "summary/perfect_score_paths.csv"
JUDGE_AGREEMENT = "analysis/judge_agreement.csv"
VARIANCE_ANALYSIS = "analysis/variance_analysis.csv"
CROSS_EXPERIMENT = "evaluation_scores_by_template_model.csv"

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


class _Joined(dict[tuple[str, ...], str]):
    """``;``-joined text of the (few, shared) concept and cohort tuples, made once each."""

    def __missing__(self, key: tuple[str, ...]) -> str:
        text = self[key] = ";".join(key)
        return text


class _ScoreView:
    """``aggregated_scores`` rows made on the fly: a million rows are never held twice."""

    __slots__ = ("_rows",)

    def __init__(self, rows: Sequence[ScoreRow]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[tuple[Cell, ...]]:
        joined = _Joined()
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
                f"gens/essay/{r.essay_gen_id}/parsed.txt" if r.essay_gen_id else "",
                f"gens/evaluation/{r.gen_id}/raw.txt",
            )

    def __len__(self) -> int:
        return len(self._rows)


def aggregated_scores(scores: Scores) -> Table:
    """``parsing/aggregated_scores.csv``: every finished evaluation, failed ones with their error."""
    return Table(AGGREGATED_SCORES, SCORE_COLUMNS, _ScoreView(scores.rows), text=True)


ESSAY_COLUMNS = (
    "essay_gen_id",
    "draft_gen_id",
    "combo_id",
    "concept_ids",
    "draft_template",
    "essay_template",
    "generation_model",
)


def _essay_cells(essay: EssayScores, joined: _Joined) -> tuple[str, ...]:
    r = essay.first
    return (
        r.essay_gen_id,
        r.draft_gen_id,
        r.combo_id,
        joined[r.concept_ids],
        r.draft_template,
        r.essay_template,
        r.generation_model,
    )


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
    joined = _Joined()
    rows = []
    for essay in scores.essays.values():
        cells: list[Cell] = list(_essay_cells(essay, joined))
        means = essay.means()
        for key in keys:
            cells.append(_num(means.get(key)))
            if key in replicated:
                values = essay.cells.get(key)
                if values:
                    cells.extend((str(len(values)), format_number(min(values)), format_number(max(values))))
                else:
                    cells.extend(("0", "", ""))
        total = _num(math.fsum(means.values())) if means else ""
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
    of it. ``overall`` is written even when there is nothing to summarise (count 0).
    """
    rows: list[tuple[Cell, ...]] = []
    for analysis, fields in GROUPINGS:
        groups = scores.groups(fields)
        if not fields and not groups:
            groups = {(): GroupStats()}
        for group in sorted(groups):
            named = dict(zip(fields, group, strict=True))
            keys = tuple(named.get(c, "") for c in FINAL_KEY_COLUMNS)
            rows.append((analysis, *keys, *groups[group].cells()))
    return Table(FINAL_RESULTS, ("analysis_type", *FINAL_KEY_COLUMNS, *STAT_COLUMNS), tuple(rows))


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
    joined = _Joined()
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
        if r.score is not None and r.score >= r.score_max - _EPS
    )
    return Table(PERFECT_SCORE_PATHS, PERFECT_COLUMNS, rows, text=True)


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
        _num(s.cv),
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
                values = tuple((str(i), v) for i, v in enumerate(replicate_scores, start=1))
                yield Comparison(
                    "replicates", template, judge, values, maxima.get(template, SCORE_MAX_DEFAULT)
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
    joined = _Joined()
    for essay in scores.essays.values():
        head: tuple[str, ...] | None = None
        path = ""
        for c in comparisons(scores, essay):
            if head is None:
                head = _essay_cells(essay, joined)
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
    joined = _Joined()
    rows = []
    for essay in scores.essays.values():
        means = essay.means()
        rows.append(
            (
                *_essay_cells(essay, joined),
                joined[essay.first.cohorts],
                *(_num(means.get(k)) for k in keys),
                str(sum(len(v) for v in essay.cells.values())),
                str(essay.failed),
                essay.first.essay_path,
            )
        )
    return Table(CROSS_EXPERIMENT, header, tuple(rows), text=True)


def build_tables(scores: Scores, *, cross_experiment: bool = False) -> tuple[Table, ...]:
    """Every table, in the order they are written; the cross-experiment pivot only when asked."""
    judges, variance = agreement_tables(scores)
    tables = [
        aggregated_scores(scores),
        generation_scores(scores),
        final_results(scores),
        perfect_score_paths(scores),
        judges,
        variance,
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


def top_essays(scores: Scores, n: int = 10) -> list[TopEssay]:
    """The ``n`` essays with the highest ``sum_scores`` (ties: higher mean, then essay id)."""
    ranked = []
    for essay_id, essay in scores.essays.items():
        means = essay.means()
        if means:
            total = math.fsum(means.values())
            ranked.append((-total, -total / len(means), essay_id))
    out = []
    for neg_total, neg_mean, essay_id in sorted(ranked)[:n]:
        r = scores.essays[essay_id].first
        out.append(
            TopEssay(
                essay_gen_id=essay_id,
                sum_scores=-neg_total,
                scored_columns=len(scores.essays[essay_id].means()),
                mean=-neg_mean,
                draft_template=r.draft_template,
                essay_template=r.essay_template,
                generation_model=r.generation_model,
                combo_id=r.combo_id,
                essay_path=r.essay_path,
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
