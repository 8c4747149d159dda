"""Load and validate an experiment from a snapshot of ``data/1_raw`` (pure).

``load_experiment`` never raises for bad input. It returns the experiment it could build and
every problem it found, each with file, line and column. Problems on inactive rows are
warnings: researchers keep old rows around (pointing at retired parsers or deleted files) and
those must not block today's cohort.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable

from daydreamd.core.canonical import sha256_hex
from daydreamd.core.csvtable import Row, Table, decode_text, parse_bool, read_table
from daydreamd.core.experiment import DESCRIPTION_LEVELS, Concept, Experiment, Generator, LlmModel, Template
from daydreamd.core.parsers import is_registered, parser_names, resolve_parser_name
from daydreamd.core.problems import Level, Problem, error, warning
from daydreamd.core.scales import Scale, ScaleSource, infer_scale
from daydreamd.core.snapshot import RawFiles, escaped_name
from daydreamd.core.stages import STAGES, Stage, parse_stage
from daydreamd.core.templates import check_template
from daydreamd.core.verdicts import DEFAULT_LABEL, VerdictSpec

CONCEPTS_CSV = "concepts_metadata.csv"
MODELS_CSV = "llm_models.csv"
REPLICATION_CSV = "replication_config.csv"
TEMPLATE_COLUMNS = ("template_id", "template_name", "description", "parser", "generator", "active")
REQUIRED_TEMPLATE_COLUMNS = ("template_id", "template_name", "parser", "generator", "active")
_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,39}")
MODEL_COLUMNS = ("id", "model", "provider", "display_name", "for_generation", "for_evaluation")
REQUIRED_MODEL_COLUMNS = ("id", "model", "provider", "for_generation", "for_evaluation")


def templates_csv(stage: Stage) -> str:
    """The CSV listing ``stage``'s templates, relative to ``1_raw``."""
    return f"{stage}_templates.csv"


def template_file(stage: Stage, template_id: str) -> str:
    """Where a template's text lives, relative to ``1_raw``."""
    return f"templates/{stage}/{template_id}.txt"


def description_file(level: str, concept_id: str) -> str:
    """Where a concept's description at ``level`` lives, relative to ``1_raw``."""
    return f"concepts/descriptions-{level}/{concept_id}.txt"


class _Collector:
    """Accumulates problems; row problems are demoted to warnings when the row is inactive."""

    def __init__(self, raw: RawFiles) -> None:
        self.raw = raw
        self.problems: list[Problem] = []
        self.unreadable = {path for path, _ in (*raw.unreadable, *raw.refused)}
        self.refused_folders = tuple(f"{path}/" for path, _ in raw.refused)
        """Prefixes of what a refused link to a folder holds: reported once, as the link."""

    def add(
        self,
        relpath: str,
        message: str,
        *,
        line: int | None = None,
        column: str | None = None,
        active: bool = True,
    ) -> None:
        make = error if active else warning
        suffix = "" if active else " (row is inactive, so this is only a warning)"
        self.problems.append(make(self.raw.display(relpath), message + suffix, line=line, column=column))

    def extend(self, problems: list[Problem], *, active: bool = True) -> None:
        for p in problems:
            level = p.level if active else Level.WARNING
            suffix = (
                ""
                if active or p.level is Level.WARNING
                else " (its row is inactive, so this is only a warning)"
            )
            self.problems.append(
                Problem(level=level, path=p.path, line=p.line, column=p.column, message=p.message + suffix)
            )

    def exists(self, relpath: str) -> bool:
        """Present in the directory, even if it could not be read or was refused (reported once, apart)."""
        return (
            relpath in self.raw.files
            or relpath in self.unreadable
            or relpath.startswith(self.refused_folders)
        )

    def table(self, relpath: str, required: tuple[str, ...], *, optional: bool = False) -> Table | None:
        data = self.raw.files.get(relpath)
        if data is None:
            if not optional and not self.exists(relpath):
                self.add(relpath, f"missing file; the experiment needs {relpath} in {self.raw.label}/")
            return None
        table, problems = read_table(self.raw.display(relpath), data, required=required)
        self.problems.extend(problems)
        return table

    def text(self, relpath: str, *, active: bool) -> str | None:
        data = self.raw.files.get(relpath)
        if data is None:
            return None
        text, problems = decode_text(self.raw.display(relpath), data)
        self.extend(problems, active=active)
        return text


def load_experiment(raw: RawFiles) -> tuple[Experiment, tuple[Problem, ...]]:
    """Read, check and assemble the experiment; return it with every problem found."""
    out = _Collector(raw)
    if raw.missing:
        out.add("", "the experiment directory does not exist; create it or point --data at the right folder")
        return Experiment(fingerprint=raw.fingerprint), tuple(out.problems)
    for path, reason in raw.unreadable:
        out.add(path, f"cannot read file: {reason}")
    for path, reason in raw.refused:  # a link out of 1_raw, a FIFO, a device: never opened
        out.add(path, reason)
    for name in raw.bad_names:
        out.add(escaped_name(name), _bad_name_message(name))
    concepts = _load_concepts(out)
    templates = tuple(t for stage in STAGES for t in _load_templates(out, stage))
    models = _load_models(out)
    experiment = Experiment(
        concepts=concepts,
        templates=templates,
        models=models,
        replicates=_load_replication(out),
        fingerprint=raw.fingerprint,
    )
    _warn_empty_axes(out, experiment)
    return experiment, tuple(out.problems)


def _bad_name_message(name: bytes) -> str:
    """What is wrong with a name that is not valid UTF-8, and how to rename it from a shell."""
    kind = "folder" if name.endswith(b"/") else "file"
    base = escaped_name(name.rstrip(b"/").rsplit(b"/", 1)[-1])
    return (
        f"the {kind} name is not valid UTF-8 (each bad byte is shown as \\xNN), so it is not read and "
        f"nothing can refer to it; rename it to a UTF-8 name (in its folder: mv $'{base}' NEW_NAME) "
        "or move it out of the experiment"
    )


def check_id(out: _Collector, relpath: str, row: Row, column: str, *, active: bool) -> str | None:
    """An id must be usable as one folder name: no separators, no '..', no leading dot, no controls."""
    value = row.get(column)
    reason = id_problem(value)
    if reason:
        out.add(relpath, f"id {value!r} {reason}", line=row.line, column=column, active=active)
        return None
    return value


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an id, or None when it can."""
    if not value:
        return "is empty"
    if "/" in value or "\\" in value:
        return "contains a path separator; ids name folders and must not contain / or \\"
    if ".." in value:
        return "contains '..'; ids name folders and must not be able to escape them"
    if value.startswith("."):
        return "starts with a dot; ids name folders and must not be hidden"
    if any(unicodedata.category(ch).startswith("C") for ch in value):
        return "contains a control character"
    return None


def _row_active(
    out: _Collector, relpath: str, row: Row, column: str, *, default: bool | None = None
) -> bool | None:
    text = row.get(column)
    if not text and default is not None:
        return default
    value = parse_bool(text)
    if value is None:
        out.add(relpath, f"{text!r} is not a boolean; use true or false", line=row.line, column=column)
    return value


def _unique_rows(
    out: _Collector, relpath: str, column: str, rows: list[tuple[Row, str, bool]]
) -> list[tuple[Row, str, bool]]:
    """Drop later rows repeating an id (reported), keeping the first."""
    seen: dict[str, int] = {}
    kept = []
    for row, row_id, active in rows:
        if row_id in seen:
            message = f"duplicate id {row_id!r} (first defined on line {seen[row_id]}); ids must be unique"
            out.add(relpath, message, line=row.line, column=column, active=active)
            continue
        seen[row_id] = row.line
        kept.append((row, row_id, active))
    return kept


def _load_concepts(out: _Collector) -> tuple[Concept, ...]:
    table = out.table(CONCEPTS_CSV, ("concept_id", "name"))
    rows: list[tuple[Row, str, bool]] = []
    for row in table.rows if table else ():
        active = _row_active(out, CONCEPTS_CSV, row, "active", default=True)
        concept_id = check_id(out, CONCEPTS_CSV, row, "concept_id", active=active is not False)
        if concept_id is not None and active is not None:
            rows.append((row, concept_id, active))
    concepts = []
    for row, concept_id, active in _unique_rows(out, CONCEPTS_CSV, "concept_id", rows):
        if not row.get("name"):
            out.add(CONCEPTS_CSV, "name is empty", line=row.line, column="name", active=active)
        descriptions = tuple(
            (level, text)
            for level in DESCRIPTION_LEVELS
            if (text := out.text(description_file(level, concept_id), active=active)) is not None
        )
        concepts.append(
            Concept(
                concept_id=concept_id,
                name=row.get("name") or concept_id,
                active=active,
                line=row.line,
                descriptions=descriptions,
            )
        )
    _warn_orphan_descriptions(out, {c.concept_id for c in concepts})
    return tuple(concepts)


def _warn_orphan_descriptions(out: _Collector, known: set[str]) -> None:
    prefixes = tuple(f"concepts/descriptions-{level}/" for level in DESCRIPTION_LEVELS)
    for path in sorted(out.raw.files):
        if path.startswith(prefixes) and path.endswith(".txt"):
            concept_id = path.rsplit("/", 1)[1][: -len(".txt")]
            if concept_id not in known:
                message = (
                    f"description for unknown concept {concept_id!r} (not in {CONCEPTS_CSV}); it is ignored"
                )
                out.problems.append(warning(out.raw.display(path), message))


def _load_templates(out: _Collector, stage: Stage) -> list[Template]:
    relpath = templates_csv(stage)
    table = out.table(relpath, REQUIRED_TEMPLATE_COLUMNS)
    rows: list[tuple[Row, str, bool]] = []
    for row in table.rows if table else ():
        active = _row_active(out, relpath, row, "active")
        template_id = check_id(out, relpath, row, "template_id", active=active is not False)
        if template_id is not None and active is not None:
            rows.append((row, template_id, active))
    extra_columns = [c for c in table.columns if c not in TEMPLATE_COLUMNS] if table else []
    return [
        _load_template(out, stage, row, template_id, active, extra_columns)
        for row, template_id, active in _unique_rows(out, relpath, "template_id", rows)
    ]


def _load_template(
    out: _Collector, stage: Stage, row: Row, template_id: str, active: bool, extra_columns: list[str]
) -> Template:
    relpath = templates_csv(stage)
    generator = _check_generator(out, stage, row, active)
    parser = _check_parser(out, stage, row, active, generator)
    text = None
    if generator is Generator.LLM:
        file = template_file(stage, template_id)
        text = out.text(file, active=active)
        if text is None and not out.exists(file):
            out.add(
                relpath,
                f"template file {out.raw.display(file)} is missing; create it or mark the row inactive",
                line=row.line,
                column="template_id",
                active=active,
            )
        elif text is not None:
            out.extend(check_template(stage, out.raw.display(file), text), active=active)
    verdict = (
        _load_verdict(out, row, template_file(stage, template_id), text, active)
        if stage is Stage.EVALUATION
        else None
    )
    return Template(
        stage=stage,
        template_id=template_id,
        name=row.get("template_name"),
        description=row.get("description"),
        parser=parser,
        generator=generator,
        active=active,
        text=text,
        text_sha256=sha256_hex(text) if text is not None else "",
        line=row.line,
        extra=tuple((c, row.get(c)) for c in extra_columns),
        verdict=verdict,
    )


def _load_verdict(out: _Collector, row: Row, file: str, text: str | None, active: bool) -> VerdictSpec:
    """The verdict label and scale of an evaluation template: its row's columns, else its text.

    ``score_min``/``score_max``/``verdict_label`` are optional columns; a scale the text states
    differently from the row is worth a warning, and so is one the text leaves unclear.
    """
    relpath = templates_csv(Stage.EVALUATION)
    label = row.get("verdict_label").strip()
    if label and not _LABEL_RE.fullmatch(label):
        out.add(
            relpath,
            f"verdict_label {label!r} must be letters, digits, spaces, '_' or '-' (e.g. SCORE)",
            line=row.line,
            column="verdict_label",
            active=active,
        )
        label = ""
    label = label or DEFAULT_LABEL
    inferred = infer_scale(text or "", label)
    declared = _declared_scale(out, row, active)
    display = out.raw.display(file)
    if declared is not None:
        said = inferred.scale
        if said.source is not ScaleSource.DEFAULT and (said.minimum, said.maximum) != (
            declared.minimum,
            declared.maximum,
        ):
            message = (
                f"score scale {declared.label} disagrees with the template text, which says {said.label} "
                f"({display} line {said.line}); the row's columns win"
            )
            out.problems.append(warning(out.raw.display(relpath), message, line=row.line, column="score_max"))
        return VerdictSpec(label=label, scale=declared)
    if inferred.warning and text is not None:
        out.problems.append(warning(display, f"score scale: {inferred.warning}"))
    return VerdictSpec(label=label, scale=inferred.scale)


def _declared_scale(out: _Collector, row: Row, active: bool) -> Scale | None:
    """``score_min``/``score_max`` from the row, when it has them (min defaults to 0)."""
    relpath = templates_csv(Stage.EVALUATION)
    values: dict[str, float] = {}
    for column in ("score_min", "score_max"):
        cell = row.get(column).strip()
        if not cell:
            continue
        try:
            number = float(cell)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            out.add(
                relpath, f"{column} {cell!r} is not a number", line=row.line, column=column, active=active
            )
            continue
        values[column] = number
    if "score_max" not in values:
        if "score_min" in values:
            out.add(
                relpath,
                "score_min needs score_max beside it",
                line=row.line,
                column="score_max",
                active=active,
            )
        return None
    low, high = values.get("score_min", 0.0), values["score_max"]
    if low >= high:
        out.add(
            relpath,
            f"score_min {low:g} must be below score_max {high:g}",
            line=row.line,
            column="score_min",
            active=active,
        )
        return None
    return Scale(low, high, ScaleSource.CSV, row.line)


def _check_generator(out: _Collector, stage: Stage, row: Row, active: bool) -> Generator:
    relpath = templates_csv(stage)
    text = row.get("generator").lower() or "llm"
    try:
        generator = Generator(text)
    except ValueError:
        out.add(
            relpath,
            f"generator {row.get('generator')!r} is not 'llm' or 'copy'",
            line=row.line,
            column="generator",
            active=active,
        )
        return Generator.LLM
    if generator is Generator.COPY and stage is not Stage.ESSAY:
        out.add(
            relpath,
            f"generator 'copy' only makes sense for essays (it copies the parent draft); "
            f"{stage} templates must use 'llm'",
            line=row.line,
            column="generator",
            active=active,
        )
    return generator


def _check_parser(out: _Collector, stage: Stage, row: Row, active: bool, generator: Generator) -> str:
    relpath = templates_csv(stage)
    name = row.get("parser")
    if stage is Stage.EVALUATION and not name:
        out.add(
            relpath,
            f"evaluation templates must name a parser (one of {', '.join(parser_names(stage))})",
            line=row.line,
            column="parser",
            active=active,
        )
        return ""
    if not is_registered(stage, name):
        out.add(
            relpath,
            f"parser {name!r} is not registered for {stage} templates; use one of "
            f"{', '.join(parser_names(stage))}",
            line=row.line,
            column="parser",
            active=active,
        )
        return name
    if generator is Generator.COPY and name and resolve_parser_name(stage, name) != "identity":
        out.add(
            relpath,
            "copy templates take the parent's parsed text as is; leave parser empty",
            line=row.line,
            column="parser",
            active=active,
        )
    return resolve_parser_name(stage, name)


def _load_models(out: _Collector) -> tuple[LlmModel, ...]:
    table = out.table(MODELS_CSV, REQUIRED_MODEL_COLUMNS)
    rows: list[tuple[Row, str, bool]] = []
    flags: dict[int, tuple[bool, bool]] = {}
    for row in table.rows if table else ():
        gen = _row_active(out, MODELS_CSV, row, "for_generation")
        ev = _row_active(out, MODELS_CSV, row, "for_evaluation")
        if gen is None or ev is None:
            continue
        model_id = check_id(out, MODELS_CSV, row, "id", active=gen or ev)
        if model_id is not None:
            rows.append((row, model_id, gen or ev))
            flags[row.line] = (gen, ev)
    extra_columns = [c for c in table.columns if c not in MODEL_COLUMNS] if table else []
    models = []
    for row, model_id, active in _unique_rows(out, MODELS_CSV, "id", rows):
        if not row.get("model"):
            out.add(
                MODELS_CSV,
                "model string is empty; give the provider's model name, e.g. google/gemini-2.5-flash",
                line=row.line,
                column="model",
                active=active,
            )
        gen, ev = flags[row.line]
        models.append(
            LlmModel(
                model_id=model_id,
                model=row.get("model"),
                provider=row.get("provider"),
                display_name=row.get("display_name") or model_id,
                for_generation=gen,
                for_evaluation=ev,
                line=row.line,
                extra=tuple((c, row.get(c)) for c in extra_columns),
            )
        )
    return tuple(models)


def _load_replication(out: _Collector) -> tuple[tuple[Stage, int], ...]:
    table = out.table(REPLICATION_CSV, ("stage", "replicates"), optional=True)
    replicates: dict[Stage, int] = {}
    for row in table.rows if table else ():
        stage = parse_stage(row.get("stage"))
        if stage is None:
            out.add(
                REPLICATION_CSV,
                f"unknown stage {row.get('stage')!r}; use draft, essay or evaluation",
                line=row.line,
                column="stage",
            )
            continue
        count = _positive_int(row.get("replicates"))
        if count is None:
            out.add(
                REPLICATION_CSV,
                f"replicates {row.get('replicates')!r} must be a whole number of at least 1",
                line=row.line,
                column="replicates",
            )
        elif stage in replicates:
            out.add(REPLICATION_CSV, f"stage {stage} is listed twice", line=row.line, column="stage")
        else:
            replicates[stage] = count
    return tuple(sorted(replicates.items(), key=lambda item: STAGES.index(item[0])))


def _positive_int(text: str) -> int | None:
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 1 else None


def _warn_empty_axes(out: _Collector, experiment: Experiment) -> None:
    """An empty active set is legal but almost never intended: the cohort is empty from there on."""
    checks: list[tuple[str, Callable[[], tuple[object, ...]], str]] = [
        (CONCEPTS_CSV, experiment.active_concepts, "no active concepts: the cohort will have no combos"),
        *[
            (
                templates_csv(stage),
                lambda stage=stage: experiment.active_templates(stage),
                f"no active {stage} templates: the cohort will have no {stage}s or later stages",
            )
            for stage in STAGES
        ],
        (
            MODELS_CSV,
            experiment.generation_models,
            "no model is for_generation: the cohort will have no drafts",
        ),
        (
            MODELS_CSV,
            experiment.evaluation_models,
            "no model is for_evaluation: the cohort will have no evaluations",
        ),
    ]
    for relpath, items, message in checks:
        if relpath in out.raw.files and not items():
            out.problems.append(warning(out.raw.display(relpath), message))
