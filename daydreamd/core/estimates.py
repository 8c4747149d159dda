"""Plan estimates: what an approval would start and what it would cost, before anything is spent (pure).

``daemon.planner`` gathers the inputs from the run state and the gens store; everything here is
arithmetic on them.

Estimates per (stage, template, model):

* input tokens: the rendered prompts of a sample of the generations whose inputs exist now
  (about 4 characters a token); otherwise the prompt tokens observed for that template and
  model; otherwise the template's own size plus a typical parent reply;
* output tokens: the average observed for that template and model so far; otherwise
  ``max_tokens`` (an upper bound, and said so);
* dollars: the average reported cost per call when there is one, else tokens x price; a model
  without a price is reported as unknown, never as free.

The plan's hash covers the cohort and exactly the generations it counts, so ``approve --plan``
can refuse an approval that would no longer cover what the plan showed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daydreamd.core.canonical import sha256_hex
from daydreamd.core.pricing import Price


def plan_hash(cohort_id: str | None, gen_ids: Iterable[str]) -> str:
    """16 hex digits over the cohort and the sorted gen_ids a plan covers."""
    return sha256_hex("\n".join([cohort_id or "", *sorted(gen_ids)]))[:16]


@dataclass(slots=True, kw_only=True)
class GroupEstimate:
    """One (stage, template, model) line of a plan."""

    stage: str
    template_id: str
    llm_model_id: str
    mode: str
    count: int = 0
    blocked: int = 0
    """Waiting for a parent that is not done (and may never be, if it fails)."""
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float | None = 0.0
    input_source: str = "none"
    output_source: str = "none"
    price_known: bool = True
    batch_share: float | None = None
    """The batch price as a share of the online one, when the model has an endpoint that takes
    batches (None: it has none, so this line can only run online)."""

    @property
    def batch_usd(self) -> float | None:
        """The line's cost if it runs in batches (None: unknown, or no batch endpoint)."""
        if self.batch_share is None or self.usd is None or self.mode == "copy":
            return None
        return self.usd * self.batch_share

    def to_dict(self) -> dict[str, Any]:
        """JSON shape of one plan line."""
        return {
            "stage": self.stage,
            "template_id": self.template_id,
            "llm_model_id": self.llm_model_id,
            "mode": self.mode,
            "count": self.count,
            "blocked_on_parent": self.blocked,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "usd": None if self.usd is None else round(self.usd, 4),
            "batch_usd": None if self.batch_usd is None else round(self.batch_usd, 4),
            "input_source": self.input_source,
            "output_source": self.output_source,
            "price_known": self.price_known,
        }


@dataclass(slots=True, kw_only=True)
class Observed:
    """What earlier successful calls of one (stage, template, model) used, on average."""

    calls: int = 0
    prompt_tokens: float | None = None
    completion_tokens: float | None = None
    cost: float | None = None


@dataclass(slots=True, kw_only=True)
class GroupInputs:
    """Everything the estimate of one group needs, gathered by the service."""

    stage: str
    template_id: str
    llm_model_id: str
    mode: str
    count: int
    blocked: int
    rendered_tokens: Sequence[int] = ()
    """Token estimates of the prompts that could be rendered now (a sample)."""
    template_tokens: int = 0
    parent_tokens: float | None = None
    """Typical size of a parent's reply, for prompts that cannot be rendered yet."""
    observed: Observed = field(default_factory=Observed)
    max_tokens: int = 0
    price: Price | None = None


def estimate_group(inputs: GroupInputs) -> GroupEstimate:
    """The estimate of one group (see the module docstring for the rules)."""
    line = GroupEstimate(
        stage=inputs.stage,
        template_id=inputs.template_id,
        llm_model_id=inputs.llm_model_id,
        mode=inputs.mode,
        count=inputs.count,
        blocked=inputs.blocked,
    )
    if inputs.mode == "copy" or inputs.count == 0:
        line.input_source = line.output_source = "copy" if inputs.mode == "copy" else "none"
        return line
    per_input, line.input_source = _input_per_call(inputs)
    observed = inputs.observed
    if observed.calls and observed.completion_tokens is not None:
        per_output, line.output_source = observed.completion_tokens, "observed"
    else:
        per_output, line.output_source = float(inputs.max_tokens), "max_tokens (upper bound)"
    line.input_tokens = round(per_input * inputs.count)
    line.output_tokens = round(per_output * inputs.count)
    if observed.calls and observed.cost is not None:
        line.usd = observed.cost * inputs.count
    elif inputs.price is not None:
        line.usd = inputs.price.cost(line.input_tokens, line.output_tokens)
    else:
        line.usd, line.price_known = None, False
    return line


def _input_per_call(inputs: GroupInputs) -> tuple[float, str]:
    if inputs.rendered_tokens:
        return sum(inputs.rendered_tokens) / len(inputs.rendered_tokens), "rendered"
    if inputs.observed.calls and inputs.observed.prompt_tokens is not None:
        return inputs.observed.prompt_tokens, "observed"
    return float(inputs.template_tokens + (inputs.parent_tokens or 0)), "template + typical parent"


def summarize(lines: Sequence[GroupEstimate], *, cohort_id: str | None, hash_: str) -> dict[str, Any]:
    """The plan as JSON: lines, per-stage totals, grand total, and what is unknown."""
    stages: dict[str, dict[str, Any]] = {}
    for line in lines:
        total = stages.setdefault(
            line.stage,
            {"count": 0, "blocked_on_parent": 0, "input_tokens": 0, "output_tokens": 0, "usd": 0.0},
        )
        total["count"] += line.count
        total["blocked_on_parent"] += line.blocked
        total["input_tokens"] += line.input_tokens
        total["output_tokens"] += line.output_tokens
        total["usd"] = None if total["usd"] is None or line.usd is None else total["usd"] + line.usd
    known = [line.usd for line in lines if line.usd is not None]
    unpriced = sorted({line.llm_model_id for line in lines if not line.price_known})
    batchable = any(line.batch_usd is not None for line in lines)
    with_batches = sum(
        line.usd if line.batch_usd is None else line.batch_usd for line in lines if line.usd is not None
    )
    return {
        "plan": hash_,
        "cohort_id": cohort_id,
        "count": sum(line.count for line in lines),
        "lines": [line.to_dict() for line in lines],
        "stages": {
            stage: {**t, "usd": None if t["usd"] is None else round(t["usd"], 4)}
            for stage, t in stages.items()
        },
        "total_usd": round(sum(known), 4) if not unpriced else None,
        "known_usd": round(sum(known), 4),
        "unpriced_models": unpriced,
        "total_batch_usd": round(with_batches, 4) if batchable and not unpriced else None,
    }


def observed_table(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], Observed]:
    """``Store.usage_by_template_model`` rows keyed by (stage, template, model)."""
    return {
        (row["stage"], row["template_id"], row["model"]): Observed(
            calls=row["calls"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            cost=row["cost"],
        )
        for row in rows
    }
