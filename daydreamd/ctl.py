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

from daydreamd import __version__
from daydreamd.config import Settings, load_settings
from daydreamd.errors import DaydreamError
from daydreamd.problems import Level, Problem

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
@click.version_option(__version__, "-V", "--version")
@click.pass_context
def cli(ctx: click.Context, config: Path | None) -> None:
    """Control and inspect daydreamd, the combinatorial LLM experiment service.

    \b
    Offline (no service needed):
      daydreamctl validate          check data/1_raw, list every problem
      daydreamctl cohort --write    build the cohort and write data/cohorts/<id>/
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
    from daydreamd.build import read_and_build

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
    from daydreamd.build import read_and_build
    from daydreamd.cohort_files import write_cohort

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
