"""``daydreamctl``'s live verbs: ``status``, ``approve``, ``revoke``, ``show`` (sync shell).

Each is one request to the running service's socket (``status --watch`` repeats it); the service
decides, the CLI sends and prints. The operating verbs (``plan``, ``pause``, ``retry``...) are in
:mod:`daydreamd.cli.ops`. ``daydreamd.cli.main`` imports this module when one of its verbs is run
and adds them to its group with :func:`register`. Exit codes: 0 ok, 1 the service refused (the
reason is printed), 3 the service is unreachable (the message names the socket tried).

The connection and its errors are :func:`daydreamd.cli.common.service`; the client and rich are
imported inside the verbs, so loading this module stays cheap.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import click

from daydreamd.cli.common import print_json, scope_body, service
from daydreamd.cli.options import (
    CONTEXT,
    STAGE_CHOICE,
    batch_option,
    cohort_option,
    json_option,
    model_option,
    template_option,
)
from daydreamd.core.stages import State
from daydreamd.core.status import (
    ModelStatus,
    PoolStatus,
    ProblemStatus,
    ServiceStatus,
    StageCounts,
    parent_changed_note,
)

if TYPE_CHECKING:
    from daydreamd.cli.common import Context


def register(cli: click.Group) -> None:
    """Add the live verbs to ``cli`` (the ``daydreamctl`` group); calling it twice changes nothing."""
    for command in (status, approve, revoke, show):
        cli.add_command(command)


# -- verbs -------------------------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
@json_option
@click.option(
    "--watch", "-w", is_flag=True, help="Redraw the view live every --interval seconds (Ctrl-C stops)."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2),
    default=1.0,
    show_default=True,
    help="Seconds between redraws.",
)
@click.option(
    "--plain/--rich", "plain", default=None, help="Plain text or the rich view (default: rich on a terminal)."
)
@cohort_option
@click.pass_obj
def status(
    obj: Context, as_json: bool, watch: bool, interval: float, plain: bool | None, cohort: str | None
) -> None:
    """Show the running service: progress per stage, rates, failures, models, spend, input errors.

    Counts: pending (not approved), queued (approved, waiting), running, done, failed, and
    retired (no longer in the cohort). Exits 3 when the service is not running.

    \b
    Examples:
      daydreamctl status
      daydreamctl status --watch
      daydreamctl status --json | jq .stages.essay
      daydreamctl status --cohort rejudge-top5
    """
    path = "/v1/status" + (f"?cohort={quote(cohort)}" if cohort else "")
    with service(obj) as client:
        result = client.get(path)
        if as_json:
            print_json(result)
            return
        use_rich = not plain if plain is not None else (watch or sys.stdout.isatty())
        if not use_rich:
            _print_status(ServiceStatus.from_json(result))
            return
        from rich.console import Console
        from rich.live import Live

        from daydreamd.cli.statusview import render_status

        console = Console()
        if not watch:
            console.print(render_status(result))
            return
        import signal
        import threading

        # Ctrl-C sets a flag the loop checks between redraws instead of raising KeyboardInterrupt
        # wherever it lands: raised inside rich's drawing, it could leave the refresh thread and
        # the view's lock so that the process never exited.
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        with Live(render_status(result), console=console, refresh_per_second=4) as live:
            while not stop.wait(interval):
                live.update(render_status(client.get(path)))


@click.command(context_settings=CONTEXT)
@click.argument("stage", type=STAGE_CHOICE)
@template_option
@model_option
@click.option("--limit", type=click.IntRange(min=1), help="Approve at most N generations (parents first).")
@click.option(
    "--budget-usd",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop starting calls for this approval once its recorded spend would pass this many dollars.",
)
@click.option(
    "--plan", "plan_hash", help="Refuse unless this approval covers exactly what `daydreamctl plan` showed."
)
@cohort_option
@batch_option
@json_option
@click.pass_obj
def approve(
    obj: Context,
    stage: str,
    template_id: str | None,
    llm_model_id: str | None,
    limit: int | None,
    budget_usd: float | None,
    plan_hash: str | None,
    cohort: str | None,
    batch: bool | None,
    as_json: bool,
) -> None:
    """Approve pending generations of STAGE, so the service runs them (and spends money on them).

    Only generations pending now are approved; ones that appear later need a new approval.
    Narrow with --template, --model and --limit. Undo with `daydreamctl revoke`.

    \b
    Examples:
      daydreamctl plan draft                       # see counts and cost first
      daydreamctl approve draft --plan 3f2a9c1d0b7e4a55 --budget-usd 5
      daydreamctl approve essay --template polished-essay --model gemini_25_flash --limit 10
      daydreamctl approve evaluation --json
      daydreamctl approve evaluation --cohort rejudge-top5
      daydreamctl approve evaluation --batch          # half price, results within 24 h
    """
    body = scope_body(stage, template_id, llm_model_id, limit, cohort)
    body.update(
        {
            k: v
            for k, v in (("budget_usd", budget_usd), ("plan", plan_hash), ("batch", batch))
            if v is not None
        }
    )
    with service(obj) as client:
        result = client.post("/v1/approvals", body)
    if as_json:
        print_json(result)
        return
    scope = _scope(stage, template_id, llm_model_id) + _of_cohort(cohort, result)
    budget = f", budget ${result['budget_usd']:g}" if result.get("budget_usd") else ""
    approval = f"approval {result.get('approval_id')}{budget}"
    batched = result.get("batch_models") or []
    in_batches = f"; in batches: {', '.join(batched)}" if batched else ""
    click.echo(f"approved {result.get('matched', 0):,} pending {scope} ({approval}{in_batches})")


@click.command(context_settings=CONTEXT)
@click.argument("stage", type=STAGE_CHOICE)
@template_option
@model_option
@cohort_option
@json_option
@click.pass_obj
def revoke(
    obj: Context,
    stage: str,
    template_id: str | None,
    llm_model_id: str | None,
    cohort: str | None,
    as_json: bool,
) -> None:
    """Send queued (approved, not yet started) generations of STAGE back to pending.

    Running generations finish; done ones are kept. Narrow with --template and --model.

    \b
    Examples:
      daydreamctl revoke essay
      daydreamctl revoke evaluation --model anthropic/claude-3.5-haiku --json
    """
    body = scope_body(stage, template_id, llm_model_id, None, cohort)
    with service(obj) as client:
        result = client.post("/v1/revocations", body)
    if as_json:
        print_json(result)
        return
    scope = _scope(stage, template_id, llm_model_id) + _of_cohort(cohort, result)
    click.echo(f"revoked {result.get('revoked', 0):,} queued {scope}; they are pending again")


@click.command(context_settings=CONTEXT)
@click.argument("gen_id")
@json_option
@click.pass_obj
def show(obj: Context, gen_id: str, as_json: bool) -> None:
    """Show one generation: its state, inputs, error if any, and every LLM attempt.

    Exits 1 when the service knows no generation GEN_ID.

    \b
    Examples:
      daydreamctl show e_3f2a9c1d0b7e4a55
      daydreamctl show v_0c1d2e3f4a5b6c7d --json
    """
    with service(obj) as client:
        result = client.get(f"/v1/generations/{gen_id}")
    if as_json:
        print_json(result)
    else:
        _print_generation(result)


# -- text output -------------------------------------------------------------------------------


def list_cohorts(obj: Context, *, as_json: bool) -> None:
    """``daydreamctl cohort list``: ``GET /v1/cohorts``, as a table or JSON."""
    with service(obj) as client:
        result = client.get("/v1/cohorts")
    if as_json:
        print_json(result)
        return
    for entry in result.get("cohorts") or []:
        name = str(entry.get("cohort_id"))
        kind = "default" if entry.get("kind") == "default" else f"spec {entry.get('spec') or ''}".strip()
        spent = entry.get("spent_usd")
        money = f"${spent:,.2f}" if isinstance(spent, int | float) else "$?"
        click.echo(f"{name}  ({kind}; spent {money})")
        for stage, value in (entry.get("stages") or {}).items():
            counts = StageCounts.from_json(value)
            live = counts.pending + counts.approved
            states = ", ".join(f"{n:,} {state}" for state, n in counts.to_json().items() if n)
            click.echo(f"  {stage:<11} {live:>9,}  {states or '-'}")
        for problem in entry.get("errors") or []:
            click.echo(f"  error: {problem}")


def _of_cohort(cohort: str | None, result: Mapping[str, Any]) -> str:
    """`` of cohort X`` when the command named a cohort (the service says which it acted on)."""
    return f" of cohort {result.get('cohort_id') or cohort}" if cohort else ""


def _scope(stage: str, template_id: str | None, llm_model_id: str | None) -> str:
    narrowed = []
    if template_id:
        narrowed.append(f"template {template_id}")
    if llm_model_id:
        narrowed.append(f"model {llm_model_id}")
    return f"{stage} generation(s)" + (f" ({', '.join(narrowed)})" if narrowed else "")


def _print_status(result: ServiceStatus) -> None:
    none_yet = "(none yet: building it)" if result.cohort_progress else "(none yet: see the errors below)"
    click.echo(f"cohort {result.cohort_id or none_yet}")
    if result.cohort_progress is not None:
        click.echo(result.cohort_progress.describe())
    _print_stage_table(result.stages)
    if result.in_flight is not None:
        click.echo(f"in flight: {result.in_flight}{_pool_note(result.pool)}")
    _print_models(result.models)
    for trouble in result.pool.troubles:
        click.echo(trouble.describe())
    for stage, count in result.parent_changed.items():
        click.echo(parent_changed_note(stage, count))
    if result.errors:
        click.echo(f"problems in data/1_raw ({len(result.errors)}):")
        for error in result.errors:
            click.echo(f"  {_located(error)}")


def _print_stage_table(stages: Mapping[str, StageCounts]) -> None:
    click.echo(f"{'stage':<11}" + "".join(f"{state.value:>9}" for state in State))
    for stage, counts in stages.items():
        click.echo(f"{stage:<11}" + "".join(f"{counts.count(state):>9,}" for state in State))


def _pool_note(pool: PoolStatus) -> str:
    notes = [f"of {pool.concurrency}"] if pool.concurrency is not None else []
    if pool.paused:
        notes.append("PAUSED")
    return f" ({', '.join(notes)})" if notes else ""


def _print_models(models: Mapping[str, ModelStatus]) -> None:
    if not models:
        return
    click.echo("models:")
    width = max(len(model) for model in models)
    for model, info in models.items():
        click.echo(f"  {model:<{width}}  {_model_line(info)}")


def _model_line(info: ModelStatus) -> str:
    """``in flight 2 of limit 4 (max 8), 12/60 rpm, openrouter``: the per-model limits at a glance."""
    limit = info.concurrency
    parts = [f"in flight {info.in_flight}" + (f" of limit {limit:g}" if limit is not None else "")]
    if info.max_concurrency is not None:
        parts[0] += f" (max {info.max_concurrency:g})"
    if info.requests_per_minute:
        parts.append(f"{info.requests_last_minute}/{info.requests_per_minute:g} rpm")
    if info.provider:
        parts.append(info.provider)
    if info.paused:
        parts.append("PAUSED")
    return ", ".join(parts)


def _located(error: ProblemStatus) -> str:
    """``file:line: message`` (``file: message`` without a line), with the level when there is one."""
    file = error.file if error.file is not None else "?"
    where = f"{file}:{error.line}" if error.line else file
    level = f"{error.level}: " if error.level else ""
    return f"{where}: {level}{error.message or ''}"


def parse_lines(parse: object, history: Sequence[Mapping[str, Any]]) -> list[str]:
    """How the reply was parsed (for a score: its line, what was set aside) and what re-parses changed."""
    lines = []
    if isinstance(parse, Mapping) and parse.get("key"):
        lines.append(f"parsed by  {parse.get('key')}")
        verdict = parse.get("verdict")
        if isinstance(verdict, Mapping):
            lines.append(f"score from line {verdict.get('line')}: {verdict.get('text')}")
            lines.append(f"set aside  {verdict.get('set_aside')} other line(s) with numbers")
            lines.extend(f"  {candidate}" for candidate in verdict.get("set_aside_first") or [])
        if parse.get("error_kind"):
            lines.append(f"parse failed: {parse.get('error_kind')}")
            lines.extend(f"  {candidate}" for candidate in parse.get("candidates") or [])
    for entry in history:
        lines.append(
            f"re-parsed {entry.get('at')} ({entry.get('reason')}): {entry.get('old_state')} "
            f"{entry.get('old_parsed')!r} -> {entry.get('new_state')} {entry.get('new_parsed')!r}"
        )
    return lines


def _print_generation(row: Mapping[str, Any]) -> None:
    extra = ("attempt_log", "parents", "files", "reply_tail", "parse", "parse_history")
    fields = {key: value for key, value in row.items() if key not in extra and value not in (None, "")}
    width = max((len(key) for key in fields), default=0)
    for key, value in fields.items():
        click.echo(f"{key:<{width}}  {value}")
    for line in parse_lines(row.get("parse"), row.get("parse_history") or []):
        click.echo(line)
    attempts = row.get("attempt_log") or []
    if attempts:
        click.echo(f"attempt log ({len(attempts)}):")
        for attempt in attempts:
            click.echo("  " + ", ".join(f"{k} {v}" for k, v in attempt.items() if v is not None))
    for parent in row.get("parents") or []:
        click.echo(
            f"parent  {parent['stage']:<10} {parent['gen_id']}  {parent['state']}  {parent['template_id']}"
        )
    files = row.get("files") or {}
    if files:
        click.echo("files:")
        for path, size in files.items():
            click.echo(f"  {path}  ({size:,} bytes)")
    if row.get("reply_tail"):
        click.echo("end of the reply:")
        for line in str(row["reply_tail"]).splitlines():
            click.echo(f"  | {line}")
