"""Curated inputs: a named cohort's essays chosen from an earlier cohort's results (pure).

"Judge the top 20 essays again, with new judges" is a choice worth keeping: made by hand it can
be neither reproduced nor reviewed. This module makes it from recorded scores and says it as a
cohort spec the service reads like any other (``daydreamctl cohort new`` writes it): essays are
ranked by the mean of one evaluation template's scores (:func:`rank_essays`, deterministic
tie-breaks), the top ones are pinned by their coordinates in ``items/top_essays.csv``
(:func:`items_csv`), and ``config.yaml`` (:func:`spec_text`) binds them in one tuple and says in
its comments how they were chosen (source cohort, template, judge, time, the ranking).

Scores, coordinates and membership come from the run state, read at the edge
(:mod:`daydreamd.storage.rankings`); writing and checking the folder is the CLI's. Standard
library only: the YAML is written by hand, so its comments stay in it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from daydreamd.core.errors import DaydreamError

ITEMS_FILE = "items/top_essays.csv"
"""The spec's include of the chosen essays, relative to the spec folder."""
TUPLE_NAME = "top_essays"
ITEM_COLUMNS = (
    "essay_gen_id",
    "combo_id",
    "draft_template",
    "draft_llm",
    "draft_replicate",
    "essay_template",
    "essay_llm",
    "essay_replicate",
)
"""The columns of ``items/top_essays.csv``: everything that places an essay, draft coordinates included."""


class CurationError(DaydreamError):
    """The spec cannot be written as asked; the message says what is wrong and what to do."""


@dataclass(frozen=True, slots=True)
class Criterion:
    """What ranks the essays: one evaluation template's scores, of one judge or of all."""

    template: str
    judge: str | None

    @classmethod
    def parse(cls, text: str) -> Criterion:
        """``T`` or ``T:J`` (``--by``), split at the first ``:`` (a judge's id may hold more)."""
        template, sep, judge = text.partition(":")
        if not template or (sep and not judge):
            raise CurationError(
                f"--by {text!r} is not EVAL_TEMPLATE or EVAL_TEMPLATE:JUDGE, e.g. rigor-judge"
            )
        return cls(template, judge or None)

    def describe(self) -> str:
        """How messages and the spec's comments name it, e.g. ``rigor-judge (all judges)``."""
        return f"{self.template} ({'judge ' + self.judge if self.judge else 'all judges'})"


@dataclass(frozen=True, slots=True)
class Ranked:
    """An essay's place in the ranking: the mean of its scores that count, and how many there are."""

    essay_gen_id: str
    mean: float
    evaluations: int


@dataclass(frozen=True, slots=True)
class Essay:
    """A chosen essay's coordinates in the run state: its own and its draft's."""

    essay_gen_id: str
    combo_id: str
    draft_template: str
    draft_llm: str
    draft_replicate: int
    essay_template: str
    essay_llm: str
    essay_replicate: int

    def row(self) -> tuple[str, ...]:
        """Its row of ``items/top_essays.csv``, in :data:`ITEM_COLUMNS` order."""
        return tuple(str(getattr(self, column)) for column in ITEM_COLUMNS)


@dataclass(frozen=True, slots=True)
class Source:
    """What the source cohort offers: the (template, judge) pairs used, and the scores that count."""

    cohort_id: str
    used: frozenset[tuple[str, str]]
    scores: tuple[tuple[str, float], ...]


# -- the ranking -----------------------------------------------------------------------------------


def check_criterion(source: Source, criterion: Criterion) -> None:
    """The template (and judge) of ``--by`` must have been used by the source cohort's evaluations."""
    templates = sorted({t for t, _ in source.used})
    if criterion.template not in templates:
        raise CurationError(
            f"evaluation template {criterion.template!r} was never used in cohort {source.cohort_id} "
            f"(its evaluations use: {', '.join(templates) or 'none'}); pass one of them to --by"
        )
    judges = sorted(j for t, j in source.used if t == criterion.template)
    if criterion.judge is not None and criterion.judge not in judges:
        raise CurationError(
            f"judge {criterion.judge!r} never scored {criterion.template!r} in cohort {source.cohort_id} "
            f"(its judges there: {', '.join(judges)}); use --by {criterion.template}:<one of them>, "
            f"or --by {criterion.template} for all judges"
        )


def rank_source(source: Source, criterion: Criterion) -> list[Ranked]:
    """The source cohort's essays ranked by ``criterion``; an error when it cannot rank any.

    A criterion the cohort never used is refused before ranking (:func:`check_criterion`), so an
    empty ranking means only that no such evaluation is done and scored yet.
    """
    check_criterion(source, criterion)
    ranked = rank_essays(source.scores)
    if not ranked:
        raise CurationError(
            f"no essay of cohort {source.cohort_id} has a done, scored evaluation by "
            f"{criterion.describe()}; finish those evaluations first (daydreamctl status), "
            "or rank by another template or judge"
        )
    return ranked


def rank_essays(scores: Iterable[tuple[str, float]]) -> list[Ranked]:
    """Essays ranked by (essay gen_id, score) pairs: mean descending, then more scores, then gen_id.

    The tie-breaks make the choice deterministic: among equal means the essay judged more often
    is the surer one, and the gen_id settles the rest, so the same run state always gives the
    same spec.
    """
    by_essay: dict[str, list[float]] = {}
    for essay, score in scores:
        by_essay.setdefault(essay, []).append(score)
    ranked = [Ranked(essay, math.fsum(s) / len(s), len(s)) for essay, s in by_essay.items()]
    ranked.sort(key=lambda r: (-r.mean, -r.evaluations, r.essay_gen_id))
    return ranked


def ranking_lines(ranked: Sequence[Ranked], prefix: str) -> list[str]:
    """The ranking as an aligned table (for the spec's comments and the terminal)."""
    width = max([len("essay_gen_id"), *(len(r.essay_gen_id) for r in ranked)])
    lines = [f"{prefix}rank  {'essay_gen_id':<{width}}  mean score  evaluations"]
    for place, r in enumerate(ranked, start=1):
        lines.append(f"{prefix}{place:>4}  {r.essay_gen_id:<{width}}  {r.mean:>10.2f}  {r.evaluations:>11}")
    return lines


# -- the spec's text -------------------------------------------------------------------------------


def command_line(
    name: str,
    *,
    top: int,
    by: str,
    source: str,
    evaluation_templates: Sequence[str],
    judges: Sequence[str],
) -> str:
    """The command that writes this spec again, source cohort spelled out (for the spec's comments)."""
    return shlex.join(
        ["daydreamctl", "cohort", "new", name, "--from-top", str(top), "--by", by, "--cohort", source]
        + [arg for t in evaluation_templates for arg in ("--evaluation-template", t)]
        + [arg for j in judges for arg in ("--judge", j)]
    )


def spec_mapping(evaluation_templates: Sequence[str], judges: Sequence[str]) -> dict[str, Any]:
    """What ``config.yaml`` must read back as (checked after writing it)."""
    axes: dict[str, list[str]] = {}
    if evaluation_templates:
        axes["evaluation_template"] = list(evaluation_templates)
    if judges:
        axes["evaluation_llm"] = list(judges)
    tuple_rule = {"axes": list(ITEM_COLUMNS), "items": f"@file:{ITEMS_FILE}"}
    return {"axes": axes, "rules": {"tuples": {TUPLE_NAME: tuple_rule}}}


def spec_text(
    *,
    source: str,
    criterion: Criterion,
    chosen: Sequence[Ranked],
    requested: int,
    when: str,
    command: str,
    evaluation_templates: Sequence[str],
    judges: Sequence[str],
) -> str:
    """``config.yaml``, written by hand so its comments (how the essays were chosen) stay in it."""
    lines = [
        f"# Re-judge the top {len(chosen)} essays of cohort {source} by {criterion.describe()}, "
        f"chosen {when} by daydreamctl cohort new.",
    ]
    if len(chosen) < requested:
        lines.append(f"# {requested} were asked for; only {len(chosen)} essays had a scored evaluation.")
    lines.append(f"# command: {command}")
    lines += ranking_lines(chosen, "# ")
    if evaluation_templates or judges:
        lines.append("axes:")
        if evaluation_templates:
            lines.append(f"  evaluation_template: {_flow(evaluation_templates)}")
        if judges:
            lines.append(f"  evaluation_llm: {_flow(judges)}")
    else:
        lines.append("axes: {}")
    lines += [
        "rules:",
        "  tuples:",
        f"    {TUPLE_NAME}:",
        f"      axes: [{', '.join(ITEM_COLUMNS)}]",
        f"      items: '@file:{ITEMS_FILE}'",
    ]
    return "\n".join(lines) + "\n"


def items_csv(essays: Sequence[Essay]) -> str:
    """``items/top_essays.csv``: a header, then one row per chosen essay in rank order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ITEM_COLUMNS)
    writer.writerows(essay.row() for essay in essays)
    return out.getvalue()


def _flow(values: Sequence[str]) -> str:
    """A YAML flow list of ids, each double-quoted (JSON is YAML): unquoted, YAML 1.1 would read an id
    such as ``no``, ``017`` or ``2024-05-01`` as a boolean, a number or a date."""
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"
