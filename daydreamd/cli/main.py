"""``daydreamctl``: the command line for daydreamd.

Offline verbs (``validate``, ``cohort``) call the pure core directly and need no service.
Each verb's docstring is its ``--help``. Exit codes: 0 ok, 1 the operation failed (e.g. the
experiment has errors), 2 usage error.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from daydreamd.core.config import Settings, load_settings
from daydreamd.core.errors import DaydreamError
from daydreamd.core.problems import Level, Problem

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Context:
    """What every verb gets: the config path and the data dir override, resolved lazily."""

    def __init__(self, config: Path | None, data: Path | None) -> None:
        self.config = config
        self.data = data

    def settings(self) -> Settings:
        """Load the settings, turning config errors into a clean CLI error."""
        try:
            return load_settings(self.config, os.environ, data_dir=self.data)
        except DaydreamError as exc:
            raise click.ClickException(str(exc)) from exc


def _default_config() -> Path | None:
    path = Path("config.toml")
    return path if path.is_file() else None


@click.group(context_settings=CONTEXT)
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


def json_option(func: Any) -> Any:
    """``--json``: machine-readable output."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(func)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


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

    obj.data = data
    settings = obj.settings()
    build = read_and_build(settings)
    errors, warnings = _summary(build.problems)
    if as_json:
        _print_json(
            {
                "ok": errors == 0,
                "errors": errors,
                "warnings": warnings,
                "raw_dir": str(settings.raw_dir),
                "fingerprint": build.raw.fingerprint,
                "problems": [p.to_dict() for p in build.problems],
            }
        )
    else:
        for problem in build.problems:
            click.echo(str(problem))
        verdict = "ok" if errors == 0 else "FAILED"
        click.echo(f"{verdict}: {errors} error(s), {warnings} warning(s) in {settings.raw_dir}", err=True)
    sys.exit(0 if errors == 0 else 1)


@cli.command(context_settings=CONTEXT)
@data_option
@json_option
@click.option(
    "--write", is_flag=True, help="Write data/cohorts/<cohort_id>/ and extend data/combo_mappings.csv."
)
@click.pass_obj
def cohort(obj: Context, data: Path | None, as_json: bool, write: bool) -> None:
    """Build the cohort and show its id and size per stage, template and model.

    Needs an experiment without errors (see `daydreamctl validate`). With --write, the
    manifest and membership are written atomically; unchanged inputs give identical files.

    \b
    Examples:
      daydreamctl cohort
      daydreamctl cohort --write --json
    """
    from daydreamd.core.build import read_and_build
    from daydreamd.storage.cohort_files import write_cohort

    obj.data = data
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
        _print_json(result)
    else:
        _print_cohort(result)


@cli.command(context_settings=CONTEXT)
@click.option(
    "--stage",
    required=True,
    type=click.Choice(["draft", "essay", "evaluation"]),
    help="The stage whose parser to use.",
)
@click.option("--parser", "parser_name", required=True, help="A parser registered for that stage.")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@json_option
def parse(stage: str, parser_name: str, file: Any, as_json: bool) -> None:
    """Run a parser on a saved reply and print what it extracts.

    For an evaluation parser this prints just the score. Exits 0 on success, 1 with the
    parser's error otherwise. Use it to check a new judge template's replies. FILE may be `-`.

    \b
    Examples:
      daydreamctl parse --stage evaluation --parser in_last_line data/gens/evaluation/v_.../raw.txt
      daydreamctl parse --stage draft --parser essay_idea_last reply.txt
    """
    from daydreamd.core.errors import ParseError
    from daydreamd.core.parsers import parse_reply
    from daydreamd.core.prompts import normalize_newlines

    try:
        result = parse_reply(stage, parser_name, normalize_newlines(file.read()))
    except ParseError as exc:
        if as_json:
            _print_json({"ok": False, "error": str(exc)})
            sys.exit(1)
        raise click.ClickException(f"{file.name}: {exc}") from exc
    if as_json:
        _print_json({"ok": True, "parsed": result})
    else:
        click.echo(result, nl=not result.endswith("\n"))


@cli.command(context_settings=CONTEXT)
@data_option
@json_option
@click.option(
    "--stage",
    type=click.Choice(["draft", "essay", "evaluation"]),
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
    from daydreamd.core.build import read_and_build
    from daydreamd.core.jobs import Jobs
    from daydreamd.cli.dryrun import render_to_files
    from daydreamd.storage.gens import GensStore

    obj.data = data
    settings = obj.settings()
    build = read_and_build(settings)
    if build.cohort is None:
        for problem in build.problems:
            click.echo(str(problem), err=True)
        raise click.ClickException("no cohort: the experiment has errors; see daydreamctl validate")
    factory = Jobs(build.experiment, settings)
    generations = (g for g in build.cohort.generations if stage is None or g.stage == stage)
    jobs = (job for g in generations if (job := factory.job(g)) is not None)
    store = GensStore(settings.paths.data_dir)
    report = render_to_files(store, jobs, limit=limit)
    if as_json:
        _print_json({"cohort_id": build.cohort.cohort_id, **report.to_dict()})
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


def _register_live_verbs() -> None:
    from daydreamd.cli import live as ctl_live
    from daydreamd.cli import logs as ctl_logs
    from daydreamd.cli import ops as ctl_ops
    from daydreamd.cli import results as ctl_results

    ctl_live.register(cli)
    ctl_ops.register(cli)
    ctl_logs.register(cli)
    ctl_results.register(cli)


_register_live_verbs()


def main() -> None:
    """Console entry point."""
    cli(prog_name="daydreamctl")


if __name__ == "__main__":
    main()
