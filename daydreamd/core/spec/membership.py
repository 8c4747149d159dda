"""From a compiled spec to a named cohort: its generations, ids and manifest (pure).

Each compiled row names, by its columns, the coordinates of one path down the stages: a combo,
a draft template, model and replicate, an essay template, model and replicate, an evaluation
template, judge and replicate. A column a spec does not have takes the default cohort's levels,
so a spec only names what it designs:

* ``combo_id``: every combo of the default cohort (the k-subsets of the active concepts);
* ``draft_template`` / ``essay_template`` / ``evaluation_template``: the active templates;
* ``draft_llm``: the generation models; ``evaluation_llm``: the evaluation models;
* ``essay_llm``: the draft's model (an essay is written by the model that wrote its draft);
* a replicate column: ``1 .. replicates`` of ``replication_config.csv``.

A copy-mode essay calls no model: it keeps its draft's model whatever ``essay_llm`` says, so it
has the same id as in the default cohort.

**Curated inputs.** A column ``essay_gen_id`` (or ``draft_gen_id``) starts the cohort from
generations that already exist and defines only the stages below them. The id is looked up in
the default cohort, then among the run state's generations the shell looked up (``known``). When
the row also has the essay's (or draft's) coordinates -- as the files ``daydreamctl cohort new``
writes do -- the id is computed from them instead, and must come out equal: so a spec rebuilds
to the same generations from a fresh clone of the experiment, and a spec whose essays changed
since they were chosen (a template's text, a concept's description, a stage setting) is an
error rather than a cohort that quietly pays for new essays.

Generations are identified as in the default cohort (:mod:`daydreamd.core.ids`), so a generation
two cohorts share has one id, one set of files and one payment.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from daydreamd.core import ids
from daydreamd.core.cohort import (
    MANIFEST_SCHEMA,
    Cohort,
    Combo,
    Generation,
    draft_parent_key,
    generation_spec,
    model_entry,
    template_entry,
)
from daydreamd.core.collector import paused_gc
from daydreamd.core.config import Settings
from daydreamd.core.experiment import Experiment, Generator, LlmModel, Template
from daydreamd.core.problems import Problem, error
from daydreamd.core.spec.compile import Compiled
from daydreamd.core.spec.document import Origin
from daydreamd.core.spec.parsing import Value
from daydreamd.core.stages import STAGES, Stage

COMBO = "combo_id"
DRAFT_COLUMNS = ("combo_id", "draft_template", "draft_llm", "draft_replicate")
ESSAY_COLUMNS = ("essay_template", "essay_llm", "essay_replicate")
EVALUATION_COLUMNS = ("evaluation_template", "evaluation_llm", "evaluation_replicate")
CURATED_COLUMNS = ("draft_gen_id", "essay_gen_id")

COORDINATES = (*DRAFT_COLUMNS, *ESSAY_COLUMNS, *EVALUATION_COLUMNS, *CURATED_COLUMNS)
"""A path's coordinates, in the order of its values (see :data:`Route`)."""
_AT = {name: index for index, name in enumerate(COORDINATES)}
Route = tuple["Value", ...]
"""One path's values, in :data:`COORDINATES` order ('' for a coordinate it does not use)."""

CANONICAL: dict[str, str] = {
    "combo_id": "combo_id",
    "combo": "combo_id",
    "draft_template": "draft_template",
    "draft_llm": "draft_llm",
    "draft_model": "draft_llm",
    "generation_llm": "draft_llm",
    "draft_replicate": "draft_replicate",
    "draft_template_replicate": "draft_replicate",
    "draft_rep": "draft_replicate",
    "essay_template": "essay_template",
    "essay_llm": "essay_llm",
    "essay_replicate": "essay_replicate",
    "essay_template_replicate": "essay_replicate",
    "essay_rep": "essay_replicate",
    "evaluation_template": "evaluation_template",
    "evaluation_llm": "evaluation_llm",
    "evaluation_replicate": "evaluation_replicate",
    "evaluation_template_replicate": "evaluation_replicate",
    "evaluation_llm_replicate": "evaluation_replicate",
    "evaluation_rep": "evaluation_replicate",
    "draft_gen_id": "draft_gen_id",
    "essay_gen_id": "essay_gen_id",
}
"""Column name -> the coordinate it sets (the names the original project's planner understood)."""

MAX_ERRORS = 50
"""Problems listed per spec (a broken million-row spec would otherwise list a million)."""
MAX_PATHS = 5_000_000
"""The most rows a spec may expand to, the default cohort's levels included: beyond, building it
would take minutes and gigabytes (a typo such as one axis too many), so it is refused unbuilt."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpecInputs:
    """What a spec cohort is built from besides its rows."""

    experiment: Experiment
    settings: Settings
    default: Cohort | None
    """The default cohort: its combos are the combos a spec may name, its generations the first
    place a curated gen_id is looked up."""
    combos: Mapping[str, Combo] = field(default_factory=dict)
    """Further combos a spec may name (``combo_mappings.csv``'s, whose concepts still exist)."""
    known: Mapping[str, Generation] = field(default_factory=dict)
    """Generations of the run state, by gen_id: where curated ids not in the default cohort are found."""
    problems: tuple[Problem, ...] = ()
    """The experiment's problems: those of an inactive template are warnings in ``1_raw`` (nothing
    uses it), and errors for a spec that does."""
    raw_label: str = "1_raw"


def curated_ids(compiled: Compiled) -> set[str]:
    """The gen_ids a spec's curated columns name (the shell looks these up in the run state)."""
    wanted: set[str] = set()
    for column in compiled.columns:
        if CANONICAL.get(column) in CURATED_COLUMNS:
            wanted.update(v for v in compiled.design.column_values(column) if isinstance(v, str))
    return wanted


def build_spec_cohort(
    name: str, compiled: Compiled, inputs: SpecInputs, *, fingerprint: str
) -> tuple[Cohort | None, tuple[Problem, ...]]:
    """The named cohort ``name`` of a compiled spec (None with the problems when one is an error)."""
    builder = _Builder(compiled, inputs)
    if builder.problems:
        return None, tuple(builder.problems)
    paths = compiled.count * math.prod(len(levels) for _, levels in builder.defaults())
    if paths > MAX_PATHS:
        unset = ", ".join(name for name, levels in builder.defaults() if len(levels) > 1)
        also = f" (with the default cohort's levels for {unset})" if unset else ""
        message = (
            f"the spec expands to {paths:,} paths down the stages{also}; at most {MAX_PATHS:,} are "
            "built: narrow an axis, or set the axes it leaves to the default cohort"
        )
        return None, (error(compiled.spec.path, message),)
    with paused_gc():  # a third of the time otherwise: see core.collector
        builder.run(compiled)
    builder.problems.extend(_template_problems(compiled, inputs, builder.used_templates))
    if builder.problems:
        return None, tuple(builder.problems)
    generations = (*builder.drafts.values(), *builder.essays.values(), *builder.evaluations.values())
    # No check_links here: every parent was added (drafts, then essays) before a child that names
    # it, and ids are dict keys, so the check the default cohort makes cannot fail (and costs a second).
    combos = tuple(builder.used_combos.values())
    manifest = _manifest(name, compiled, inputs, builder, fingerprint)
    return Cohort(cohort_id=name, manifest=manifest, combos=combos, generations=generations), ()


class _Builder:
    """Turns rows into generations, each computed once (rows share drafts and essays)."""

    def __init__(self, compiled: Compiled, inputs: SpecInputs) -> None:
        self.spec = compiled.spec
        self.inputs = inputs
        self.experiment = inputs.experiment
        self.problems: list[Problem] = []
        self._seen_messages: set[str] = set()
        self.columns: dict[str, str] = {}
        """canonical coordinate -> the column as the spec wrote it."""
        for column in compiled.columns:
            canonical = CANONICAL.get(column)
            if canonical is None:
                continue  # the compiler warned that nothing reads it
            if canonical in self.columns:
                self._fail(
                    self._origin(column),
                    f"columns {self.columns[canonical]!r} and {column!r} both set {canonical}; keep one",
                )
            self.columns[canonical] = column
        self.curated = self._curated_column()
        self.concepts = {c.concept_id: c for c in self.experiment.concepts}
        self.combos: dict[str, Combo] = dict(inputs.combos)
        if inputs.default is not None:
            self.combos.update((c.combo_id, c) for c in inputs.default.combos)
        self.params = {s: inputs.settings.stage(s).call_parameters() for s in STAGES}
        self.drafts: dict[str, Generation] = {}
        self.essays: dict[str, Generation] = {}
        self.evaluations: dict[str, Generation] = {}
        self.used_combos: dict[str, Combo] = {}
        self.used_templates: dict[tuple[Stage, str], tuple[Template, str]] = {}
        """(stage, template id) -> the template and the coordinate that first named it."""
        self._draft_cache: dict[tuple[Value, ...], Generation | None] = {}
        self._essay_cache: dict[tuple[Value, ...], Generation | None] = {}
        self._evaluation_cache: dict[tuple[Value, ...], tuple[ids.GenIds, str, str, int] | None] = {}
        self._templates = {(t.stage, t.template_id): t for t in self.experiment.templates}
        self._models = {m.model_id: m for m in self.experiment.models}
        self._specs: dict[tuple[Stage, str, str], str] = {}
        self._by_id: dict[str, Generation] | None = None

    # -- the columns -------------------------------------------------------------------------

    def _curated_column(self) -> str | None:
        curated = [c for c in CURATED_COLUMNS if c in self.columns]
        if len(curated) > 1:
            self._fail(
                self._origin(self.columns["essay_gen_id"]),
                "draft_gen_id and essay_gen_id cannot both be set: an essay fixes its draft; "
                "keep essay_gen_id",
            )
            return None
        if not curated:
            return None
        column = curated[0]
        fixed = DRAFT_COLUMNS if column == "draft_gen_id" else DRAFT_COLUMNS + ESSAY_COLUMNS
        present = [c for c in fixed if c in self.columns]
        if present and len(present) != len(fixed):
            missing = [c for c in fixed if c not in self.columns]
            self._fail(
                self._origin(self.columns[column]),
                f"{column} is given with some of its coordinates ({', '.join(present)}) but not "
                f"{', '.join(missing)}: give all of them (they are checked against the id) or none",
            )
        return column

    def defaults(self) -> list[tuple[str, tuple[str, ...]]]:
        """Each coordinate no column sets, with the default cohort's levels for it."""
        fixed: tuple[str, ...] = ()
        if self.curated == "essay_gen_id":
            fixed = DRAFT_COLUMNS + ESSAY_COLUMNS
        elif self.curated == "draft_gen_id":
            fixed = DRAFT_COLUMNS
        e = self.experiment
        levels: dict[str, tuple[str, ...]] = {
            "combo_id": tuple(c.combo_id for c in self.inputs.default.combos) if self.inputs.default else (),
            "draft_template": _ids(e.active_templates(Stage.DRAFT)),
            "draft_llm": tuple(m.model_id for m in e.generation_models()),
            "draft_replicate": _replicates(e, Stage.DRAFT),
            "essay_template": _ids(e.active_templates(Stage.ESSAY)),
            "essay_llm": ("",),  # the draft's model
            "essay_replicate": _replicates(e, Stage.ESSAY),
            "evaluation_template": _ids(e.active_templates(Stage.EVALUATION)),
            "evaluation_llm": tuple(m.model_id for m in e.evaluation_models()),
            "evaluation_replicate": _replicates(e, Stage.EVALUATION),
        }
        return [
            (coordinate, values)
            for coordinate, values in levels.items()
            if coordinate not in self.columns and coordinate not in fixed
        ]

    # -- the rows ----------------------------------------------------------------------------

    def run(self, compiled: Compiled) -> None:
        """Every row, with every combination of the default levels it leaves out, as a path."""
        defaults = self.defaults()
        names, rows = compiled.plan.unordered()
        width = len(names)
        position = {column: index for index, column in enumerate(names)}
        default_at = {name: width + j for j, (name, _) in enumerate(defaults)}
        blank = width + len(defaults)  # a trailing "": a coordinate the path does not use
        indices = [
            position[self.columns[c]] if c in self.columns else default_at.get(c, blank) for c in COORDINATES
        ]
        values_of = itemgetter(*indices)  # in C: a row (and its defaults) to the coordinates' tuple
        extras = [(*extra, "") for extra in itertools.product(*(levels for _, levels in defaults))]
        paths = (values_of(row + extra) for row in rows for extra in extras)
        if self.curated:
            for values in paths:
                self._path(values)
                if len(self.problems) >= MAX_ERRORS:
                    break
        else:
            self._fast_paths(paths)
        if len(self.problems) >= MAX_ERRORS:
            self.problems.append(
                error(self.spec.path, f"stopped after {MAX_ERRORS} problems; fix these first")
            )

    def _fast_paths(self, paths: Iterator[Route]) -> None:
        """:meth:`_path` for every path of a spec without curated ids, its cache look-ups inline: a
        million rows make a million evaluations, and every call or attribute look-up saved per row
        is a tenth of a second."""
        drafts, essays, judges = self._draft_cache, self._essay_cache, self._evaluation_cache
        evaluations = self.evaluations
        for values in paths:
            try:
                draft = drafts[values[:4]]
            except KeyError:
                draft = self._draft(values)
            if draft is None:
                continue
            try:
                essay = essays[(draft.gen_id, *values[4:7])]
            except KeyError:
                essay = self._essay(draft, values)
            if essay is None:
                continue
            try:
                judged = judges[values[7:10]]
            except KeyError:
                judged = judges[values[7:10]] = self._judged(*(str(v) for v in values[7:10]))
            if judged is None:
                continue
            make_id, template_id, model_id, number = judged
            gen_id = make_id(essay.gen_id, number)
            if gen_id not in evaluations:
                evaluations[gen_id] = Generation(
                    Stage.EVALUATION, gen_id, essay.gen_id, essay.combo_id, template_id, model_id, number
                )
            if len(self.problems) >= MAX_ERRORS:
                return

    def _path(self, values: Route) -> None:
        if self.curated == "essay_gen_id":
            essay = self._curated_essay(values)
        else:
            draft = self._curated_draft(values) if self.curated == "draft_gen_id" else self._draft(values)
            essay = None if draft is None else self._essay(draft, values)
        if essay is not None:
            self._evaluation(essay, values)

    def _draft(self, values: Route) -> Generation | None:
        key = values[:4]
        try:
            return self._draft_cache[key]
        except KeyError:
            pass
        combo_id, template_id, model_id, replicate = (str(v) for v in key)
        found = None
        combo = self.combos.get(combo_id)
        template = self._template(Stage.DRAFT, template_id, "draft_template")
        model = self._model(model_id, "draft_llm")
        number = self._replicate(replicate, "draft_replicate")
        if combo is None:
            self._fail(
                self._value_origin("combo_id", combo_id),
                f"combo_id {combo_id!r} is not a combo of this experiment: neither a k-subset of the active "
                "concepts nor in combo_mappings.csv with concepts that still exist",
            )
        elif template is not None and model is not None and number is not None:
            spec = self._spec(Stage.DRAFT, template, model)
            gen_id = ids.gen_id(Stage.DRAFT, spec, draft_parent_key(self.concepts, combo), number)
            found = Generation(Stage.DRAFT, gen_id, "", combo_id, template_id, model_id, number)
            self.drafts.setdefault(gen_id, found)
            self.used_combos.setdefault(combo_id, combo)
        self._draft_cache[key] = found
        return found

    def _essay(self, draft: Generation, values: Route) -> Generation | None:
        key = (draft.gen_id, *values[4:7])
        try:
            return self._essay_cache[key]
        except KeyError:
            pass
        template_id, model_id, replicate = (str(v) for v in key[1:])
        found = None
        template = self._template(Stage.ESSAY, template_id, "essay_template")
        number = self._replicate(replicate, "essay_replicate")
        if template is not None and number is not None:
            if template.generator is Generator.COPY or not model_id:
                model_id = draft.llm_model_id  # a copy calls no model; an unset essay_llm is the draft's
            model = self._model(model_id, "essay_llm")
            if model is not None:
                spec = self._spec(Stage.ESSAY, template, model)
                gen_id = ids.gen_id(Stage.ESSAY, spec, draft.gen_id, number)
                found = Generation(
                    Stage.ESSAY, gen_id, draft.gen_id, draft.combo_id, template_id, model_id, number
                )
                self.essays.setdefault(gen_id, found)
        self._essay_cache[key] = found
        return found

    def _evaluation(self, essay: Generation, values: Route) -> None:
        key = values[7:10]
        try:
            judged = self._evaluation_cache[key]
        except KeyError:
            judged = self._evaluation_cache[key] = self._judged(*(str(v) for v in key))
        if judged is None:
            return
        make_id, template_id, model_id, number = judged
        gen_id = make_id(essay.gen_id, number)
        if gen_id not in self.evaluations:
            self.evaluations[gen_id] = Generation(
                Stage.EVALUATION, gen_id, essay.gen_id, essay.combo_id, template_id, model_id, number
            )

    def judged_used(self) -> list[tuple[ids.GenIds, str, str, int]]:
        """The (spec, template, judge, replicate) of the evaluations built (a few, whatever the rows)."""
        return [judged for judged in self._evaluation_cache.values() if judged is not None]

    def _judged(
        self, template_id: str, model_id: str, replicate: str
    ) -> tuple[ids.GenIds, str, str, int] | None:
        """An evaluation's ids, template, judge and replicate, checked once per combination."""
        template = self._template(Stage.EVALUATION, template_id, "evaluation_template")
        model = self._model(model_id, "evaluation_llm")
        number = self._replicate(replicate, "evaluation_replicate")
        if template is None or model is None or number is None:
            return None
        make_id = ids.GenIds(Stage.EVALUATION, self._spec(Stage.EVALUATION, template, model))
        return make_id, template_id, model_id, number

    # -- curated inputs ----------------------------------------------------------------------

    def _curated_essay(self, values: Route) -> Generation | None:
        wanted = str(values[_AT["essay_gen_id"]])
        if "essay_template" in self.columns:  # coordinates given: compute, and check against the id
            draft = self._draft(values)
            essay = None if draft is None else self._essay(draft, values)
            if essay is not None and essay.gen_id != wanted:
                self._changed("essay_gen_id", wanted, essay.gen_id)
                return None
            return essay
        essay = self._look_up(wanted, Stage.ESSAY, "essay_gen_id")
        if essay is None:
            return None
        draft = self._look_up(essay.parent_gen_id, Stage.DRAFT, "essay_gen_id", child=wanted)
        if draft is None:
            return None
        self.drafts.setdefault(draft.gen_id, draft)
        self.essays.setdefault(essay.gen_id, essay)
        self._use_combo(draft.combo_id)
        return essay

    def _curated_draft(self, values: Route) -> Generation | None:
        wanted = str(values[_AT["draft_gen_id"]])
        if "draft_template" in self.columns:
            draft = self._draft(values)
            if draft is not None and draft.gen_id != wanted:
                self._changed("draft_gen_id", wanted, draft.gen_id)
                return None
            return draft
        draft = self._look_up(wanted, Stage.DRAFT, "draft_gen_id")
        if draft is not None:
            self.drafts.setdefault(draft.gen_id, draft)
            self._use_combo(draft.combo_id)
        return draft

    def _look_up(self, gen_id: str, stage: Stage, column: str, *, child: str = "") -> Generation | None:
        if self._by_id is None:
            default = self.inputs.default.generations if self.inputs.default is not None else ()
            self._by_id = {g.gen_id: g for g in default if g.stage is not Stage.EVALUATION}
        found = self._by_id.get(gen_id) or self.inputs.known.get(gen_id)
        origin = self._value_origin(column, child or gen_id)
        if found is None:
            what = f"the draft {gen_id!r} of {child!r}" if child else f"{column} {gen_id!r}"
            self._fail(
                origin,
                f"{what} is not a generation of this experiment, nor a finished one of its run state; "
                "give its coordinates too (as daydreamctl cohort new writes them), or check the id",
            )
            return None
        if found.stage is not stage:
            self._fail(origin, f"{column} {gen_id!r} is {_a(found.stage)}, not {_a(stage)}")
            return None
        return found

    def _use_combo(self, combo_id: str) -> None:
        combo = self.combos.get(combo_id)
        if combo is not None:
            self.used_combos.setdefault(combo_id, combo)

    def _changed(self, column: str, wanted: str, computed: str) -> None:
        self._fail(
            self._value_origin(column, wanted),
            f"{column} {wanted!r}: its coordinates now give {computed!r}, so the experiment changed since it "
            "was chosen (a template's text, a concept's description or a stage setting); choose again "
            "(daydreamctl cohort new) or restore what changed",
        )

    # -- lookups -----------------------------------------------------------------------------

    def _template(self, stage: Stage, template_id: str, coordinate: str) -> Template | None:
        template = self._templates.get((stage, template_id))
        if template is not None:
            self.used_templates.setdefault((stage, template_id), (template, coordinate))
        else:
            self._fail(
                self._value_origin(coordinate, template_id),
                f"{coordinate} {template_id!r} is not a {stage} template in {stage}_templates.csv "
                "(it need not be active, but must exist)",
            )
        return template

    def _model(self, model_id: str, coordinate: str) -> LlmModel | None:
        model = self._models.get(model_id)
        if model is None:
            self._fail(
                self._value_origin(coordinate, model_id),
                f"{coordinate} {model_id!r} is not a model in llm_models.csv (it need not be used by the "
                "default cohort, but must exist)",
            )
        return model

    def _replicate(self, value: str, coordinate: str) -> int | None:
        if value.isascii() and value.isdigit() and int(value) >= 1:
            return int(value)
        self._fail(
            self._value_origin(coordinate, value),
            f"{coordinate} {value!r} is not a replicate index (1, 2, ...)",
        )
        return None

    def _spec(self, stage: Stage, template: Template, model: LlmModel) -> str:
        key = (stage, template.template_id, model.model_id)
        spec = self._specs.get(key)
        if spec is None:
            spec = self._specs[key] = generation_spec(stage, template, model, self.params[stage])
        return spec

    # -- problems ----------------------------------------------------------------------------

    def _origin(self, column: str) -> Origin:
        axis = next((a for a in self.spec.axes if a.name == column), None)
        return axis.origin if axis is not None else Origin(self.spec.path, None, column)

    def _value_origin(self, coordinate: str, value: str) -> Origin:
        column = self.columns.get(coordinate, coordinate)
        return self.spec.origins.get((column, value)) or self._origin(column)

    def _fail(self, origin: Origin, message: str) -> None:
        text = f"{origin.key}: {message}"
        if text in self._seen_messages:
            return
        self._seen_messages.add(text)
        self.problems.append(error(origin.path, text, line=origin.line))


def _template_problems(
    compiled: Compiled, inputs: SpecInputs, used: Mapping[tuple[Stage, str], tuple[Template, str]]
) -> list[Problem]:
    """An error for each template the spec uses that has problems in ``1_raw`` (an inactive one's
    are only warnings there): a missing file or a broken template would be paid for, or fail late."""
    label = inputs.raw_label
    found: list[Problem] = []
    for (stage, template_id), (template, coordinate) in used.items():
        if template.active:
            continue  # its problems are errors already, and an experiment with errors builds nothing
        csv_path, text_path = f"{label}/{stage}_templates.csv", f"{label}/templates/{stage}/{template_id}.txt"
        own = [
            p
            for p in inputs.problems
            if p.path == text_path or (p.path == csv_path and p.line == template.line)
        ]
        if own:
            where = _origin_of(compiled, coordinate, template_id)
            found.append(
                error(
                    where.path,
                    f"{where.key}: {coordinate} {template_id!r} is inactive in {csv_path} and has problems "
                    f"there, which this spec would meet when it runs; fix them first: {own[0]}",
                    line=where.line,
                )
            )
    return found


def _origin_of(compiled: Compiled, coordinate: str, value: str) -> Origin:
    """Where the spec first wrote ``value`` for ``coordinate`` (the spec file itself if unknown)."""
    for (column, text), origin in compiled.spec.origins.items():
        if text == value and CANONICAL.get(column) == coordinate:
            return origin
    return Origin(compiled.spec.path, None, coordinate)


def _a(stage: Stage) -> str:
    return f"an {stage}" if str(stage)[0] in "aeiou" else f"a {stage}"


def _ids(templates: Sequence[Template]) -> tuple[str, ...]:
    return tuple(t.template_id for t in templates)


def _replicates(experiment: Experiment, stage: Stage) -> tuple[str, ...]:
    return tuple(str(r) for r in range(1, experiment.replicates_for(stage) + 1))


def _manifest(
    name: str, compiled: Compiled, inputs: SpecInputs, builder: _Builder, fingerprint: str
) -> dict[str, Any]:
    """What defines the named cohort: its spec, and the combos, templates and models its generations
    use (read from the drafts, the essays and the evaluations' few (template, judge) pairs)."""
    experiment = inputs.experiment
    used: dict[Stage, set[str]] = {s: set() for s in STAGES}
    models: dict[str, set[str]] = {"generation": set(), "evaluation": set()}
    for g in (*builder.drafts.values(), *builder.essays.values()):
        used[g.stage].add(g.template_id)
        models["generation"].add(g.llm_model_id)
    for judged in builder.judged_used():
        used[Stage.EVALUATION].add(judged[1])
        models["evaluation"].add(judged[2])
    counts = {Stage.DRAFT: builder.drafts, Stage.ESSAY: builder.essays, Stage.EVALUATION: builder.evaluations}
    return {
        "cohort_id": name,
        "kind": "spec",
        "schema": MANIFEST_SCHEMA,
        "spec": {"path": compiled.spec.path, "fingerprint": fingerprint, "rows": compiled.count},
        "description_level": inputs.settings.experiment.description_level,
        "combos": [
            {"combo_id": c.combo_id, "concept_ids": list(c.concept_ids)} for c in builder.used_combos.values()
        ],
        "templates": {
            str(s): [
                template_entry(t) for t in experiment.templates if t.stage is s and t.template_id in used[s]
            ]
            for s in STAGES
        },
        "models": {
            kind: [model_entry(m) for m in experiment.models if m.model_id in chosen]
            for kind, chosen in models.items()
        },
        "stage_parameters": {str(s): inputs.settings.stage(s).call_parameters() for s in STAGES},
        "counts": {str(s): len(counts[s]) for s in STAGES},
    }
