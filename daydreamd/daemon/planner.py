"""Gathering what a plan needs from the run state and the gens store (the shell around ``estimates``)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio.to_thread

from daydreamd.core.config import Settings
from daydreamd.core.control import ApprovalRequest
from daydreamd.core.errors import TemplateError
from daydreamd.core.estimates import (
    GroupEstimate,
    GroupInputs,
    Observed,
    estimate_group,
    observed_table,
    plan_hash,
    summarize,
)
from daydreamd.core.jobs import Jobs
from daydreamd.core.pricing import configured_prices, price_for
from daydreamd.core.prompts import normalize_newlines, render_prompt
from daydreamd.core.stages import PARENT_STAGE, Stage, State
from daydreamd.core.templates import PromptRenderer
from daydreamd.core.tokens import CHARS_PER_TOKEN, estimate_tokens
from daydreamd.storage.gens import GensStore
from daydreamd.storage.store import Store, row_generation

SAMPLE = 20
"""Prompts rendered per (stage, template, model) to estimate input size."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanContext:
    """What a plan is made against: the run state, the current cohort and its jobs, the settings."""

    store: Store
    cohort_id: str | None
    scope: str | None = None
    """The cohort in the run state: None for the default cohort, else a named cohort."""
    jobs: Jobs | None
    settings: Settings
    renderer: PromptRenderer
    """The service's rendering processes: a plan renders sample prompts under the same limits."""


async def make_plan(context: PlanContext, request: ApprovalRequest) -> dict[str, Any]:
    """The plan of ``request`` against the current cohort and run state."""
    store = context.store
    ids = await store.pending_ids(
        stage=request.stage,
        template_id=request.template_id,
        llm_model_id=request.llm_model_id,
        limit=request.limit,
        scope=context.scope,
    )
    rows = await store.rows(ids)
    parents = sorted({row["parent_gen_id"] for row in rows if row["parent_gen_id"]})
    parent_states = await store.states(parents)
    observed = observed_table(await store.usage_by_template_model())
    lines = await anyio.to_thread.run_sync(_estimate, context, rows, parent_states, observed)
    result = summarize(lines, cohort_id=context.cohort_id, hash_=plan_hash(context.cohort_id, ids))
    return {**result, "scope": request.to_dict()}


def _estimate(
    context: PlanContext,
    rows: Sequence[Mapping[str, Any]],
    parent_states: Mapping[str, str],
    observed: Mapping[tuple[str, str, str], Observed],
) -> list[GroupEstimate]:
    groups: dict[tuple[str, str, str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["stage"], row["template_id"], row["llm_model_id"], row["mode"])].append(row)
    gens = GensStore(context.settings.paths.data_dir)
    renderer = context.renderer
    prices = configured_prices(context.settings.prices)
    jobs = context.jobs
    lines = []
    for (stage, template_id, model_id, mode), members in sorted(groups.items()):
        parent_done = [
            r
            for r in members
            if not r["parent_gen_id"] or parent_states.get(r["parent_gen_id"]) == State.DONE
        ]
        template = jobs.template(Stage(stage), template_id) if jobs else None
        inputs = GroupInputs(
            stage=stage,
            template_id=template_id,
            llm_model_id=model_id,
            mode=mode,
            count=len(members),
            blocked=len(members) - len(parent_done),
            rendered_tokens=_rendered(jobs, gens, renderer, parent_done[:SAMPLE]) if mode == "llm" else (),
            template_tokens=len(template.text or "") // CHARS_PER_TOKEN if template else 0,
            parent_tokens=_typical_parent(Stage(stage), observed),
            observed=observed.get((stage, template_id, model_id), Observed()),
            max_tokens=context.settings.stage(Stage(stage)).max_tokens,
            price=price_for(jobs.model(model_id) if jobs else None, prices),
        )
        lines.append(replace(estimate_group(inputs), batch_share=_batch_share(context.settings, model_id)))
    return lines


def _batch_share(settings: Settings, model_id: str) -> float | None:
    """The batch price share of the model's first endpoint that takes batches (None: it has none)."""
    names = settings.batch_endpoints_of(model_id)
    return settings.all_endpoints()[names[0]].batch_discount if names else None


def _rendered(
    jobs: Jobs | None, gens: GensStore, renderer: PromptRenderer, rows: Sequence[Mapping[str, Any]]
) -> list[int]:
    sizes = []
    for row in rows:
        generation = row_generation(row)
        job = jobs.job(generation) if jobs else None
        if job is None:
            continue
        parent_stage = PARENT_STAGE[job.stage]
        parent = gens.read_parsed(parent_stage, generation.parent_gen_id) if parent_stage else None
        if parent_stage is not None and parent is None:
            continue
        try:
            prompt = render_prompt(renderer, job, normalize_newlines(parent) if parent is not None else None)
        except TemplateError:
            continue
        sizes.append(estimate_tokens(prompt))
    return sizes


def _typical_parent(stage: Stage, observed: Mapping[tuple[str, str, str], Observed]) -> float | None:
    """The average observed reply size of the parent stage, for prompts not renderable yet."""
    parent = PARENT_STAGE[stage]
    if parent is None:
        return None
    sizes = [
        o.completion_tokens for (s, _, _), o in observed.items() if s == str(parent) and o.completion_tokens
    ]
    return sum(sizes) / len(sizes) if sizes else None
