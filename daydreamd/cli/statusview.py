"""The terminal view of ``daydreamctl status``: one line per stage with a progress bar (rich).

Built from the ``/v1/status`` document alone, so the same view serves ``status``,
``status --watch`` and tests that render a known state to text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

STAGES = ("draft", "essay", "evaluation")


def _eta(remaining: int, rate: float | None) -> str:
    if remaining <= 0:
        return "-"
    if not rate:
        return "?"
    minutes = remaining / rate
    return f"{minutes:.0f}m" if minutes < 120 else f"{minutes / 60:.1f}h"


def stage_table(status: Mapping[str, Any]) -> Table:
    """Progress per stage: done / approved, a bar, rate, ETA, waiting work, failures by kind."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column, justify in (
        ("stage", "left"),
        ("progress", "left"),
        ("done/approved", "right"),
        ("rate/min", "right"),
        ("eta", "right"),
        ("running", "right"),
        ("pending", "right"),
        ("failed", "left"),
    ):
        numeric = column not in ("stage", "progress", "failed")
        table.add_column(column, justify=justify, no_wrap=numeric, min_width=len(column) if numeric else None)  # type: ignore[arg-type]
    rates = status.get("rates_per_minute") or {}
    failures = status.get("failures") or {}
    for stage in STAGES:
        counts = (status.get("stages") or {}).get(stage, {})
        done, failed = counts.get("done", 0), counts.get("failed", 0)
        approved = done + failed + counts.get("queued", 0) + counts.get("running", 0)
        bar = ProgressBar(total=max(approved, 1), completed=done, width=24)
        kinds = failures.get(stage) or {}
        failed_text = Text(
            ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "0", style="red" if kinds else ""
        )
        table.add_row(
            stage,
            bar,
            f"{done:,}/{approved:,}",
            f"{rates[stage]:g}" if stage in rates else "-",
            _eta(approved - done - failed, rates.get(stage)),
            f"{counts.get('running', 0):,}",
            f"{counts.get('pending', 0):,}",
            failed_text,
        )
    return table


def model_table(status: Mapping[str, Any]) -> Table | None:
    """In-flight calls per model against their current limits."""
    models = status.get("models") or {}
    if not models:
        return None
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for column in ("model", "in flight", "limit", "max", "req/min", "spent"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model, info in sorted(models.items()):
        rpm = info.get("requests_per_minute") or 0
        spent = f"${info.get('cost_usd', 0):,.2f}" + (" + unpriced" if info.get("unpriced_calls") else "")
        paused = " [yellow]paused[/]" if info.get("paused") else ""
        table.add_row(
            f"{model}{paused}",
            str(info.get("in_flight", 0)),
            str(info.get("concurrency", "?")),
            str(info.get("max_concurrency", "?")),
            f"{info.get('requests_last_minute', 0)}/{rpm}"
            if rpm
            else f"{info.get('requests_last_minute', 0)}",
            spent,
        )
    return table


def render_status(status: Mapping[str, Any]) -> RenderableType:
    """The whole view: header, stages, models, budgets, parked or paused work, input problems."""
    pool = status.get("pool") or {}
    header = Text.assemble(
        ("cohort ", "bold"),
        (str(status.get("cohort_id") or "(none yet)"), "cyan"),
        f"   in flight {status.get('in_flight', 0)}/{pool.get('concurrency', '?')}",
        f"   spent ${status.get('spent_usd', 0):,.2f}",
    )
    parts: list[RenderableType] = [header, stage_table(status)]
    models = model_table(status)
    if models is not None:
        parts.append(models)
    notes = []
    if pool.get("paused"):
        notes.append(Text("all work is paused (daydreamctl resume)", style="yellow"))
    for name, info in (pool.get("parked") or {}).items():
        notes.append(
            Text(f"parked after a quota error: {name}, resumes in {info.get('resumes_in_s')} s", style="red")
        )
    for approval, budget in (pool.get("budgets") or {}).items():
        style = "red" if budget.get("exhausted") else ""
        notes.append(
            Text(
                f"approval {approval}: spent ${budget['spent_usd']:,.2f} of ${budget['budget_usd']:,.2f}"
                + (" (budget reached: no new calls)" if budget.get("exhausted") else ""),
                style=style,
            )
        )
    errors = status.get("errors") or []
    if errors:
        notes.append(Text(f"problems in data/1_raw ({len(errors)}):", style="bold red"))
        for e in errors:
            where = f"{e.get('file')}:{e['line']}" if e.get("line") else str(e.get("file"))
            notes.append(
                Text(
                    f"  {where}: {e.get('level')}: {e.get('message')}",
                    style="red" if e.get("level") == "error" else "yellow",
                )
            )
    return Group(*parts, *notes)
