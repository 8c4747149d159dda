"""``daydreamctl cohort new NAME --from-top N --by T[:J]``: a cohort spec that re-judges the best essays.

"Judge the top 20 essays again, with new judges" is a choice worth keeping: made by hand it can
be neither reproduced nor reviewed. This verb makes it from the recorded scores and writes it as
a cohort spec (``data/cohorts/NAME/spec/``) to be committed with the experiment: ``config.yaml``
says in its comments how the essays were chosen (source cohort, template, judge, time, the
ranking), and ``items/top_essays.csv`` pins each chosen essay's coordinates, so the spec compiles
to the same rows whatever the run state holds later (``daydreamctl cohort compile``).

It is offline: the scores come from the run state (``paths.state_db``, opened read-only, so the
service may be running) and the source cohort's essays and evaluations from its
``membership.csv``. The spec folder is built under a temporary name, checked (the YAML reads back
as written and the spec compiles to exactly the chosen essays) and renamed into place, so a reader
sees no spec or the whole of it, and an existing spec is never touched. The ranking is plain
functions over frozen dataclasses (:func:`rank_essays`), kept apart from the reading and
writing. Imported only when the verb runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from daydreamd.cli.common import print_json
from daydreamd.core.config import Settings
from daydreamd.core.errors import DaydreamError
from daydreamd.core.ids import cohort_id_problem
from daydreamd.core.spec.compile import compile_spec
from daydreamd.core.timestamps import utc_now
from daydreamd.storage.atomic import fsync_dir, write_atomic
from daydreamd.storage.cohort_files import read_membership
from daydreamd.storage.layout import DataLayout
from daydreamd.storage.readers import connect_readonly
from daydreamd.storage.spec_files import read_spec

CURRENT_COHORT_FACT = "cohort.current"
"""The ``facts`` row where the service records the cohort in force (``daemon/rebuild``)."""
ITEMS_FILE = "items/top_essays.csv"
"""The spec's include of the chosen essays, relative to the spec folder."""
TUPLE_NAME = "top_essays"
ITEM_COLUMNS = (
    "essay_gen_id",
    "combo_id",
    "draft_template",
    "draft_llm",
    "draft_replicate",
    "essay_template",
    "essay_llm",
    "essay_replicate",
)
"""The columns of ``items/top_essays.csv``: everything that places an essay, draft coordinates included."""

MEMBERS_SQL = "CREATE TEMP TABLE members (gen_id TEXT PRIMARY KEY, stage TEXT NOT NULL)"
USAGE_SQL = """
SELECT DISTINCT g.template_id, g.llm_model_id
FROM temp.members m JOIN generations g ON g.gen_id = m.gen_id
WHERE m.stage = 'evaluation'
"""
"""The (evaluation template, judge) pairs the source cohort's evaluations use, in any state."""
SCORES_SQL = """
SELECT g.parent_gen_id, g.score
FROM temp.members m
JOIN generations g ON g.gen_id = m.gen_id
JOIN temp.members p ON p.gen_id = g.parent_gen_id AND p.stage = 'essay'
WHERE m.stage = 'evaluation' AND g.state = 'done' AND g.score IS NOT NULL
  AND g.template_id = ? AND (? IS NULL OR g.llm_model_id = ?)
"""
"""(essay gen_id, score) of each scored evaluation that counts: both essay and evaluation in the cohort."""
ESSAY_SQL = """
SELECT e.combo_id, e.template_id, e.llm_model_id, e.replicate, e.parent_gen_id,
       d.template_id, d.llm_model_id, d.replicate
FROM generations e LEFT JOIN generations d ON d.gen_id = e.parent_gen_id
WHERE e.gen_id = ? AND e.stage = 'essay'
"""

_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*")


class CohortNewError(DaydreamError):
    """The spec cannot be written as asked; the message says what is wrong and what to do."""


# -- the ranking (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Criterion:
    """What ranks the essays: one evaluation template's scores, of one judge or of all."""

    template: str
    judge: str | None

    @classmethod
    def parse(cls, text: str) -> Criterion:
        """``T`` or ``T:J`` (``--by``), split at the first ``:`` (a judge's id may hold more)."""
        template, sep, judge = text.partition(":")
        if not template or (sep and not judge):
            raise CohortNewError(
                f"--by {text!r} is not EVAL_TEMPLATE or EVAL_TEMPLATE:JUDGE, e.g. rigor-judge"
            )
        return cls(template, judge or None)

    def describe(self) -> str:
        return f"{self.template} ({'judge ' + self.judge if self.judge else 'all judges'})"


@dataclass(frozen=True, slots=True)
class Ranked:
    """An essay's place in the ranking: the mean of its scores that count, and how many there are."""

    essay_gen_id: str
    mean: float
    evaluations: int


@dataclass(frozen=True, slots=True)
class Essay:
    """A chosen essay's coordinates in the run state: its own and its draft's."""

    essay_gen_id: str
    combo_id: str
    draft_template: str
    draft_llm: str
    draft_replicate: int
    essay_template: str
    essay_llm: str
    essay_replicate: int

    def row(self) -> tuple[str, ...]:
        """Its row of ``items/top_essays.csv``, in :data:`ITEM_COLUMNS` order."""
        return tuple(str(getattr(self, column)) for column in ITEM_COLUMNS)


def rank_essays(scores: Iterable[tuple[str, float]]) -> list[Ranked]:
    """Essays ranked by (essay gen_id, score) pairs: mean descending, then more scores, then gen_id.

    The tie-breaks make the choice deterministic: among equal means the essay judged more often
    is the surer one, and the gen_id settles the rest, so the same run state always gives the
    same spec.
    """
    by_essay: dict[str, list[float]] = {}
    for essay, score in scores:
        by_essay.setdefault(essay, []).append(score)
    ranked = [Ranked(essay, math.fsum(s) / len(s), len(s)) for essay, s in by_essay.items()]
    ranked.sort(key=lambda r: (-r.mean, -r.evaluations, r.essay_gen_id))
    return ranked


def ranking_lines(ranked: Sequence[Ranked], prefix: str) -> list[str]:
    """The ranking as an aligned table (for the spec's comments and the terminal)."""
    width = max([len("essay_gen_id"), *(len(r.essay_gen_id) for r in ranked)])
    lines = [f"{prefix}rank  {'essay_gen_id':<{width}}  mean score  evaluations"]
    for place, r in enumerate(ranked, start=1):
        lines.append(f"{prefix}{place:>4}  {r.essay_gen_id:<{width}}  {r.mean:>10.2f}  {r.evaluations:>11}")
    return lines


def spec_mapping(evaluation_templates: Sequence[str], judges: Sequence[str]) -> dict[str, Any]:
    """What ``config.yaml`` must read back as (checked after writing it)."""
    axes: dict[str, list[str]] = {}
    if evaluation_templates:
        axes["evaluation_template"] = list(evaluation_templates)
    if judges:
        axes["evaluation_llm"] = list(judges)
    tuple_rule = {"axes": list(ITEM_COLUMNS), "items": f"@file:{ITEMS_FILE}"}
    return {"axes": axes, "rules": {"tuples": {TUPLE_NAME: tuple_rule}}}


def spec_text(
    *,
    source: str,
    criterion: Criterion,
    chosen: Sequence[Ranked],
    requested: int,
    when: str,
    command: str,
    evaluation_templates: Sequence[str],
    judges: Sequence[str],
) -> str:
    """``config.yaml``, written by hand so its comments (how the essays were chosen) stay in it."""
    lines = [
        f"# Re-judge the top {len(chosen)} essays of cohort {source} by {criterion.describe()}, "
        f"chosen {when} by daydreamctl cohort new.",
    ]
    if len(chosen) < requested:
        lines.append(f"# {requested} were asked for; only {len(chosen)} essays had a scored evaluation.")
    lines.append(f"# command: {command}")
    lines += ranking_lines(chosen, "# ")
    if evaluation_templates or judges:
        lines.append("axes:")
        if evaluation_templates:
            lines.append(f"  evaluation_template: {_flow(evaluation_templates)}")
        if judges:
            lines.append(f"  evaluation_llm: {_flow(judges)}")
    else:
        lines.append("axes: {}")
    lines += [
        "rules:",
        "  tuples:",
        f"    {TUPLE_NAME}:",
        f"      axes: [{', '.join(ITEM_COLUMNS)}]",
        f"      items: '@file:{ITEMS_FILE}'",
    ]
    return "\n".join(lines) + "\n"


def items_csv(essays: Sequence[Essay]) -> str:
    """``items/top_essays.csv``: a header, then one row per chosen essay in rank order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ITEM_COLUMNS)
    writer.writerows(essay.row() for essay in essays)
    return out.getvalue()


def _flow(values: Sequence[str]) -> str:
    """A YAML flow list; a value YAML would read as anything but that text is double-quoted (JSON)."""
    return "[" + ", ".join(_scalar(v) for v in values) + "]"


def _scalar(value: str) -> str:
    if _PLAIN.fullmatch(value) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


# -- reading the run state -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """What the source cohort offers: the (template, judge) pairs used, and the scores that count."""

    cohort_id: str
    used: frozenset[tuple[str, str]]
    scores: tuple[tuple[str, float], ...]


def read_source(db: sqlite3.Connection, layout: DataLayout, cohort_id: str, criterion: Criterion) -> Source:
    """The source cohort's membership (into a temp table of this read-only connection) and its scores."""
    membership = layout.membership(cohort_id)
    if not membership.is_file():
        known = [c for c in layout.cohort_ids() if layout.membership(c).is_file()]
        raise CohortNewError(
            f"unknown cohort {cohort_id!r}: there is no {membership}; pass --cohort with one of: "
            f"{', '.join(known) or '(none: write one with daydreamctl cohort --write)'}"
        )
    db.execute(MEMBERS_SQL)
    rows = ((gen_id, stage) for stage, gen_id in read_membership(membership, stage=None))
    db.executemany("INSERT OR IGNORE INTO temp.members VALUES (?, ?)", rows)
    used = frozenset((str(t), str(j)) for t, j in db.execute(USAGE_SQL))
    judge = criterion.judge
    scores = tuple((str(e), float(s)) for e, s in db.execute(SCORES_SQL, (criterion.template, judge, judge)))
    return Source(cohort_id, used, scores)


def check_criterion(source: Source, criterion: Criterion) -> None:
    """The template (and judge) of ``--by`` must have been used by the source cohort's evaluations."""
    templates = sorted({t for t, _ in source.used})
    if criterion.template not in templates:
        raise CohortNewError(
            f"evaluation template {criterion.template!r} was never used in cohort {source.cohort_id} "
            f"(its evaluations use: {', '.join(templates) or 'none'}); pass one of them to --by"
        )
    judges = sorted(j for t, j in source.used if t == criterion.template)
    if criterion.judge is not None and criterion.judge not in judges:
        raise CohortNewError(
            f"judge {criterion.judge!r} never scored {criterion.template!r} in cohort {source.cohort_id} "
            f"(its judges there: {', '.join(judges)}); use --by {criterion.template}:<one of them>, "
            f"or --by {criterion.template} for all judges"
        )


def read_essay(db: sqlite3.Connection, gen_id: str) -> Essay:
    """An essay's coordinates and its draft's, from the ``generations`` table."""
    row = db.execute(ESSAY_SQL, (gen_id,)).fetchone()
    if row is None or row[5] is None:
        what = "essay row" if row is None else f"draft row (its parent {row[4]!r})"
        raise CohortNewError(f"the run state has no {what} for essay {gen_id}; is it the service's state?")
    combo, essay_template, essay_llm, essay_rep, _, draft_template, draft_llm, draft_rep = row
    return Essay(
        gen_id, combo, draft_template, draft_llm, int(draft_rep), essay_template, essay_llm, int(essay_rep)
    )


def current_cohort(db: sqlite3.Connection) -> str:
    """The cohort the service has in force (``facts``), or an error asking for ``--cohort``."""
    row = db.execute("SELECT value FROM facts WHERE key = ?", (CURRENT_COHORT_FACT,)).fetchone()
    if row is None or not row[0]:
        raise CohortNewError("the run state names no current cohort; pass --cohort with the cohort to rank")
    return str(row[0])


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
        if spec_dir.exists() or spec_dir.is_symlink():
            raise CohortNewError(f"{spec_dir} already exists; choose another name or remove it")
        try:
            tmp.rename(spec_dir)
        except OSError as exc:
            raise CohortNewError(
                f"{spec_dir} already exists; choose another name or remove it ({exc})"
            ) from exc
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
        raise CohortNewError("internal error: config.yaml does not read back as written; nothing was written")
    compiled, problems = compile_spec(read_spec(folder))
    if compiled is None:
        found = "; ".join(str(p) for p in problems)
        raise CohortNewError(f"internal error: the spec does not compile ({found}); nothing was written")
    columns = compiled.columns
    index = [columns.index(c) for c in ITEM_COLUMNS]
    got = list(dict.fromkeys(tuple(str(row[i]) for i in index) for row in compiled.rows()))
    if got != rows:
        raise CohortNewError(
            "internal error: the spec compiles to other essays than chosen; nothing was written"
        )


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
    except CohortNewError as exc:
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
    """Rank, choose and write ``data/cohorts/NAME/spec/``; :class:`CohortNewError` on any refusal."""
    if problem := cohort_id_problem(name):
        raise CohortNewError(f"NAME: {problem}")
    if top < 1:
        raise CohortNewError(f"--from-top {top}: give the number of essays to take, 1 or more")
    criterion = Criterion.parse(by)
    layout = DataLayout(settings.paths.data_dir)
    spec_dir = layout.cohort_dir(name) / "spec"
    if spec_dir.exists() or spec_dir.is_symlink():
        raise CohortNewError(f"{spec_dir} already exists; choose another name or remove it")
    if evaluation_templates or judges:
        _check_ids(settings, evaluation_templates, judges)
    db_path = settings.paths.state_db
    if not db_path.is_file():
        raise CohortNewError(
            f"no run state at {db_path} (paths.state_db): the scores to rank come from it; "
            "run the service first, or pass the --config it runs with"
        )
    try:
        db = connect_readonly(db_path)
        try:
            cohort_id = source or current_cohort(db)
            if problem := cohort_id_problem(cohort_id):
                raise CohortNewError(f"--cohort: {problem}")
            if cohort_id == name:
                raise CohortNewError(f"NAME {name!r} is the source cohort; give the new cohort its own name")
            found = read_source(db, layout, cohort_id, criterion)
            check_criterion(found, criterion)
            ranked = rank_essays(found.scores)
            if not ranked:
                raise CohortNewError(
                    f"no essay of cohort {cohort_id} has a done, scored evaluation by "
                    f"{criterion.describe()}; finish those evaluations first (daydreamctl status), "
                    "or rank by another template or judge"
                )
            chosen = tuple(ranked[:top])
            essays = tuple(read_essay(db, r.essay_gen_id) for r in chosen)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise CohortNewError(f"cannot read the run state {db_path}: {exc}") from exc
    warnings: tuple[str, ...] = ()
    if len(chosen) < top:
        warnings = (
            f"only {len(chosen)} essay(s) of cohort {cohort_id} have a scored evaluation by "
            f"{criterion.describe()}; wrote those, not {top}",
        )
    command = shlex.join(
        ["daydreamctl", "cohort", "new", name, "--from-top", str(top), "--by", by, "--cohort", cohort_id]
        + [arg for t in evaluation_templates for arg in ("--evaluation-template", t)]
        + [arg for j in judges for arg in ("--judge", j)]
    )
    text = spec_text(
        source=cohort_id,
        criterion=criterion,
        chosen=chosen,
        requested=top,
        when=utc_now(),
        command=command,
        evaluation_templates=evaluation_templates,
        judges=judges,
    )
    rows = [essay.row() for essay in essays]
    files = {"config.yaml": text, ITEMS_FILE: items_csv(essays)}
    try:
        write_spec_folder(spec_dir, files, spec_mapping(evaluation_templates, judges), rows)
    except OSError as exc:
        raise CohortNewError(f"cannot write {spec_dir}: {exc}") from exc
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
        raise CohortNewError("\n".join(lines))
    raw = settings.raw_dir
    for template in evaluation_templates:
        if template not in catalog.evaluation_templates:
            raise CohortNewError(
                f"--evaluation-template {template!r} is not an evaluation template in "
                f"{raw / 'evaluation_templates.csv'} "
                f"(known: {', '.join(sorted(catalog.evaluation_templates))})"
            )
    for judge in judges:
        if judge not in catalog.evaluation_models:
            raise CohortNewError(
                f"--judge {judge!r} is not a model in {raw / 'llm_models.csv'} "
                f"(known: {', '.join(sorted(catalog.evaluation_models))})"
            )
