"""``daydreamctl cohort compile SPEC``: compile a cohort spec against the experiment, a dry run.

Reads ``data/1_raw`` for the catalog (every template and model there, active or not, and the combo
ids of ``data/combo_mappings.csv`` when it exists), reads the spec and its includes
(:mod:`daydreamd.storage.spec_files`), compiles it (:mod:`daydreamd.core.spec`) and prints the rows
as CSV or JSON lines on stdout; problems go to stderr as ``path:line: level: message``. Nothing is
written and no service is needed. Imported only when the verb runs.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import TextIO

import click

from daydreamd.core.config import Settings
from daydreamd.core.loader import load_experiment
from daydreamd.core.problems import Level, has_errors, warning
from daydreamd.core.snapshot import read_raw_dir
from daydreamd.core.spec.catalog import Catalog, catalog_from_experiment
from daydreamd.core.spec.compile import compile_spec
from daydreamd.core.spec.parsing import Value
from daydreamd.storage.cohort_files import combo_concepts
from daydreamd.storage.layout import DataLayout
from daydreamd.storage.spec_files import read_spec


def experiment_catalog(settings: Settings) -> tuple[Catalog | None, list[str]]:
    """The catalog of the experiment in ``1_raw`` (None when it has errors) and the lines to print."""
    raw = read_raw_dir(settings.raw_dir)
    experiment, problems = load_experiment(raw)
    lines: list[str] = []
    if has_errors(problems):
        lines = [str(p) for p in problems if p.level is Level.ERROR]
        lines.append(
            f"error: the experiment in {settings.raw_dir} has errors, so the ids a spec may name are not "
            "known; fix them first (daydreamctl validate)"
        )
        return None, lines
    combos_file = DataLayout(settings.paths.data_dir).combo_mappings
    combos: list[str] | None = None
    if combos_file.is_file():
        combos = list(combo_concepts(settings.paths.data_dir))
    else:
        lines.append(
            str(
                warning(
                    combos_file.name,
                    "not found: combo ids in the spec are not checked (a cohort --write "
                    "records the combos it builds there)",
                )
            )
        )
    return catalog_from_experiment(experiment, combos=combos, raw_label=raw.label), lines


def run_compile(settings: Settings, spec: Path, *, limit: int | None, fmt: str, seed: int | None) -> int:
    """Compile ``spec`` and print its rows; the exit code (1 on any error)."""
    catalog, lines = experiment_catalog(settings)
    for line in lines:
        click.echo(line, err=True)
    if catalog is None:
        return 1
    compiled, problems = compile_spec(read_spec(spec), catalog)
    for problem in problems:
        click.echo(str(problem), err=True)
    if compiled is None:
        errors = sum(1 for p in problems if p.level is Level.ERROR)
        click.echo(f"FAILED: {errors} error(s) in {spec}", err=True)
        return 1
    rows = compiled.rows(seed=seed)
    if limit is not None:
        rows = islice(rows, limit)
    out = sys.stdout
    try:
        written = _write(out, compiled.columns, rows, fmt)
        out.flush()
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        return 0
    click.echo(
        f"ok: {compiled.count:,} row(s), {len(compiled.columns)} column(s); printed {written:,}", err=True
    )
    return 0


def _write(out: TextIO, columns: tuple[str, ...], rows: Iterable[tuple[Value, ...]], fmt: str) -> int:
    written = 0
    if fmt == "jsonl":
        dumps = json.dumps
        for row in rows:
            out.write(dumps(dict(zip(columns, map(_plain, row), strict=True)), ensure_ascii=False) + "\n")
            written += 1
        return written
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([v if isinstance(v, str) else json.dumps(_plain(v)) for v in row])
        written += 1
    return written


def _plain(value: Value) -> object:
    """A value for JSON: text as it is, a tuple (a level no rule expanded) as a list."""
    return value if isinstance(value, str) else [_plain(v) for v in value]
