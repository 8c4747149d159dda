"""Costs: what the LLM calls of a scope cost and how long they took, as one table (pure).

``summary/costs.csv`` has one row per (stage, template, model), then a total row per stage, then
one overall row. The shell (:mod:`daydreamd.storage.costs`) sums the ``attempts`` of the scope
per group in SQL and hands each group over as a :class:`CallGroup` with its calls' latencies;
this module adds the totals, takes the percentiles and formats the cells.

Conventions, fixed here and pinned by tests:

* **Calls** are attempts: every call sent, failed and retried ones included (a 429 then an ok is
  two calls, one failed), because each was sent and may have been paid for.
* **Unknown is empty, never 0.** ``cost_usd`` sums the costs the provider reported and is empty
  when no call of the row reported one; ``unpriced_calls`` counts the calls without a reported
  cost (a failed call that reported no usage is one of them), and ``cost_complete`` is ``true``
  only when there are none, so a partial sum is never mistaken for the whole. Token columns sum
  what was reported and are empty when nothing was.
* **Latency** is ``finished_at - started_at`` of each call, in seconds; ``p50`` and ``p95`` are
  *nearest-rank* percentiles (the value at rank ceil(p/100 x n) of the sorted latencies: always
  one of the observed values, no interpolation).
* **generations** counts distinct gen_ids with at least one call. A generation's calls all carry
  its own model (the pool records the generation's model with each attempt), so it is in exactly
  one group, and a total's ``generations`` is the sum of its groups'.
* Copy-mode essays make no call and have no row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import chain

from daydreamd.core.stages import Stage
from daydreamd.core.table import Cell, Table, format_optional

COSTS = "summary/costs.csv"
"""The table's path relative to the reports folder."""

COST_COLUMNS = (
    "analysis_type",
    "stage",
    "template_id",
    "llm_model_id",
    "calls",
    "ok_calls",
    "failed_calls",
    "generations",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unpriced_calls",
    "cost_complete",
    "latency_p50_s",
    "latency_p95_s",
)
BY_TEMPLATE_MODEL = "by_template_model"
STAGE_TOTAL = "stage_total"
OVERALL = "overall"
"""The ``analysis_type`` of a group row, a stage's total and the overall total."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallGroup:
    """The calls of one (stage, template, model), summed; sums are None when no call reported a value."""

    stage: str
    template_id: str
    llm_model_id: str
    calls: int
    ok_calls: int
    generations: int
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost_usd: float | None = None
    priced_calls: int = 0
    """Calls that reported a cost (the others make the cost incomplete)."""
    latencies_s: Sequence[float] = ()
    """Each call's seconds, in any order."""


def nearest_rank(ordered: Sequence[float], percent: int) -> float | None:
    """The nearest-rank ``percent``-th percentile of ascending ``ordered`` (None when empty).

    Rank ceil(percent/100 x n), counted from 1, in integer arithmetic (no float rounding to reason
    about): the value is always one that was observed, which an interpolated percentile is not.
    """
    n = len(ordered)
    if n == 0:
        return None
    rank = max(1, -(-percent * n // 100))
    return ordered[rank - 1]


def _add(values: Iterable[int | None]) -> int | None:
    """The sum of the reported values; None when none was reported."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _add_cost(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return math.fsum(known) if known else None


def combine(groups: Sequence[CallGroup], *, stage: str = "") -> CallGroup:
    """One group that holds every call of ``groups`` (a stage's total, or the overall one)."""
    return CallGroup(
        stage=stage,
        template_id="",
        llm_model_id="",
        calls=sum(g.calls for g in groups),
        ok_calls=sum(g.ok_calls for g in groups),
        generations=sum(g.generations for g in groups),
        prompt_tokens=_add(g.prompt_tokens for g in groups),
        completion_tokens=_add(g.completion_tokens for g in groups),
        reasoning_tokens=_add(g.reasoning_tokens for g in groups),
        cost_usd=_add_cost(g.cost_usd for g in groups),
        priced_calls=sum(g.priced_calls for g in groups),
        latencies_s=sorted(chain.from_iterable(g.latencies_s for g in groups)),
    )


def format_usd(value: float | None) -> str:
    """Dollars with up to 6 decimals (a cheap call costs a few millionths), '' when unknown."""
    if value is None or not math.isfinite(value):
        return ""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def cost_row(analysis_type: str, group: CallGroup, ordered: Sequence[float]) -> tuple[Cell, ...]:
    """The cells of one row; ``ordered`` is the group's latencies, sorted."""
    unpriced = group.calls - group.priced_calls
    return (
        analysis_type,
        group.stage,
        group.template_id,
        group.llm_model_id,
        group.calls,
        group.ok_calls,
        group.calls - group.ok_calls,
        group.generations,
        group.prompt_tokens,
        group.completion_tokens,
        group.reasoning_tokens,
        format_usd(group.cost_usd),
        unpriced,
        "true" if unpriced == 0 else "false",
        format_optional(nearest_rank(ordered, 50)),
        format_optional(nearest_rank(ordered, 95)),
    )


def stage_key(stage: str) -> tuple[int, str]:
    """Stages in flow order (draft, essay, evaluation), any other after them by name."""
    order = {str(s): i for i, s in enumerate(Stage)}
    return order.get(stage, len(order)), stage


def costs_table(groups: Iterable[CallGroup]) -> Table:
    """``summary/costs.csv``: each stage's groups (by template, then model) and its total, then overall.

    No calls, no rows (the header alone): there is nothing to total, and an overall row of zeros
    would read as "free" rather than "nothing was called".
    """
    by_stage: dict[str, list[CallGroup]] = {}
    for group in groups:
        by_stage.setdefault(group.stage, []).append(group)
    rows: list[tuple[Cell, ...]] = []
    stage_totals = []
    for stage in sorted(by_stage, key=stage_key):
        members = [
            replace(g, latencies_s=sorted(g.latencies_s))  # sorted runs: the totals' sorts merge them
            for g in sorted(by_stage[stage], key=lambda g: (g.template_id, g.llm_model_id))
        ]
        for group in members:
            rows.append(cost_row(BY_TEMPLATE_MODEL, group, group.latencies_s))
        total = combine(members, stage=stage)
        stage_totals.append(total)
        rows.append(cost_row(STAGE_TOTAL, total, total.latencies_s))
    if stage_totals:
        overall = combine(stage_totals)
        rows.append(cost_row(OVERALL, overall, overall.latencies_s))
    return Table(COSTS, COST_COLUMNS, tuple(rows))
