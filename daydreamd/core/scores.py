"""Score rows and the index every results table is built from (pure).

One :class:`ScoreRow` per finished evaluation (done or failed); the shell
(:mod:`daydreamd.storage.scores`) reads them from the run state or from the gens store.
:class:`Scores` sorts them into table order and indexes them in one pass: per essay (its scores
per evaluation template and judge, replicates in order) and per group (exact sums, extremes,
top/high and failed counts). The tables (:mod:`daydreamd.core.results`,
:mod:`daydreamd.core.agreement`) work from these indexes.

**Scales.** Each evaluation template scores on 0..``score_max``: its ``score_max`` column, else the
scale its text asks for (:mod:`daydreamd.core.scales`), else 10. *Top* means a score at the
template's own maximum, *high* a score at or above 80 % of it (:func:`is_top`, :func:`high_floor`).

Performance: rows are NamedTuples (immutable like a frozen dataclass, built in 1.3 s per million
instead of 3.2 s, and sorted by plain tuple order: the field order *is* the table order), and
every row is visited once to build the indexes.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

SCORE_MAX_DEFAULT = 10.0
HIGH_FRACTION = 0.8
"""A *high* score is at or above this fraction of the template's maximum."""
EPS = 1e-9
"""How far below a limit a score may be and still reach it (float rounding)."""


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


def top_floor(score_max: float) -> float:
    """The lowest *top* score on 0..``score_max``: the template's own maximum."""
    return score_max - EPS


def high_floor(score_max: float) -> float:
    """The lowest *high* score on 0..``score_max``: 80 % of the template's maximum."""
    return HIGH_FRACTION * score_max - EPS


def is_top(score: float, score_max: float) -> bool:
    """At the template's own maximum."""
    return score >= top_floor(score_max)


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
        top, high = top_floor(score_max), high_floor(score_max)
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

    def cells(self) -> tuple[int | float | None, ...]:
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

    def __init__(self, rows: Iterable[ScoreRow]) -> None:
        self.rows: list[ScoreRow] = sorted(rows)
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
        combos: dict[tuple[str, ...], list[float]] = {
            (c, t): values for c, templates in by_combo.items() for t, values in templates.items()
        }
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

    def combo_concepts(self) -> dict[str, tuple[str, ...]]:
        """Each combo's concept ids (from the essays: one look per essay, not per score)."""
        found: dict[str, tuple[str, ...]] = {}
        for essay in self.essays.values():
            first = essay.first
            found.setdefault(first.combo_id, first.concept_ids)
        return found

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


VERSION_SEPARATOR = "@"
_TEMPLATE_FIELDS = (
    ("draft", "draft_template"),
    ("essay", "essay_template"),
    ("evaluation", "evaluation_template"),
)


def with_template_versions(
    rows: Sequence[ScoreRow], versions: Mapping[str, Mapping[tuple[str, str], str]]
) -> list[ScoreRow]:
    """``rows`` with every template that has several versions among them named by its version:
    ``novelty-judge@3f2a9c1d`` (the first 8 hex of its text's SHA-256), so no table pools two
    versions of a template. A row's versions come from the manifest of a cohort that holds it
    (``versions``: cohort -> (stage, template id) -> SHA-256; every cohort holding a generation
    has the same versions, which are part of its gen_id). Templates with one version, and rows
    whose version is unknown (in no cohort with a manifest), keep the plain id."""

    def version(row: ScoreRow, stage: str, template: str) -> str | None:
        for cohort in row.cohorts:
            found = versions.get(cohort, {}).get((stage, template))
            if found is not None:
                return found
        return None

    in_manifests: dict[tuple[str, str], set[str]] = {}
    for cohort_versions in versions.values():
        for key, sha in cohort_versions.items():
            in_manifests.setdefault(key, set()).add(sha)
    if all(len(shas) == 1 for shas in in_manifests.values()):
        return list(rows)  # one version of everything: nothing to tell apart (no pass over the rows)
    seen: dict[tuple[str, str], set[str]] = {}
    for row in rows:
        for stage, field_name in _TEMPLATE_FIELDS:
            template = getattr(row, field_name)
            found = version(row, stage, template)
            if found is not None:
                seen.setdefault((stage, template), set()).add(found)
    several = {key for key, shas in seen.items() if len(shas) > 1}
    if not several:
        return list(rows)

    def named(row: ScoreRow, stage: str, template: str) -> str:
        found = version(row, stage, template) if (stage, template) in several else None
        return template if found is None else f"{template}{VERSION_SEPARATOR}{found[:8]}"

    return [
        row._replace(
            draft_template=named(row, "draft", row.draft_template),
            essay_template=named(row, "essay", row.essay_template),
            evaluation_template=named(row, "evaluation", row.evaluation_template),
        )
        for row in rows
    ]


def column_name(evaluation_template: str, evaluation_model: str) -> str:
    """``<evaluation_template>__<judge_model>``: one column of the per-essay tables."""
    return f"{evaluation_template}__{evaluation_model}"
