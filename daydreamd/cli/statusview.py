"""The terminal view of ``daydreamctl status``: one line per stage with a progress bar (rich).

Built from the ``/v1/status`` document alone (a :class:`~daydreamd.core.status.ServiceStatus`, or
its JSON), so the same view serves ``status``, ``status --watch`` and tests that render a known
state to text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group, JustifyMethod, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from daydreamd.core.stages import STAGES
from daydreamd.core.status import ServiceStatus, parent_changed_note

Status = ServiceStatus | Mapping[str, Any]
"""A status, or its JSON as the socket answered it."""


def _eta(remaining: int, rate: float | None) -> str:
    if remaining <= 0:
        return "-"
    if not rate:
        return "?"
    minutes = remaining / rate
    return f"{minutes:.0f}m" if minutes < 120 else f"{minutes / 60:.1f}h"


def stage_table(status: Status) -> Table:
    """Progress per stage: done / approved, a bar, rate, ETA, waiting work, failures by kind."""
    status = ServiceStatus.coerce(status)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("stage", "left"),
        ("progress", "left"),
        ("done/approved", "right"),
        ("rate/min", "right"),
        ("eta", "right"),
        ("running", "right"),
        ("pending", "right"),
        ("failed", "left"),
    )
    for column, justify in columns:
        numeric = column not in ("stage", "progress", "failed")
        table.add_column(column, justify=justify, no_wrap=numeric, min_width=len(column) if numeric else None)
    rates = status.rates_per_minute
    for stage in STAGES:
        counts = status.stage(stage)
        done, failed, approved = counts.done, counts.failed, counts.approved
        bar = ProgressBar(total=max(approved, 1), completed=done, width=24)
        kinds = status.failures.get(stage) or {}
        failed_text = Text(
            ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "0", style="red" if kinds else ""
        )
        table.add_row(
            str(stage),
            bar,
            f"{done:,}/{approved:,}",
            f"{rates[stage]:g}" if stage in rates else "-",
            _eta(approved - done - failed, rates.get(stage)),
            f"{counts.running:,}",
            f"{counts.pending:,}",
            failed_text,
        )
    return table


def model_table(status: Status) -> Table | None:
    """In-flight calls per model against their current limits."""
    models = ServiceStatus.coerce(status).models
    if not models:
        return None
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("model", "in flight", "limit", "max", "req/min", "spent"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, info in sorted(models.items()):
        rpm = info.requests_per_minute
        spent = f"${info.cost_usd:,.2f}" + (" + unpriced" if info.unpriced_calls else "")
        paused = " [yellow]paused[/]" if info.paused else ""
        table.add_row(
            f"{model}{paused}",
            str(info.in_flight),
            _known(info.concurrency),
            _known(info.max_concurrency),
            f"{info.requests_last_minute}/{rpm}" if rpm else f"{info.requests_last_minute}",
            spent,
        )
    return table


def endpoint_table(status: Status) -> Table | None:
    """Calls, requests and tokens per endpoint against its own limits (when there are several)."""
    endpoints = ServiceStatus.coerce(status).endpoints
    if len(endpoints) < 2:
        return None
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("endpoint", "in flight", "req/min", "tokens/min", "models"):
        table.add_column(column, justify="left" if column in ("endpoint", "models") else "right")
    for name, info in sorted(endpoints.items()):
        table.add_row(
            name,
            f"{info.in_flight}/{info.concurrency}" if info.concurrency else str(info.in_flight),
            _of(info.requests_last_minute, info.requests_per_minute),
            _of(info.tokens_last_minute, info.tokens_per_minute),
            ", ".join(info.models),
        )
    return table


def batch_table(status: Status) -> Table | None:
    """Batches: how far each got here and at the provider, its counts and age (None: no batches)."""
    batches = ServiceStatus.coerce(status).batches
    if not batches:
        return None
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("batch", "model", "endpoint", "state", "provider", "done", "failed", "age"):
        table.add_column(column, justify="right" if column in ("batch", "done", "failed", "age") else "left")
    for batch in batches:
        table.add_row(
            str(batch.id),
            batch.model,
            batch.endpoint,
            batch.state + (" (retrying)" if batch.problem else ""),
            batch.provider_state or "",
            f"{batch.completed}/{batch.requests}",
            str(batch.failed),
            _age(batch.age_s),
        )
    return table


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _of(used: int, limit: int) -> str:
    return f"{used}/{limit}" if limit else str(used)


def _known(value: object) -> str:
    return "?" if value is None else str(value)


def render_status(status: Status) -> RenderableType:
    """The whole view: header, stages, models, budgets, parked or paused work, input problems."""
    status = ServiceStatus.coerce(status)
    pool = status.pool
    header = Text.assemble(
        ("cohort ", "bold"),
        (status.cohort_id or "(none yet)", "cyan"),
        f"   in flight {status.in_flight or 0}/{_known(pool.concurrency)}",
        f"   spent ${status.spent_usd:,.2f}",
    )
    parts: list[RenderableType] = [header, stage_table(status)]
    for table in (model_table(status), endpoint_table(status), batch_table(status)):
        if table is not None:
            parts.append(table)
    notes = []
    if status.cohort_progress is not None:
        notes.append(Text(status.cohort_progress.describe(), style="bold cyan"))
    if pool.paused:
        notes.append(Text("all work is paused (daydreamctl resume)", style="yellow"))
    for name, parked in pool.parked.items():
        notes.append(
            Text(f"parked after a quota error: {name}, resumes in {parked.resumes_in_s} s", style="red")
        )
    for approval, budget in pool.budgets.items():
        notes.append(
            Text(
                f"approval {approval}: spent ${budget.spent_usd:,.2f} of ${budget.budget_usd:,.2f}"
                + (" (budget reached: no new calls)" if budget.exhausted else ""),
                style="red" if budget.exhausted else "",
            )
        )
    for trouble in pool.troubles:
        notes.append(Text(trouble.describe(), style="bold red"))
    for batch in status.batches:
        if batch.problem:
            notes.append(Text(f"batch {batch.id}: {batch.problem} (trying again)", style="yellow"))
    for stage, count in status.parent_changed.items():
        notes.append(Text(parent_changed_note(stage, count), style="yellow"))
    if status.errors:
        notes.append(Text(f"problems in data/1_raw ({len(status.errors)}):", style="bold red"))
        for e in status.errors:
            where = f"{e.file}:{e.line}" if e.line else (e.file or "1_raw")  # no file: the count of the rest
            notes.append(
                Text(
                    f"  {where}: {e.level}: {e.message}",
                    style="red" if e.level == "error" else "yellow",
                )
            )
    return Group(*parts, *notes)
