"""``daydreamctl results`` and ``daydreamctl report``: offline verbs over the run state or the gens store.

Both read the scores (from SQLite by default, from ``data/gens/**`` with ``--from-files``),
need no running service, and write their output atomically. ``daydreamd.cli.main`` imports this
module when one of its verbs is run and adds them to its group with :func:`register`; the heavy
imports (matplotlib) happen inside the verbs.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daydreamd.cli.options import CONTEXT, json_option

if TYPE_CHECKING:
    from daydreamd.cli.common import Context
    from daydreamd.core.config import Settings
    from daydreamd.core.scores import Scores
    from daydreamd.core.table import Table

ESSAY_TEXT_LIMIT = 20_000
"""Characters of each top essay's text folded into the report."""


def register(cli: click.Group) -> None:
    """Add ``results`` and ``report`` to ``cli`` (the ``daydreamctl`` group); idempotent."""
    for command in (results, report):
        cli.add_command(command)


def _data_option(func: Any) -> Any:
    return click.option(
        "--data",
        type=click.Path(file_okay=False, path_type=Path),
        help="Data directory (holds 1_raw/, cohorts/, gens/); overrides paths.data_dir from the config.",
    )(func)


def _from_files_option(func: Any) -> Any:
    return click.option(
        "--from-files",
        is_flag=True,
        help="Rebuild the scores from data/gens/** instead of the run state (old or foreign stores, checks).",
    )(func)


# -- results -----------------------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
@click.option("--cohort", "cohort_id", help="The cohort to report on (default: the current cohort).")
@click.option(
    "--all", "all_cohorts", is_flag=True, help="Every evaluation of every cohort, cross-experiment."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the tables here (default: data/cohorts/<id>/reports/, or data/cross_experiment/ with --all).",
)
@_from_files_option
@_data_option
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Top essays to show.")
@click.option(
    "--by",
    metavar="EVAL_TEMPLATE[:JUDGE]",
    help="Rank the top essays by this rubric's mean (of one judge with :JUDGE), not by the sum of all.",
)
@click.option(
    "--show/--no-show",
    default=None,
    help="Print the top essays and the means as tables (default: only on a terminal).",
)
@click.option(
    "--compare",
    nargs=2,
    metavar="A B",
    help="Compare two cohorts item by item: what changed, paired differences B - A with intervals.",
)
@click.option(
    "--layout",
    type=click.Choice(["standard", "legacy"]),
    default="standard",
    show_default=True,
    help="legacy: also write the old pipeline's tables, old names and columns, under legacy/.",
)
@json_option
@click.pass_obj
def results(
    obj: Context,
    cohort_id: str | None,
    all_cohorts: bool,
    out: Path | None,
    from_files: bool,
    data: Path | None,
    top: int,
    by: str | None,
    show: bool | None,
    compare: tuple[str, str] | None,
    layout: str,
    as_json: bool,
) -> None:
    """Compute the score tables of a cohort (or of every cohort) and write them as CSV.

    One score row per finished evaluation (failed ones with their error kind), read from
    the run state in SQLite, or rebuilt from data/gens/** with --from-files. Every table is
    rewritten atomically each time, with its header even when it has no rows:

    \b
      parsing/aggregated_scores.csv     every finished evaluation, with paths
      summary/generation_scores.csv     one row per essay, one column per template__judge
      summary/final_results.csv         count, mean, std, top/high shares per group
      summary/breakdowns.csv            per evaluation template: n, mean, 95% t interval, sd by group
      summary/breakdowns_by_judge.csv   the same per judge of each evaluation template
      summary/perfect_score_paths.csv   evaluations at their template's maximum
      analysis/judge_agreement.csv      spread across judges, per essay and template
      analysis/variance_analysis.csv    spread across judges, templates and replicates
      analysis/agreement_pairs.csv      judge pairs per rubric, rubric pairs per judge: n, rho, MAD
      summary/costs.csv                 calls, tokens, dollars, latency per stage, template, model
                                        (from the run state's calls; not with --from-files)
      evaluation_scores_by_template_model.csv   (--all only) the cross-experiment pivot

    With --layout legacy, the old pipeline's tables are written too, under their old names
    and columns, for notebooks written for it (docs/legacy-tables.md maps old to new):

    \b
      legacy/5_parsing/parsed_scores.csv
      legacy/6_summary/generation_scores_pivot.csv, final_results.csv, perfect_score_paths.csv,
        evaluation_model_template_pivot.csv, evaluator_agreement_analysis.csv,
        comprehensive_variance_analysis.csv

    std is the population standard deviation; a template's scale is the one `daydreamctl
    validate` prints for it (its score_max column, else what its text asks for, else 0-10).
    For one cohort, the first lines say whether it is complete; a partial cohort's means are
    over its done evaluations only.

    \b
    Examples:
      daydreamctl results
      daydreamctl results --cohort cohort_3f2a9c1d0b7e --json
      daydreamctl results --all --from-files --data ../old-project/data --out /tmp/old-results
      daydreamctl results --top 20 --by novelty-judge:sonnet_4 --show
      daydreamctl results --compare cohort_3f2a9c1d0b7e cohort_8e1b2f7a9c04
      daydreamctl results --layout legacy

    With --compare A B, the tables are comparison/summary.csv (per evaluation template and judge:
    items paired, changed, same, new, gone; both means; the mean difference B - A with its 95% t
    interval) and comparison/items.csv (every item with its status), written to --out or
    data/cross_experiment/compare/A__B/.
    """
    from daydreamd.core.collector import paused_gc
    from daydreamd.core.legacy import legacy_tables
    from daydreamd.core.results import build_tables, completeness, top_essays
    from daydreamd.core.table import FINAL_RESULTS
    from daydreamd.storage.layout import DataLayout
    from daydreamd.storage.score_inputs import ResultsError
    from daydreamd.storage.scores import load_scores, write_tables

    if cohort_id and all_cohorts:
        raise click.UsageError("give either --cohort ID or --all, not both")
    obj.data = data
    if compare is not None:
        if cohort_id or all_cohorts:
            raise click.UsageError("--compare A B names both cohorts; give neither --cohort nor --all")
        if layout != "standard":
            raise click.UsageError("--layout legacy is for the score tables, not --compare")
        _compare(obj.settings(), compare, out=out, from_files=from_files, as_json=as_json)
        return
    settings = obj.settings()
    data_dir = settings.paths.data_dir
    started = time.perf_counter()
    try:
        scope = None if all_cohorts else resolve_cohort(settings, cohort_id, use_state=data is None)
        scores, loaded = load_scores(
            data_dir=data_dir, db_path=settings.paths.state_db, cohort_id=scope, from_files=from_files
        )
        whole = None if scope is None else completeness(_progress(settings, scope, from_files=from_files))
        with paused_gc():
            tables = build_tables(scores, cross_experiment=scope is None)
            if layout == "legacy":
                tables += legacy_tables(scores)
            directory = out or DataLayout(data_dir).reports_dir(scope)
            tables += _cost_tables(
                settings, scope, directory, from_files=from_files, warnings=loaded.warnings
            )
            paths = write_tables(directory, tables)
    except ResultsError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot write the tables: {exc}") from exc
    elapsed = time.perf_counter() - started
    if data is not None and not from_files:
        loaded.warnings.append(_data_without_files(settings))
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    final = next(t for t in tables if t.path == FINAL_RESULTS)
    summary: dict[str, Any] = {
        "cohort_id": scope,
        "scope": "all" if scope is None else "cohort",
        "layout": layout,
        "source": loaded.source,
        "out_dir": str(directory),
        "evaluations": len(scores),
        "scored": scores.scored,
        "failed": scores.failed,
        "completeness": whole.to_json() if whole is not None else None,
        "completeness_note": whole.sentence() if whole is not None else None,
        "failures_by_kind": scores.failures_by_kind(),
        "tables": {t.path: {"path": str(p), "rows": len(t.rows)} for t, p in zip(tables, paths, strict=True)},
        "top_by": by,
        "top_essays": [_top_dict(t) for t in top_essays(scores, top, by=_rubric(by, scores))],
        "by_draft_template": _means(final, "by_draft_template"),
        "by_generation_model": _means(final, "by_generation_model"),
        "by_evaluation_model": _means(final, "by_evaluation_model"),
        "overall": (_means(final, "overall") or [{}])[0],
        "seconds": round(elapsed, 3),
        "warnings": loaded.warnings,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    _print_results(summary, tables, show=sys.stdout.isatty() if show is None else show)


def _compare(
    settings: Settings, cohorts: tuple[str, str], *, out: Path | None, from_files: bool, as_json: bool
) -> None:
    """``results --compare A B``: the comparison tables written, and their summary shown."""
    from daydreamd.core.compare import compare
    from daydreamd.storage.layout import DataLayout
    from daydreamd.storage.score_inputs import ResultsError
    from daydreamd.storage.scores import load_scores, write_tables

    data_dir = settings.paths.data_dir
    try:
        a, b = (resolve_cohort(settings, cohort) for cohort in cohorts)
        loaded = [
            load_scores(
                data_dir=data_dir, db_path=settings.paths.state_db, cohort_id=c, from_files=from_files
            )
            for c in (a, b)
        ]
        summary, items = compare(loaded[0][0].rows, loaded[1][0].rows)
        directory = out or DataLayout(data_dir).reports_dir(None) / "compare" / f"{a}__{b}"
        write_tables(directory, (summary, items))
    except ResultsError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot write the tables: {exc}") from exc
    for _, found in loaded:
        for warning in found.warnings:
            click.echo(f"warning: {warning}", err=True)
    records = summary.records()
    if as_json:
        click.echo(json.dumps({"a": a, "b": b, "out_dir": str(directory), "summary": records}, indent=2))
        return
    click.echo(f"{a} (A) against {b} (B), written to {directory}")
    _print_table(
        (
            "rubric",
            "judge",
            "paired",
            "changed",
            "same",
            "mean A",
            "mean B",
            "B - A",
            "95% CI",
            "new",
            "gone",
        ),
        [
            (
                r["evaluation_template"],
                r["evaluation_model"],
                r["paired"],
                r["changed"],
                r["same"],
                r["mean_a"],
                r["mean_b"],
                r["mean_diff"],
                _interval(r["ci95_low"], r["ci95_high"]),
                r["new"],
                r["gone"],
            )
            for r in records
        ],
    )


def _interval(low: Any, high: Any) -> str:
    return "" if low is None or high is None else f"[{low:+.2f}, {high:+.2f}]"


def _cost_tables(
    settings: Settings, scope: str | None, directory: Path, *, from_files: bool, warnings: list[str]
) -> tuple[Table, ...]:
    """``summary/costs.csv`` from the run state's ``attempts`` (every call sent), or nothing from files.

    The gens store keeps, per generation, the usage of the reply it saved, not the calls that
    failed or were retried before it, nor their times: a table from it would undercount what was
    sent and paid for, so none is written and ``warnings`` says why (and that a table already in
    ``directory`` is from an earlier run, not this one).
    """
    from daydreamd.core.costs import COSTS, costs_table
    from daydreamd.storage.costs import read_call_groups

    if from_files:
        stale = directory / COSTS
        warnings.append(
            f"{COSTS} not written: the gens store (--from-files) holds each generation's saved reply, "
            "not every call sent (failed and retried ones); run without --from-files to read them from "
            "the run state" + (f"; {stale} is from an earlier run" if stale.exists() else "")
        )
        return ()
    paths = settings.paths
    return (costs_table(read_call_groups(paths.state_db, paths.data_dir, scope)),)


def _progress(settings: Settings, cohort_id: str, *, from_files: bool) -> dict[str, dict[str, int]]:
    """Per stage, the cohort's size and its generations per state (from the files or the run state)."""
    from daydreamd.storage.score_db import progress_from_db
    from daydreamd.storage.score_files import progress_from_files

    data_dir = settings.paths.data_dir
    if from_files:
        return progress_from_files(data_dir, cohort_id)
    return progress_from_db(settings.paths.state_db, data_dir, cohort_id)


def resolve_cohort(settings: Settings, explicit: str | None, *, use_state: bool = True) -> str:
    """The cohort to report on (see :func:`daydreamd.storage.scores.resolve_cohort`); an id that is
    not a plain folder name is a usage error naming ``--cohort``."""
    from daydreamd.core.ids import cohort_id_problem
    from daydreamd.storage.scores import resolve_cohort as resolve

    if explicit and (problem := cohort_id_problem(explicit)):
        raise click.BadParameter(problem, param_hint="--cohort")
    return resolve(settings, explicit, use_state=use_state)


def _data_without_files(settings: Settings) -> str:
    from daydreamd.storage.layout import DataLayout

    return (
        f"--data without --from-files: the scores come from the run state {settings.paths.state_db} "
        f"(paths.state_db); add --from-files to read {DataLayout(settings.paths.data_dir).gens} instead"
    )


def _rubric(by: str | None, scores: Scores) -> tuple[str, str | None] | None:
    """``--by T[:J]`` as (template, judge); a rubric (or judge) that scored nothing here is an error."""
    if by is None:
        return None
    template, _, judge = by.partition(":")
    columns = scores.columns()
    if not any(t == template and (not judge or j == judge) for t, j in columns):
        used = ", ".join(sorted({f"{t}:{j}" for t, j in columns})) or "none"
        raise click.BadParameter(
            f"{by!r} scored no essay here; the rubrics and judges used are: {used}", param_hint="--by"
        )
    return template, judge or None


def _top_dict(top: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(top).items()}


def _means(final: Table, analysis_type: str) -> list[dict[str, Any]]:
    from daydreamd.core.results import group_means

    rows = group_means(final, analysis_type)
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def _print_results(summary: dict[str, Any], tables: Sequence[Table], *, show: bool) -> None:
    scope = "every cohort" if summary["scope"] == "all" else f"cohort {summary['cohort_id']}"
    source = "the run state (SQLite)" if summary["source"] == "sqlite" else "the gens store (files)"
    failures = ", ".join(f"{k} {v:,}" for k, v in summary["failures_by_kind"].items())
    click.echo(
        f"{scope} from {source}: {summary['evaluations']:,} finished evaluations, "
        f"{summary['scored']:,} scored, "
        f"{summary['failed']:,} failed" + (f" ({failures})" if failures else "")
    )
    if summary["completeness_note"]:
        click.echo(summary["completeness_note"])
    click.echo(f"wrote {len(tables)} tables to {summary['out_dir']} in {summary['seconds']:.1f} s")
    for table in tables:
        click.echo(f"  {table.path} ({len(table.rows):,} rows)")
    if not show:
        return
    top = summary["top_essays"]
    if top:
        ranked_by = f"mean of {summary['top_by']}" if summary["top_by"] else "sum of template__judge means"
        click.echo(f"\ntop essays ({ranked_by}):")
        _print_table(
            ("#", "sum", "mean", "cols", "draft template", "model", "essay template", "essay"),
            [
                (
                    f"={t['rank']}" if t["tied"] else str(t["rank"]),
                    t["sum_scores"],
                    t["mean"],
                    t["scored_columns"],
                    t["draft_template"],
                    t["generation_model"],
                    t["essay_template"],
                    t["essay_path"],
                )
                for t in top
            ],
        )
    for key, label in (
        ("by_draft_template", "draft template"),
        ("by_generation_model", "generation model"),
        ("by_evaluation_model", "judge model"),
    ):
        rows = summary[key]
        if not rows:
            continue
        name = {"by_draft_template": "draft_template", "by_generation_model": "generation_model"}.get(
            key, "evaluation_model"
        )
        click.echo(f"\nmean score by {label}:")
        _print_table(
            (label, "n", "failed", "mean", "std", "min", "max", "top", "high"),
            [
                (
                    r.get(name, ""),
                    r.get("count", 0),
                    r.get("failed", 0),
                    r.get("mean"),
                    r.get("std"),
                    r.get("min"),
                    r.get("max"),
                    _pct(r.get("top_share")),
                    _pct(r.get("high_share")),
                )
                for r in rows
            ],
        )


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table: numbers right-aligned with 2 decimals, text left-aligned."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    text = [[cell(v) for v in row] for row in rows]
    numeric = [
        all(isinstance(row[i], int | float) or row[i] is None for row in rows) for i in range(len(header))
    ]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric, strict=True)]
        return "  " + "  ".join(parts).rstrip()

    click.echo(line(header))
    click.echo(line(["-" * w for w in widths]))
    for row in text:
        click.echo(line(row))


# -- report ------------------------------------------------------------------------------------


@click.command(context_settings=CONTEXT)
@click.option("--cohort", "cohort_id", help="The cohort to report on (default: the current cohort).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write (default: data/cohorts/<id>/reports/report.html).",
)
@_from_files_option
@_data_option
@json_option
@click.pass_obj
def report(
    obj: Context, cohort_id: str | None, out: Path | None, from_files: bool, data: Path | None, as_json: bool
) -> None:
    """Write a cohort's report: one self-contained HTML file that opens without a network.

    It shows the cohort's definition and progress, a heatmap of the mean score by draft
    template x generation model, score distributions per judge, how well judges agree,
    the top essays with their scores, text and links, and failures by kind.

    \b
    Examples:
      daydreamctl report
      daydreamctl report --cohort cohort_3f2a9c1d0b7e --out /tmp/report.html
      daydreamctl report --from-files --json
    """
    from daydreamd.core.collector import paused_gc
    from daydreamd.core.results import top_essays
    from daydreamd.core.timestamps import utc_now
    from daydreamd.report.html import TOP_N, ReportData, render_report
    from daydreamd.storage.atomic import write_atomic
    from daydreamd.storage.cohort_files import read_manifest
    from daydreamd.storage.costs import read_call_groups
    from daydreamd.storage.layout import DataLayout
    from daydreamd.storage.score_inputs import ResultsError
    from daydreamd.storage.scores import load_scores

    obj.data = data
    settings = obj.settings()
    data_dir = settings.paths.data_dir
    started = time.perf_counter()
    try:
        scope = resolve_cohort(settings, cohort_id, use_state=data is None)
        scores, loaded = load_scores(
            data_dir=data_dir, db_path=settings.paths.state_db, cohort_id=scope, from_files=from_files
        )
        progress = _progress(settings, scope, from_files=from_files)
        costs = None if from_files else read_call_groups(settings.paths.state_db, data_dir, scope)
    except ResultsError as exc:
        raise click.ClickException(str(exc)) from exc
    path = out or DataLayout(data_dir).report_html(scope)
    texts = _essay_texts(data_dir, scores, TOP_N)
    prefix = Path(os.path.relpath(data_dir.resolve(), path.parent.resolve())).as_posix()
    data_for_report = ReportData(
        cohort_id=scope,
        scores=scores,
        source=loaded.source,
        generated_at=utc_now(),
        manifest=read_manifest(data_dir, scope),
        progress=progress,
        essay_texts=texts,
        link_prefix=prefix,
        warnings=tuple(loaded.warnings),
        costs=costs,
    )
    with paused_gc():
        document = render_report(data_for_report)
    try:
        write_atomic(path, document)
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc}") from exc
    elapsed = time.perf_counter() - started
    if data is not None and not from_files:
        loaded.warnings.append(_data_without_files(settings))
    for warning in loaded.warnings:
        click.echo(f"warning: {warning}", err=True)
    size = len(document.encode("utf-8"))
    result = {
        "cohort_id": scope,
        "source": loaded.source,
        "report": str(path),
        "bytes": size,
        "evaluations": len(scores),
        "scored": scores.scored,
        "failed": scores.failed,
        "top_essays": len(top_essays(scores, TOP_N)),
        "seconds": round(elapsed, 3),
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(
            f"wrote {path} ({size / 1024:,.0f} KiB; cohort {scope}, {len(scores):,} finished "
            f"evaluations) in {elapsed:.1f} s"
        )


def _essay_texts(data_dir: Path, scores: Scores, n: int) -> dict[str, str]:
    from daydreamd.core.results import top_essays
    from daydreamd.core.stages import Stage
    from daydreamd.storage.gens import PARSED, GensStore

    gens = GensStore(data_dir)
    texts = {}
    for essay in top_essays(scores, n):
        if not essay.essay_gen_id:
            continue
        text = gens.try_read_text(Stage.ESSAY, essay.essay_gen_id, PARSED, errors="replace")
        if text is None:
            continue
        if len(text) > ESSAY_TEXT_LIMIT:
            text = text[:ESSAY_TEXT_LIMIT] + "\n[... cut: open the file for the rest]"
        texts[essay.essay_gen_id] = text
    return texts
