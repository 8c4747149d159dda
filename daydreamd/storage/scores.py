"""Results on disk: score rows in from the run state or the gens store, CSV tables out (sync shell).

Two sources give the same rows (:class:`daydreamd.core.scores.ScoreRow`), in the same order:

* **SQLite** (the default, :mod:`~daydreamd.storage.score_db`): the essays with their drafts,
  then the finished evaluations with the score recorded when each finished. The database is
  opened read-only (``mode=ro``), so results can be computed while the service runs.
* **Files** (``--from-files``, :mod:`~daydreamd.storage.score_files`):
  ``data/gens/evaluation/*/metadata.json`` and ``parsed.txt``, with the essay's and draft's
  ``metadata.json``, including metadata written by the old pipeline.

Both share everything else (:mod:`~daydreamd.storage.score_inputs`): concepts per combo,
``score_max`` per evaluation template and cohort membership.

Only finished evaluations are rows: ``done`` ones with their score and ``failed`` ones with
their error kind. A ``done`` evaluation whose score cannot be found is a failed row with kind
``missing_score`` (or ``parse_error`` when ``parsed.txt`` holds no number), never dropped.

Tables (:class:`daydreamd.core.table.Table`) are written here as CSV, atomically, header always.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from daydreamd.core.collector import paused_gc
from daydreamd.core.config import Settings
from daydreamd.core.ids import cohort_id_problem
from daydreamd.core.scores import Scores, with_template_versions
from daydreamd.core.table import Table, format_number
from daydreamd.storage.atomic import write_atomic_with
from daydreamd.storage.cohort_files import template_versions
from daydreamd.storage.readers import latest_applied_cohort
from daydreamd.storage.score_db import read_rows_from_db
from daydreamd.storage.score_files import read_rows_from_files
from daydreamd.storage.score_inputs import Loaded, ResultsError


def load_scores(
    *, data_dir: Path, db_path: Path, cohort_id: str | None, from_files: bool
) -> tuple[Scores, Loaded]:
    """Read the rows from the chosen source and index them for the tables."""
    with paused_gc():
        if from_files:
            loaded = read_rows_from_files(data_dir, cohort_id=cohort_id)
        else:
            loaded = read_rows_from_db(db_path, data_dir, cohort_id=cohort_id)
        if cohort_id is None:  # every cohort: two versions of a template must not be pooled
            loaded.rows = with_template_versions(loaded.rows, template_versions(data_dir))
        scores = Scores(loaded.rows)
    loaded.rows = scores.rows
    return scores, loaded


def resolve_cohort(settings: Settings, explicit: str | None, *, use_state: bool = True) -> str:
    """The cohort to report on: the one named, the configured override, the one the service applied
    last (from the run state; skipped when ``use_state`` is false) or the one ``1_raw`` builds now.

    Raises:
        ResultsError: ``explicit`` is not a plain cohort id, or there is no current cohort.
    """
    if explicit:
        if problem := cohort_id_problem(explicit):  # it names a folder the report is written into
            raise ResultsError(problem)
        return explicit
    if settings.experiment.cohort:
        return settings.experiment.cohort
    if use_state:
        applied = latest_applied_cohort(settings.paths.state_db)
        if applied:
            return applied
    from daydreamd.core.build import read_and_build

    build = read_and_build(settings)
    if build.cohort is not None:
        return build.cohort.cohort_id
    raise ResultsError(
        f"no current cohort: the run state names none and {settings.raw_dir} has errors "
        "(see daydreamctl validate); pass --cohort ID, or --all"
    )


# -- writing ---------------------------------------------------------------------------------------


def write_table(directory: Path, table: Table) -> Path:
    """Write one table as CSV under ``directory``, atomically (header always, even with no rows)."""
    path = directory / table.path
    write_atomic_with(path, lambda f: _write_csv(f, table))
    return path


def write_tables(directory: Path, tables: Iterable[Table]) -> list[Path]:
    """Write every table; returns their paths."""
    return [write_table(directory, table) for table in tables]


def _write_csv(out: IO[bytes], table: Table) -> None:
    text = io.TextIOWrapper(out, encoding="utf-8", newline="", write_through=False)
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(table.columns)
    if table.text:
        _write_text_rows(text, writer, table.rows, len(table.columns) - 1)
    else:
        fmt: Callable[[float], str] = format_number
        writer.writerows([fmt(c) if type(c) is float else c for c in row] for row in table.rows)
    text.flush()
    text.detach()


def _write_text_rows(text: IO[str], writer: Any, rows: Iterable[tuple[Any, ...]], commas: int) -> None:
    """Rows of text cells, joined directly (3x faster than csv.writer for a million rows).

    A row is handed to ``csv.writer`` instead whenever a cell would need quoting (a comma, a
    quote or a line break in it) or is not text; the bytes are the same either way.
    """
    join = ",".join
    chunk: list[str] = []
    for row in rows:
        try:
            line = join(row)
        except TypeError:  # a cell that is not text: let csv write it
            line = ""
        if line and line.count(",") == commas and '"' not in line and "\n" not in line and "\r" not in line:
            chunk.append(line)
            if len(chunk) < 4096:
                continue
            _flush(text, chunk)
            continue
        _flush(text, chunk)
        writer.writerow(row)
    _flush(text, chunk)


def _flush(text: IO[str], lines: list[str]) -> None:
    if lines:
        lines.append("")
        text.write("\n".join(lines))
        lines.clear()
