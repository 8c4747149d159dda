"""``daydreamctl``: the command line for daydreamd; the group, and the offline verbs that build.

This module holds the ``daydreamctl`` group and the offline verbs ``validate``, ``cohort`` (with
its subcommand ``cohort compile``, whose work is in :mod:`daydreamd.cli.speccompile`), ``parse``
and ``render``, which call the pure core directly and need no service. The other verbs
live in their own modules, which :class:`VerbGroup` imports only when one of their verbs is run
(or listed, for ``--help``), see :data:`LAZY_VERBS`:

* :mod:`daydreamd.cli.live`: ``status``, ``approve``, ``revoke``, ``show`` (the service's socket);
* :mod:`daydreamd.cli.ops`: ``plan``, ``pause``, ``resume``, ``retry``, ``reparse``, ``limits``,
  ``watch``;
* :mod:`daydreamd.cli.logs`: ``logs`` (reads the service's log file);
* :mod:`daydreamd.cli.results`: ``results``, ``report`` (offline, over the scores).

What they share is in :mod:`daydreamd.cli.options` (``CONTEXT``, ``--json``...) and
:mod:`daydreamd.cli.common` (:class:`Context`, the service connection, JSON output).

Each verb's docstring is its ``--help``. Exit codes: 0 ok, 1 the operation failed (e.g. the
experiment has errors), 2 usage error, 3 the service is unreachable (live and operating verbs).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from daydreamd.cli.common import Context, print_json
from daydreamd.cli.options import CONTEXT, STAGE_CHOICE, json_option
from daydreamd.core.errors import DaydreamError
from daydreamd.core.problems import Level, Problem

if TYPE_CHECKING:
    from daydreamd.core.build import Build
    from daydreamd.core.config import Settings
    from daydreamd.core.experiment import Template
    from daydreamd.core.verdicts import VerdictSpec
    from daydreamd.sandbox.render_process import RenderProcess

LAZY_VERBS: dict[str, str] = {
    **dict.fromkeys(("status", "approve", "revoke", "show"), "daydreamd.cli.live"),
    **dict.fromkeys(("plan", "pause", "resume", "retry", "reparse", "limits", "watch"), "daydreamd.cli.ops"),
    "logs": "daydreamd.cli.logs",
    **dict.fromkeys(("results", "report"), "daydreamd.cli.results"),
}
"""Each verb not defined here, and the module whose ``register(group)`` adds it."""


class VerbGroup(click.Group):
    """The ``daydreamctl`` group: it imports a verb's module (:data:`LAZY_VERBS`) on first use.

    ``daydreamctl`` starts once per command, so its import time is the user's wait. This lazy
    import is what keeps ``daydreamctl status`` fast: it loads :mod:`daydreamd.cli.live` only, not
    the log reader, the operating verbs and the results, which together take several times as long
    to import (about a third of the CLI's import time when measured). ``--help`` lists every verb
    and an unknown verb is compared with every verb ("Did you mean"), so those import them all;
    the output is the same as with every verb registered up front.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every verb, loaded or not, in name order (as click lists them)."""
        return sorted({*self.commands, *LAZY_VERBS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The verb ``cmd_name``, importing and registering its module the first time."""
        if cmd_name not in self.commands and cmd_name in LAZY_VERBS:
            importlib.import_module(LAZY_VERBS[cmd_name]).register(self)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click does, after loading every verb if ``args[0]`` is none, so the error suggests any."""
        if args and self.get_command(ctx, args[0]) is None:
            for name in LAZY_VERBS:
                self.get_command(ctx, name)
        return super().resolve_command(ctx, args)


def _default_config() -> Path | None:
    path = Path("config.toml")
    return path if path.is_file() else None


@click.group(cls=VerbGroup, context_settings=CONTEXT)
@click.option(
    "--config",
    "-c",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DAYDREAMD_CONFIG",
    help="Config file (default: ./config.toml if present, else built-in defaults). Env: DAYDREAMD_CONFIG.",
)
@click.version_option(None, "-V", "--version", package_name="daydreamd")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Control and inspect daydreamd, the combinatorial LLM experiment service.

    \b
    Offline (no service needed):
      daydreamctl validate          check data/1_raw, list every problem
      daydreamctl cohort --write    build the cohort and write data/cohorts/<id>/
      daydreamctl cohort compile SPEC   compile a cohort spec into its rows (dry run)
      daydreamctl render            render prompts into data/gens/ without calling a model
      daydreamctl parse --stage evaluation --parser in_last_line reply.txt
    """
    ctx.obj = Context(config or _default_config(), None)


def data_option(func: Any) -> Any:
    """``--data DIR``: a directory containing ``1_raw/`` instead of the config's data_dir."""
    return click.option(
        "--data",
        type=click.Path(file_okay=False, path_type=Path),
        help="Directory that contains 1_raw/ (overrides paths.data_dir from the config).",
    )(func)


def _summary(problems: tuple[Problem, ...]) -> tuple[int, int]:
    errors = sum(1 for p in problems if p.level is Level.ERROR)
    return errors, len(problems) - errors


@cli.command(context_settings=CONTEXT)
@data_option
@json_option
@click.pass_obj
def validate(obj: Context, data: Path | None, as_json: bool) -> None:
    """Check the experiment in data/1_raw and list every problem.

    One line per problem, `path:line: level: message`. Exits 0 when there are no errors
    (warnings allowed), 1 otherwise.

    \b
    Examples:
      daydreamctl validate
      daydreamctl validate --data ../other-experiment/data --json
    """
    from daydreamd.core.build import read_and_build
    from daydreamd.sandbox.render_process import RenderProcess

    obj.data = data
    settings = obj.settings()
    with RenderProcess(settings.render) as renderer:  # trial renders, under the service's limits
        build = read_and_build(settings, renderer)
    errors, warnings = _summary(build.problems)
    if as_json:
        print_json(
            {
                "ok": errors == 0,
                "errors": errors,
                "warnings": warnings,
                "raw_dir": str(settings.raw_dir),
                "fingerprint": build.raw.fingerprint,
                "problems": [p.to_dict() for p in build.problems],
                "scales": [_scale_json(t) for t in _evaluation_templates(build)],
            }
        )
    else:
        for problem in build.problems:
            click.echo(str(problem))
        for template in _evaluation_templates(build):
            click.echo(_scale_line(template))
        verdict = "ok" if errors == 0 else "FAILED"
        click.echo(f"{verdict}: {errors} error(s), {warnings} warning(s) in {settings.raw_dir}", err=True)
    sys.exit(0 if errors == 0 else 1)


def _evaluation_templates(build: Build) -> list[Template]:
    from daydreamd.core.stages import Stage

    return [t for t in build.experiment.templates if t.stage is Stage.EVALUATION and t.verdict is not None]


def _scale_line(template: Template) -> str:
    """``validate``'s line for one evaluation template: its scale and where that came from."""
    from daydreamd.core.scales import ScaleSource

    assert template.verdict is not None
    scale = template.verdict.scale
    where = (
        "evaluation_templates.csv"
        if scale.source is ScaleSource.CSV
        else f"templates/evaluation/{template.template_id}.txt"
    )
    line = f" line {scale.line}" if scale.line is not None else ""
    source = (
        f"{scale.source} ({where}{line})"
        if scale.source is not ScaleSource.DEFAULT
        else "default (the template states none)"
    )
    state = "active" if template.active else "inactive"
    return (
        f"scale: evaluation template {template.template_id} ({state}): {scale.label} from {source}, "
        f"verdict label {template.verdict.label!r}"
    )


def _scale_json(template: Template) -> dict[str, object]:
    assert template.verdict is not None
    scale = template.verdict.scale
    return {
        "template_id": template.template_id,
        "active": template.active,
        "label": template.verdict.label,
        "score_min": scale.minimum,
        "score_max": scale.maximum,
        "source": str(scale.source),
        "line": scale.line,
    }


@cli.group(context_settings=CONTEXT, invoke_without_command=True)
@data_option
@json_option
@click.option(
    "--write", is_flag=True, help="Write data/cohorts/<cohort_id>/ and extend data/combo_mappings.csv."
)
@click.pass_context
def cohort(ctx: click.Context, data: Path | None, as_json: bool, write: bool) -> None:
    """Build the cohort and show its id and size per stage, template and model.

    Needs an experiment without errors (see `daydreamctl validate`). With --write, the
    manifest and membership are written atomically; unchanged inputs give identical files.
    `daydreamctl cohort compile SPEC` compiles a cohort spec instead (a dry run).

    \b
    Examples:
      daydreamctl cohort
      daydreamctl cohort --write --json
      daydreamctl cohort compile data/cohorts/rejudge/spec/config.yaml --limit 5
    """
    obj: Context = ctx.obj
    obj.data = data
    if ctx.invoked_subcommand is not None:
        return
    from daydreamd.core.build import read_and_build
    from daydreamd.storage.cohort_files import write_cohort

    settings = obj.settings()
    build = read_and_build(settings)
    if build.cohort is None:
        for problem in build.problems:
            click.echo(str(problem), err=True)
        errors, _ = _summary(build.problems)
        raise click.ClickException(f"no cohort: the experiment has {errors} error(s); fix them and run again")
    result: dict[str, Any] = {
        "cohort_id": build.cohort.cohort_id,
        "k": build.cohort.manifest["k"],
        "description_level": build.cohort.manifest["description_level"],
        "combos": len(build.cohort.combos),
        "counts": build.cohort.counts(),
        "breakdown": build.cohort.breakdown(),
        "warnings": len(build.problems),
    }
    if write:
        try:
            written = write_cohort(settings.paths.data_dir, build.cohort)
        except DaydreamError as exc:
            raise click.ClickException(str(exc)) from exc
        result |= {"manifest": str(written.manifest), "membership": str(written.membership)}
        result["new_combos"] = written.new_combos
    if as_json:
        print_json(result)
    else:
        _print_cohort(result)


@cohort.command("compile", context_settings=CONTEXT)
@click.argument("spec", type=click.Path(path_type=Path))
@data_option
@click.option("--limit", type=click.IntRange(min=1), help="Print at most N rows.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default="csv",
    show_default=True,
    help="Rows as CSV (with a header) or as one JSON object per line.",
)
@click.option("--seed", type=int, help="Shuffle the rows with this seed (overrides the spec's output.seed).")
@click.pass_obj
def compile_spec_verb(
    obj: Context, spec: Path, data: Path | None, limit: int | None, fmt: str, seed: int | None
) -> None:
    """Compile a cohort spec into its rows, checking its ids against data/1_raw (a dry run).

    SPEC is a spec file (config.yaml, .toml or .json, the original project's format) or the
    folder holding it. Rows go to stdout, problems to stderr as `path:line: level: message`;
    exits 1 on any error. Nothing is written and no service is needed.

    \b
    Examples:
      daydreamctl cohort compile data/cohorts/rejudge/spec --limit 5
      daydreamctl cohort compile spec/config.yaml --format jsonl --data ../other/data
    """
    from daydreamd.cli.speccompile import run_compile

    if data is not None:
        obj.data = data
    sys.exit(run_compile(obj.settings(), spec, limit=limit, fmt=fmt, seed=seed))


@cohort.command("new", context_settings=CONTEXT)
@click.argument("name")
@click.option("--from-top", "top", type=int, required=True, metavar="N", help="How many essays to take.")
@click.option(
    "--by",
    required=True,
    metavar="EVAL_TEMPLATE[:JUDGE]",
    help="Rank by the mean score of this evaluation template (of this judge only, with :JUDGE).",
)
@click.option("--cohort", "source", metavar="SRC", help="The cohort to rank (default: the current cohort).")
@click.option(
    "--evaluation-template",
    "evaluation_templates",
    multiple=True,
    metavar="T",
    help="Re-judge with this template; repeatable (default: the active evaluation templates).",
)
@click.option(
    "--judge",
    "judges",
    multiple=True,
    metavar="J",
    help="Re-judge on this model; repeatable (default: the evaluation models).",
)
@data_option
@json_option
@click.pass_context
def new_cohort_verb(
    ctx: click.Context,
    name: str,
    top: int,
    by: str,
    source: str | None,
    evaluation_templates: tuple[str, ...],
    judges: tuple[str, ...],
    data: Path | None,
    as_json: bool,
) -> None:
    """Write a cohort spec that re-judges the top N essays of an earlier cohort.

    Ranks the essays of SRC by the mean recorded score of their done evaluations by
    EVAL_TEMPLATE (and JUDGE), then the number of those scores, then gen_id, and writes
    data/cohorts/NAME/spec/config.yaml (how they were chosen, in comments) and
    items/top_essays.csv (each essay's coordinates), never over an existing spec. Offline:
    reads the run state (paths.state_db) and data/cohorts/SRC/membership.csv.

    \b
    Examples:
      daydreamctl cohort new rejudge-top20 --from-top 20 --by novelty-judge
      daydreamctl cohort new rigor-top5 --from-top 5 --by rigor-judge:sonnet_4 --judge gpt_4o_mini
    """
    from daydreamd.cli.cohortnew import run_new

    obj: Context = ctx.obj
    if data is not None:
        obj.data = data
    group_json = ctx.parent is not None and bool(ctx.parent.params.get("as_json"))
    run_new(
        obj.settings(),
        name,
        top=top,
        by=by,
        source=source,
        evaluation_templates=evaluation_templates,
        judges=judges,
        as_json=as_json or group_json,
    )


@cohort.command("list", context_settings=CONTEXT)
@json_option
@click.pass_context
def list_cohorts_verb(ctx: click.Context, as_json: bool) -> None:
    """List the cohorts of the running service: the default one and each spec folder's.

    For each: its size and progress per stage, what was spent on its generations (a generation
    two cohorts share counts in both), and when it was last built. Exits 3 when the service is
    not running.

    \b
    Examples:
      daydreamctl cohort list
      daydreamctl cohort list --json
    """
    from daydreamd.cli.live import list_cohorts

    group_json = ctx.parent is not None and bool(ctx.parent.params.get("as_json"))
    list_cohorts(ctx.obj, as_json=as_json or group_json)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--stage",
    required=True,
    type=STAGE_CHOICE,
    help="The stage whose parser to use.",
)
@click.option("--parser", "parser_name", required=True, help="A parser registered for that stage.")
@click.option(
    "--scale",
    default="0-10",
    show_default=True,
    help="Evaluation only: the template's score scale, MIN-MAX (validate prints each template's).",
)
@click.option("--label", default="SCORE", show_default=True, help="Evaluation only: the verdict's label.")
@click.option(
    "--explain", is_flag=True, help="Evaluation only: print the decision step by step and the score's line."
)
@click.argument("file", type=click.File("r", encoding="utf-8"))
@json_option
def parse(
    stage: str, parser_name: str, scale: str, label: str, explain: bool, file: Any, as_json: bool
) -> None:
    """Run a parser on a saved reply and print what it extracts.

    For an evaluation parser this prints just the score (with --explain, how it was found).
    Exits 0 on success, 1 with the parser's error otherwise. Use it to check a new judge
    template's replies. FILE may be `-`.

    \b
    Examples:
      daydreamctl parse --stage evaluation --parser in_last_line data/gens/evaluation/v_.../raw.txt
      daydreamctl parse --stage evaluation --parser complex --scale 0-9 --explain reply.txt
      daydreamctl parse --stage draft --parser essay_idea_last reply.txt
    """
    from daydreamd.core.errors import ParseError
    from daydreamd.core.parsers import format_score, parse_reply, read_verdict
    from daydreamd.core.prompts import normalize_newlines

    raw = normalize_newlines(file.read())
    try:
        if stage != "evaluation":
            result = parse_reply(stage, parser_name, raw)
            verdict = None
        else:
            verdict = read_verdict(parser_name, raw, _verdict_spec(scale, label))
            result = format_score(verdict.score)
    except ParseError as exc:
        if as_json:
            print_json({"ok": False, "error": str(exc), "kind": exc.kind, "candidates": list(exc.candidates)})
            sys.exit(1)
        raise click.ClickException(f"{file.name}: {exc}") from exc
    if as_json:
        print_json({"ok": True, "parsed": result} | ({"verdict": verdict.provenance()} if verdict else {}))
    elif explain and verdict is not None:
        for number, step in enumerate(verdict.steps, start=1):
            click.echo(f"{number}. {step}")
        for candidate in verdict.set_aside:
            click.echo(f"   set aside {candidate.describe()}")
        click.echo(f"score {result} from line {verdict.line}: {verdict.text}")
    else:
        click.echo(result, nl=not result.endswith("\n"))


def _verdict_spec(scale: str, label: str) -> VerdictSpec:
    """``--scale 0-9 --label SCORE`` as a spec, or a usage error naming the option."""
    from daydreamd.core.scales import Scale, ScaleSource
    from daydreamd.core.verdicts import VerdictSpec

    low, sep, high = scale.partition("-")
    try:
        minimum, maximum = float(low), float(high)
    except ValueError:
        raise click.BadParameter(f"{scale!r} is not MIN-MAX, e.g. 0-9", param_hint="--scale") from None
    if not sep or minimum >= maximum:
        raise click.BadParameter(f"{scale!r} is not MIN-MAX with MIN < MAX", param_hint="--scale")
    return VerdictSpec(label=label, scale=Scale(minimum, maximum, ScaleSource.CSV))


@cli.command(context_settings=CONTEXT)
@data_option
@json_option
@click.option(
    "--stage",
    type=STAGE_CHOICE,
    help="Only this stage (default: all stages, in order).",
)
@click.option("--limit", type=click.IntRange(min=1), help="Render at most N prompts.")
@click.pass_obj
def render(obj: Context, data: Path | None, as_json: bool, stage: str | None, limit: int | None) -> None:
    """Render prompts of the current cohort into their prompt.txt, calling no LLM.

    A dry run for templates: drafts always render; essays and evaluations render when their
    parent's parsed.txt exists. Failures are listed by gen_id; exit 1 if any failed.

    \b
    Examples:
      daydreamctl render --stage draft --limit 5
      daydreamctl render --json
    """
    from daydreamd.sandbox.render_process import RenderProcess

    obj.data = data
    settings = obj.settings()
    renderer = RenderProcess(settings.render)
    with renderer:
        _render(settings, renderer, as_json=as_json, stage=stage, limit=limit)


def _render(
    settings: Settings, renderer: RenderProcess, *, as_json: bool, stage: str | None, limit: int | None
) -> None:
    from daydreamd.cli.dryrun import render_to_files
    from daydreamd.core.build import read_and_build
    from daydreamd.storage.gens import GensStore

    build = read_and_build(settings, renderer)
    if build.cohort is None:
        for problem in build.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException("no cohort: the experiment has errors; see daydreamctl validate")
    factory = build.jobs
    assert factory is not None  # built with the cohort
    generations = (g for g in build.cohort.generations if stage is None or g.stage == stage)
    jobs = (job for g in generations if (job := factory.job(g)) is not None)
    store = GensStore(settings.paths.data_dir)
    report = render_to_files(store, jobs, renderer, limit=limit)
    if as_json:
        print_json({"cohort_id": build.cohort.cohort_id, **report.to_dict()})
    else:
        for gen_id, message in report.failures.items():
            click.echo(f"{gen_id}: {message}")
        click.echo(
            f"rendered {report.rendered} prompt(s) into {store.root}; {len(report.failures)} failed, "
            f"{report.waiting_for_parent} waiting for their parent, {report.skipped_copy} copy (no prompt)"
        )
    sys.exit(1 if report.failures else 0)


def _print_cohort(result: dict[str, Any]) -> None:
    counts = result["counts"]
    total = sum(counts.values())
    click.echo(
        f"cohort {result['cohort_id']}: {result['combos']} combos (k={result['k']}, "
        f"{result['description_level']} descriptions), {total} generations"
    )
    for stage, count in counts.items():
        click.echo(f"  {stage:<11} {count:>9,}")
        for axis in ("templates", "models"):
            items = result["breakdown"][stage][axis]
            if items:
                listing = ", ".join(f"{name} {n:,}" for name, n in items.items())
                click.echo(f"    {axis:<10}{listing}")
    if result["warnings"]:
        click.echo(f"  ({result['warnings']} warning(s): see daydreamctl validate)")
    if "manifest" in result:
        click.echo(f"wrote {result['manifest']}")
        click.echo(f"wrote {result['membership']} ({result['new_combos']} new combos recorded)")


def main() -> None:
    """Console entry point."""
    cli(prog_name="daydreamctl")


if __name__ == "__main__":
    main()
