"""``daydreamctl``'s operating verbs: ``plan``, ``pause``, ``resume``, ``retry``, ``reparse``, ``limits``,
``watch``.

Each is one request to the service's socket (``watch`` follows the event stream); the service
decides, these send and print. The live verbs (``status``, ``approve``, ``revoke``, ``show``) are in
:mod:`daydreamd.cli.live`; both use :mod:`daydreamd.cli.common` to talk to the service.
``daydreamd.cli.main`` imports this module when one of its verbs is run and adds them to its
group with :func:`register`. Exit codes as for the live verbs: 0, 1, 3 (unreachable). Sync shell.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from daydreamd.cli.common import current_user, print_json, scope_body, service
from daydreamd.cli.options import (
    CONTEXT,
    STAGE_CHOICE,
    batch_option,
    cohort_option,
    json_option,
    model_option,
    template_option,
)
from daydreamd.core.control import FAILURE_KINDS

if TYPE_CHECKING:
    from daydreamd.cli.common import Context

KIND_CHOICE = click.Choice(FAILURE_KINDS)


def register(cli: click.Group) -> None:
    """Add the operating verbs to ``cli``."""
    for command in (plan, pause, resume, retry, reparse, limits, watch):
        cli.add_command(command)


@click.command(context_settings=CONTEXT)
@click.argument("stage", type=STAGE_CHOICE)
@template_option
@model_option
@click.option("--limit", type=click.IntRange(min=1), help="Plan for at most N generations (parents first).")
@cohort_option
@json_option
@click.pass_obj
def plan(
    obj: Context,
    stage: str,
    template_id: str | None,
    llm_model_id: str | None,
    limit: int | None,
    cohort: str | None,
    as_json: bool,
) -> None:
    """Show what approving STAGE would start and what it would cost, before spending anything.

    Counts per template and model, how many wait on parents, estimated input and output tokens
    and dollars (a model without a price is shown as unknown). Approve exactly this with
    `daydreamctl approve STAGE ... --plan HASH`.

    \b
    Examples:
      daydreamctl plan draft
      daydreamctl plan evaluation --model sonnet_4 --json
      daydreamctl plan evaluation --cohort rejudge-top5
    """
    body = scope_body(stage, template_id, llm_model_id, limit, cohort)
    with service(obj) as client:
        result = client.post("/v1/plans", body)
    if as_json:
        print_json(result)
        return
    _print_plan(result)


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.2f}"


def _print_plan(result: Mapping[str, Any]) -> None:
    lines = result.get("lines") or []
    count = result.get("count", 0)
    click.echo(f"plan {result['plan']} for cohort {result.get('cohort_id')}: {count:,} generation(s)")
    if not lines:
        click.echo("nothing pending matches; nothing would start")
        return
    batchable = any(line.get("batch_usd") is not None for line in lines)
    click.echo(
        f"{'stage':<11}{'template':<24}{'model':<20}{'count':>8}{'blocked':>9}"
        f"{'in tok':>11}{'out tok':>11}{'cost':>12}" + (f"{'in batches':>12}" if batchable else "")
    )
    for line in lines:
        batch = line.get("batch_usd")
        click.echo(
            f"{line['stage']:<11}{line['template_id'][:23]:<24}{line['llm_model_id'][:19]:<20}{line['count']:>8,}"
            f"{line['blocked_on_parent']:>9,}{line['input_tokens']:>11,}{line['output_tokens']:>11,}"
            f"{_money(line['usd']):>12}"
            + (f"{'-' if batch is None else _money(batch):>12}" if batchable else "")
        )
    total = f"total: {_money(result.get('total_usd'))}"
    if result.get("total_batch_usd") is not None:
        total += f" online, {_money(result.get('total_batch_usd'))} with batches (approve --batch)"
    unpriced = result.get("unpriced_models") or []
    if unpriced:
        total += (
            f" (known part {_money(result.get('known_usd'))}; no price for {', '.join(unpriced)}: add "
            "input_usd_per_mtok/output_usd_per_mtok to llm_models.csv or [prices.<id>] to the config)"
        )
    click.echo(total)
    sources = sorted({line["output_source"] for line in lines if line["mode"] == "llm"})
    if sources:
        click.echo(f"output tokens from: {', '.join(sources)}")
    scope = _scope_args(result.get("scope") or {})
    click.echo(f"approve exactly this: daydreamctl approve {scope} --plan {result['plan']}")


def _scope_args(scope: Mapping[str, Any]) -> str:
    args = [str(scope.get("stage", ""))]
    for key, flag in (("template_id", "--template"), ("llm_model_id", "--model"), ("limit", "--limit")):
        if scope.get(key) is not None:
            args += [flag, str(scope[key])]
    return " ".join(args)


def _pause_body(llm_model_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"requested_by": current_user()}
    if llm_model_id:
        body["llm_model_id"] = llm_model_id
    return body


@click.command(context_settings=CONTEXT)
@click.option("--model", "llm_model_id", help="Pause only this model (default: all work).")
@json_option
@click.pass_obj
def pause(obj: Context, llm_model_id: str | None, as_json: bool) -> None:
    """Stop claiming new work, for everything or one model; calls in flight finish normally.

    \b
    Examples:
      daydreamctl pause
      daydreamctl pause --model deepseek_r1
    """
    with service(obj) as client:
        result = client.post("/v1/pause", _pause_body(llm_model_id))
    _print_pause(result, as_json)


@click.command(context_settings=CONTEXT)
@click.option("--model", "llm_model_id", help="Resume only this model (default: everything).")
@json_option
@click.pass_obj
def resume(obj: Context, llm_model_id: str | None, as_json: bool) -> None:
    """Start claiming again, for everything or one model.

    \b
    Examples:
      daydreamctl resume
      daydreamctl resume --model deepseek_r1
    """
    with service(obj) as client:
        result = client.post("/v1/resume", _pause_body(llm_model_id))
    _print_pause(result, as_json)


def _print_pause(result: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    models = result.get("paused_models") or []
    state = "all work paused" if result.get("paused") else "claiming"
    click.echo(state + (f"; paused models: {', '.join(models)}" if models else ""))


@click.command(context_settings=CONTEXT)
@click.option("--stage", type=STAGE_CHOICE, help="Only this stage.")
@click.option("--kind", type=KIND_CHOICE, help="Only failures of this kind (e.g. rate_limit, transient).")
@template_option
@model_option
@click.option(
    "--fresh", is_flag=True, help="Pay for a new reply even where one is saved (empty, cut off, filtered)."
)
@cohort_option
@batch_option
@json_option
@click.pass_obj
def retry(
    obj: Context,
    stage: str | None,
    kind: str | None,
    template_id: str | None,
    llm_model_id: str | None,
    fresh: bool,
    cohort: str | None,
    batch: bool | None,
    as_json: bool,
) -> None:
    """Send failed generations back to the queue (they run again without a new approval).

    A saved reply is re-checked and re-parsed rather than paid for again, unless --fresh.

    \b
    Examples:
      daydreamctl retry --kind rate_limit
      daydreamctl retry --stage evaluation --kind parse_error
      daydreamctl retry --kind truncated --fresh
      daydreamctl retry --kind batch_expired --batch
    """
    body: dict[str, Any] = {
        k: v
        for k, v in (
            ("stage", stage),
            ("kind", kind),
            ("template_id", template_id),
            ("llm_model_id", llm_model_id),
            ("cohort", cohort),
        )
        if v
    }
    body |= {"fresh": fresh, "requested_by": current_user()}
    if batch is not None:
        body["batch"] = batch
    with service(obj) as client:
        result = client.post("/v1/retries", body)
    if as_json:
        print_json(result)
    else:
        click.echo(f"retrying {result.get('retried', 0):,} failed generation(s)")


@click.command(context_settings=CONTEXT)
@click.option("--stage", type=STAGE_CHOICE, help="Only this stage.")
@template_option
@json_option
@click.pass_obj
def reparse(obj: Context, stage: str | None, template_id: str | None, as_json: bool) -> None:
    """Parse finished generations' saved replies again, with the parsers in force; no model is called.

    The service does this by itself when a template's parser, its version, its verdict label or
    its scale changes; use this after fixing a parser by hand, or to check one. A value that
    changes is kept in the generation's history (`daydreamctl show`); a reply that no longer
    parses fails as parse_error, and a failed parse that now works becomes done. Parse-failed
    generations are included. --template needs --stage.

    \b
    Examples:
      daydreamctl reparse --stage evaluation
      daydreamctl reparse --stage evaluation --template novelty
    """
    if template_id and not stage:
        raise click.UsageError("--template needs --stage (template ids are per stage)")
    body: dict[str, Any] = {k: v for k, v in (("stage", stage), ("template_id", template_id)) if v}
    with service(obj) as client:
        result = client.post("/v1/reparses", body | {"requested_by": current_user()})
    if as_json:
        print_json(result)
        return
    click.echo(
        f"re-parsed {result.get('checked', 0):,} generation(s) of {result.get('templates', 0)} template(s): "
        f"{result.get('changed', 0):,} changed ({result.get('now_failed', 0):,} now fail, "
        f"{result.get('now_done', 0):,} now parse)"
        + (f"; {result['no_reply']:,} had no saved reply" if result.get("no_reply") else "")
    )


@click.command(context_settings=CONTEXT)
@click.option("--model", "llm_model_id", help="Change this model's limits (default: the pool's).")
@click.option("--concurrency", type=click.IntRange(min=1), help="Calls in flight at once.")
@click.option("--rpm", type=click.IntRange(min=0), help="Requests per minute for the model (0: unlimited).")
@json_option
@click.pass_obj
def limits(
    obj: Context, llm_model_id: str | None, concurrency: int | None, rpm: int | None, as_json: bool
) -> None:
    """See the live limits, or change them (until the next config reload).

    \b
    Examples:
      daydreamctl limits
      daydreamctl limits --concurrency 32
      daydreamctl limits --model sonnet_4 --concurrency 4 --rpm 50
    """
    with service(obj) as client:
        if concurrency is None and rpm is None:
            result = client.get("/v1/limits")
        else:
            body = {
                k: v
                for k, v in (
                    ("llm_model_id", llm_model_id),
                    ("concurrency", concurrency),
                    ("requests_per_minute", rpm),
                )
                if v is not None
            }
            result = client.post("/v1/limits", body)
    if as_json:
        print_json(result)
        return
    click.echo(f"pool concurrency {result.get('concurrency')}")
    for model, info in (result.get("models") or {}).items():
        click.echo(
            f"  {model}: concurrency {info.get('concurrency')} of max {info.get('max_concurrency')}, "
            f"{info.get('requests_per_minute')} rpm, in flight {info.get('in_flight')}"
        )


@click.command(context_settings=CONTEXT)
@json_option
@click.pass_obj
def watch(obj: Context, as_json: bool) -> None:
    """Follow the service's events as they happen (state changes, rebuilds, limit changes).

    Ctrl-C stops. --json prints the raw newline-delimited JSON.

    \b
    Examples:
      daydreamctl watch
      daydreamctl watch --json | jq -c 'select(.event == "generation_failed")'
    """
    with service(obj) as client:
        try:
            for event in client.stream("/v1/events"):
                if as_json:
                    click.echo(json.dumps(event, ensure_ascii=False))
                elif event.get("event") != "heartbeat":
                    click.echo(_event_line(event))
        except KeyboardInterrupt:
            return


def _event_line(event: Mapping[str, Any]) -> str:
    at = str(event.get("at", ""))[11:23]
    name = str(event.get("event", ""))
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("at", "event") and v is not None)
    colour = "red" if "failed" in name or "invalid" in name else "green" if "done" in name else None
    return f"{at}  {click.style(f'{name:<20}', fg=colour)} {rest}"
