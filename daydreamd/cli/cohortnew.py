"""``daydreamctl cohort new NAME --from-top N --by T[:J]``: a cohort spec that re-judges the best essays.

The choice and the spec's text are :mod:`daydreamd.core.spec.curation`'s, the reads of the run
state and the source cohort's ``membership.csv`` are :mod:`daydreamd.storage.rankings`'; this
module validates the arguments, joins the two, and writes ``data/cohorts/NAME/spec/``
(``config.yaml`` and ``items/top_essays.csv``), to be committed with the experiment.

The spec folder is built under a temporary name, checked (the YAML reads back as written and the
spec compiles to exactly the chosen essays) and renamed into place, so a reader sees no spec or
the whole of it, and an existing spec is never touched. Imported only when the verb runs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from daydreamd.cli.common import print_json
from daydreamd.core.config import Settings
from daydreamd.core.ids import cohort_id_problem
from daydreamd.core.spec.compile import compile_spec
from daydreamd.core.spec.curation import (
    ITEM_COLUMNS,
    ITEMS_FILE,
    Criterion,
    CurationError,
    Essay,
    Ranked,
    command_line,
    items_csv,
    rank_source,
    ranking_lines,
    spec_mapping,
    spec_text,
)
from daydreamd.core.timestamps import utc_now
from daydreamd.storage import rankings
from daydreamd.storage.atomic import fsync_dir, write_atomic
from daydreamd.storage.layout import DataLayout
from daydreamd.storage.spec_files import read_spec

# -- writing ---------------------------------------------------------------------------------------


def write_spec_folder(
    spec_dir: Path, files: dict[str, str], expected: dict[str, Any], rows: list[tuple[str, ...]]
) -> None:
    """Build the spec in a hidden sibling folder, check it, and rename it to ``spec_dir``.

    Each file goes through :func:`write_atomic`; the folder appears whole with the one rename (which
    fails, rather than replace anything, if a ``spec_dir`` with files appeared meanwhile).
    """
    cohort_dir = spec_dir.parent
    created = not cohort_dir.exists()
    tmp = cohort_dir / f".{spec_dir.name}.{os.getpid()}.tmp"
    try:
        cohort_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run that had this pid
        for name, text in files.items():
            write_atomic(tmp / name, text)
        check_written(tmp, expected, rows)
        refuse_existing(spec_dir)
        try:
            tmp.rename(spec_dir)
        except OSError as exc:
            raise _exists(spec_dir, f" ({exc})") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            with suppress(OSError):
                cohort_dir.rmdir()
        raise
    fsync_dir(cohort_dir)


def check_written(folder: Path, expected: dict[str, Any], rows: list[tuple[str, ...]]) -> None:
    """The written spec reads back as meant and compiles to exactly the chosen essays, in order.

    Hand-written YAML is checked rather than trusted: an id YAML would read differently, or a CSV
    cell the include reader would change, stops the write instead of committing a wrong spec.
    """
    text = (folder / "config.yaml").read_text(encoding="utf-8")
    if yaml.safe_load(text) != expected:
        raise CurationError("internal error: config.yaml does not read back as written; nothing was written")
    compiled, problems = compile_spec(read_spec(folder))
    if compiled is None:
        found = "; ".join(str(p) for p in problems)
        raise CurationError(f"internal error: the spec does not compile ({found}); nothing was written")
    columns = compiled.columns
    index = [columns.index(c) for c in ITEM_COLUMNS]
    got = list(dict.fromkeys(tuple(str(row[i]) for i in index) for row in compiled.rows()))
    if got != rows:
        raise CurationError(
            "internal error: the spec compiles to other essays than chosen; nothing was written"
        )


def refuse_existing(spec_dir: Path) -> None:
    """A spec folder (or a link by its name) is never replaced: someone made or committed it."""
    if spec_dir.exists() or spec_dir.is_symlink():
        raise _exists(spec_dir)


def _exists(spec_dir: Path, detail: str = "") -> CurationError:
    return CurationError(f"{spec_dir} already exists; choose another name or remove it{detail}")


# -- the verb --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    """What the verb wrote, for the terminal and ``--json``."""

    name: str
    source: str
    criterion: Criterion
    requested: int
    ranked: int
    chosen: tuple[Ranked, ...]
    essays: tuple[Essay, ...]
    spec_dir: Path
    evaluation_templates: tuple[str, ...]
    judges: tuple[str, ...]
    warnings: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document: the choice, the files written, and each essay with its rank."""
        return {
            "cohort": self.name,
            "source_cohort": self.source,
            "by": {"evaluation_template": self.criterion.template, "judge": self.criterion.judge},
            "requested": self.requested,
            "ranked": self.ranked,
            "chosen": len(self.chosen),
            "spec_dir": str(self.spec_dir),
            "config": str(self.spec_dir / "config.yaml"),
            "items": str(self.spec_dir / ITEMS_FILE),
            "evaluation_templates": list(self.evaluation_templates),
            "judges": list(self.judges),
            "essays": [
                {"rank": place, "mean_score": round(r.mean, 4), "evaluations": r.evaluations} | asdict(essay)
                for place, (r, essay) in enumerate(zip(self.chosen, self.essays, strict=True), start=1)
            ],
            "warnings": list(self.warnings),
        }


def run_new(
    settings: Settings,
    name: str,
    *,
    top: int,
    by: str,
    source: str | None,
    evaluation_templates: Sequence[str],
    judges: Sequence[str],
    as_json: bool,
) -> None:
    """The verb: every refusal becomes a CLI error (exit 1) saying what to change."""
    try:
        written = new_spec(
            settings,
            name,
            top=top,
            by=by,
            source=source,
            evaluation_templates=tuple(dict.fromkeys(evaluation_templates)),
            judges=tuple(dict.fromkeys(judges)),
        )
    except CurationError as exc:
        raise click.ClickException(str(exc)) from exc
    for warning in written.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        print_json(written.to_json())
        return
    click.echo(f"wrote {written.spec_dir / 'config.yaml'}")
    click.echo(
        f"wrote {written.spec_dir / ITEMS_FILE}: the top {len(written.chosen)} of {written.ranked} ranked "
        f"essay(s) of cohort {written.source} by {written.criterion.describe()}"
    )
    for line in ranking_lines(written.chosen, "  "):
        click.echo(line)
    click.echo(f"check it: daydreamctl cohort compile {written.spec_dir}")


def new_spec(
    settings: Settings,
    name: str,
    *,
    top: int,
    by: str,
    source: str | None,
    evaluation_templates: tuple[str, ...],
    judges: tuple[str, ...],
) -> Written:
    """Rank, choose and write ``data/cohorts/NAME/spec/``; :class:`CurationError` on any refusal."""
    if problem := cohort_id_problem(name):
        raise CurationError(f"NAME: {problem}")
    if top < 1:
        raise CurationError(f"--from-top {top}: give the number of essays to take, 1 or more")
    criterion = Criterion.parse(by)
    layout = DataLayout(settings.paths.data_dir)
    spec_dir = layout.cohort_dir(name) / "spec"
    refuse_existing(spec_dir)
    if evaluation_templates or judges:
        _check_ids(settings, evaluation_templates, judges)
    with rankings.open_run_state(settings.paths.state_db) as db:
        cohort_id = source or rankings.current_cohort(db)
        if problem := cohort_id_problem(cohort_id):
            raise CurationError(f"--cohort: {problem}")
        if cohort_id == name:
            raise CurationError(f"NAME {name!r} is the source cohort; give the new cohort its own name")
        ranked = rank_source(rankings.read_source(db, layout, cohort_id, criterion), criterion)
        chosen = tuple(ranked[:top])
        essays = tuple(rankings.read_essay(db, r.essay_gen_id) for r in chosen)
    warnings: tuple[str, ...] = ()
    if len(chosen) < top:
        warnings = (
            f"only {len(chosen)} essay(s) of cohort {cohort_id} have a scored evaluation by "
            f"{criterion.describe()}; wrote those, not {top}",
        )
    text = spec_text(
        source=cohort_id,
        criterion=criterion,
        chosen=chosen,
        requested=top,
        when=utc_now(),
        command=command_line(
            name, top=top, by=by, source=cohort_id, evaluation_templates=evaluation_templates, judges=judges
        ),
        evaluation_templates=evaluation_templates,
        judges=judges,
    )
    rows = [essay.row() for essay in essays]
    files = {"config.yaml": text, ITEMS_FILE: items_csv(essays)}
    try:
        write_spec_folder(spec_dir, files, spec_mapping(evaluation_templates, judges), rows)
    except OSError as exc:
        raise CurationError(f"cannot write {spec_dir}: {exc}") from exc
    return Written(
        name,
        cohort_id,
        criterion,
        top,
        len(ranked),
        chosen,
        essays,
        spec_dir,
        evaluation_templates,
        judges,
        warnings,
    )


def _check_ids(settings: Settings, evaluation_templates: Sequence[str], judges: Sequence[str]) -> None:
    """``--evaluation-template`` and ``--judge`` ids must exist in ``1_raw`` (active or not)."""
    from daydreamd.cli.speccompile import experiment_catalog

    catalog, lines = experiment_catalog(settings)
    if catalog is None:
        raise CurationError("\n".join(lines))
    raw = settings.raw_dir
    for template in evaluation_templates:
        if template not in catalog.evaluation_templates:
            raise CurationError(
                f"--evaluation-template {template!r} is not an evaluation template in "
                f"{raw / 'evaluation_templates.csv'} "
                f"(known: {', '.join(sorted(catalog.evaluation_templates))})"
            )
    for judge in judges:
        if judge not in catalog.evaluation_models:
            raise CurationError(
                f"--judge {judge!r} is not a model in {raw / 'llm_models.csv'} "
                f"(known: {', '.join(sorted(catalog.evaluation_models))})"
            )
