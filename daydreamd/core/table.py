"""A results table and how its cells are written (pure).

Every table is a :class:`Table`: a path relative to the reports folder (the constants below), a
header and rows of plain cells. Numbers are written with at most 4 decimals and no trailing
zeros (``7``, ``7.5``, ``7.3333``). The large tables are made of ready-formatted text, so that
a million rows are written in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from daydreamd.core.scores import EssayScores

Cell = str | int | float | None

AGGREGATED_SCORES = "parsing/aggregated_scores.csv"
GENERATION_SCORES = "summary/generation_scores.csv"
FINAL_RESULTS = "summary/final_results.csv"
PERFECT_SCORE_PATHS = "summary/perfect_score_paths.csv"
JUDGE_AGREEMENT = "analysis/judge_agreement.csv"
VARIANCE_ANALYSIS = "analysis/variance_analysis.csv"
CROSS_EXPERIMENT = "evaluation_scores_by_template_model.csv"


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


def format_optional(value: float | None) -> str:
    """'' for None, else :func:`format_number`."""
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


class Joined(dict[tuple[str, ...], str]):
    """``;``-joined text of the (few, shared) concept and cohort tuples, made once each."""

    def __missing__(self, key: tuple[str, ...]) -> str:
        text = self[key] = ";".join(key)
        return text


ESSAY_COLUMNS = (
    "essay_gen_id",
    "draft_gen_id",
    "combo_id",
    "concept_ids",
    "draft_template",
    "essay_template",
    "generation_model",
)


def essay_cells(essay: EssayScores, joined: Joined) -> tuple[str, ...]:
    """The :data:`ESSAY_COLUMNS` of an essay."""
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
