"""The ids a spec may name, and the check of each compiled column against them (pure).

A spec's columns are matched to what they mean by name, as the original project's cohort planner
read them: ``draft_template``, ``essay_template``, ``evaluation_template`` (template ids of that
stage), ``draft_llm`` (also ``draft_model``, ``generation_llm``) and ``essay_llm`` (generation
models), ``evaluation_llm`` (judges), ``combo_id`` (also ``combo``), and replicate axes such as
``draft_replicate`` / ``draft_template_replicate`` (see :data:`AXIS_KINDS`).

A template or model named by a spec need not be active in ``1_raw`` (that is the point of a spec:
it chooses), but it must exist there: :func:`catalog_from_experiment` takes every row of the
template CSVs and of ``llm_models.csv`` (``for_generation`` / ``for_evaluation`` are the default
cohort's choice, like ``active``). A replicate level must be a positive integer. A column of
another name is compiled as it is, with a warning that nothing checks it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from daydreamd.core.experiment import Experiment
from daydreamd.core.problems import Problem, error, warning
from daydreamd.core.spec.document import Origin
from daydreamd.core.spec.parsing import Spec, Value
from daydreamd.core.spec.rules import Design
from daydreamd.core.stages import Stage

MAX_PER_COLUMN = 20
"""At most this many unknown values are listed per column (then a count of the rest)."""


class AxisKind(StrEnum):
    """What a column's values are."""

    COMBO = "combo"
    DRAFT_TEMPLATE = "draft template"
    ESSAY_TEMPLATE = "essay template"
    EVALUATION_TEMPLATE = "evaluation template"
    GENERATION_MODEL = "generation model"
    EVALUATION_MODEL = "evaluation model"
    REPLICATE = "replicate"
    GEN_ID = "gen_id"


AXIS_KINDS: dict[str, AxisKind] = {
    "combo_id": AxisKind.COMBO,
    "combo": AxisKind.COMBO,
    "draft_template": AxisKind.DRAFT_TEMPLATE,
    "essay_template": AxisKind.ESSAY_TEMPLATE,
    "evaluation_template": AxisKind.EVALUATION_TEMPLATE,
    "draft_llm": AxisKind.GENERATION_MODEL,
    "draft_model": AxisKind.GENERATION_MODEL,
    "generation_llm": AxisKind.GENERATION_MODEL,
    "essay_llm": AxisKind.GENERATION_MODEL,
    "evaluation_llm": AxisKind.EVALUATION_MODEL,
    **dict.fromkeys(("draft_replicate", "draft_template_replicate", "draft_rep"), AxisKind.REPLICATE),
    **dict.fromkeys(("essay_replicate", "essay_template_replicate", "essay_rep"), AxisKind.REPLICATE),
    **dict.fromkeys(
        (
            "evaluation_replicate",
            "evaluation_template_replicate",
            "evaluation_llm_replicate",
            "evaluation_rep",
        ),
        AxisKind.REPLICATE,
    ),
    "draft_gen_id": AxisKind.GEN_ID,
    "essay_gen_id": AxisKind.GEN_ID,
}
"""Column name -> what its values are (the names the original project's planner understood)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalog:
    """The ids that exist, per kind. ``combos`` None means combo ids are not checked."""

    draft_templates: frozenset[str] = frozenset()
    essay_templates: frozenset[str] = frozenset()
    evaluation_templates: frozenset[str] = frozenset()
    generation_models: frozenset[str] = frozenset()
    evaluation_models: frozenset[str] = frozenset()
    combos: frozenset[str] | None = None
    raw_label: str = "1_raw"
    combos_label: str = "combo_mappings.csv"

    def known(self, kind: AxisKind) -> tuple[frozenset[str] | None, str]:
        """The ids of ``kind`` and where they come from (None: not checked)."""
        raw = self.raw_label
        return {
            AxisKind.COMBO: (self.combos, self.combos_label),
            AxisKind.DRAFT_TEMPLATE: (self.draft_templates, f"{raw}/draft_templates.csv"),
            AxisKind.ESSAY_TEMPLATE: (self.essay_templates, f"{raw}/essay_templates.csv"),
            AxisKind.EVALUATION_TEMPLATE: (self.evaluation_templates, f"{raw}/evaluation_templates.csv"),
            AxisKind.GENERATION_MODEL: (self.generation_models, f"{raw}/llm_models.csv"),
            AxisKind.EVALUATION_MODEL: (self.evaluation_models, f"{raw}/llm_models.csv"),
            AxisKind.REPLICATE: (None, ""),
            AxisKind.GEN_ID: (None, ""),
        }[kind]


def catalog_from_experiment(
    experiment: Experiment, *, combos: Iterable[str] | None = None, raw_label: str = "1_raw"
) -> Catalog:
    """Every template (active or not) and every model of the loaded experiment; ``combos`` if given."""

    def templates(stage: Stage) -> frozenset[str]:
        return frozenset(t.template_id for t in experiment.templates if t.stage is stage)

    models = frozenset(m.model_id for m in experiment.models)
    return Catalog(
        draft_templates=templates(Stage.DRAFT),
        essay_templates=templates(Stage.ESSAY),
        evaluation_templates=templates(Stage.EVALUATION),
        generation_models=models,
        evaluation_models=models,
        combos=None if combos is None else frozenset(combos),
        raw_label=raw_label,
    )


def check_columns(spec: Spec, design: Design, catalog: Catalog | None) -> list[Problem]:
    """Each column's values against what they must be: ids in the catalog, positive replicate indices."""
    problems: list[Problem] = []
    axis_origins = {axis.name: axis.origin for axis in spec.axes}
    for column, _ in design.columns:
        kind = AXIS_KINDS.get(column)
        fallback = axis_origins.get(column, Origin(spec.path, None, column))
        if kind is None:
            problems.append(
                warning(
                    fallback.path,
                    f"{fallback.key}: column {column!r} is not one daydreamd knows "
                    f"({', '.join(sorted(AXIS_KINDS))}); it is compiled as written and not checked",
                    line=fallback.line,
                )
            )
            continue
        values = design.column_values(column)
        if kind is AxisKind.REPLICATE:
            bad = [v for v in values if not _is_replicate(v)]
            noun, source = "a replicate index", "a positive integer (1, 2, ...)"
            verb = "is not"
        else:
            if catalog is None:
                continue
            known, source = catalog.known(kind)
            if known is None:
                continue
            bad = [v for v in values if not isinstance(v, str) or v not in known]
            article = "an" if str(kind)[0] in "aeiou" else "a"
            noun, verb = f"{article} {kind}", "is not"
            source = f"in {source}"
        for value in bad[:MAX_PER_COLUMN]:
            text = value if isinstance(value, str) else repr(value)
            where = spec.origins.get((column, text), fallback) if isinstance(value, str) else fallback
            what = f"{noun}: it must be {source}" if kind is AxisKind.REPLICATE else f"{noun} {source}"
            hint = (
                " (templates and models need not be active, but must exist)"
                if kind
                not in (
                    AxisKind.REPLICATE,
                    AxisKind.COMBO,
                )
                else ""
            )
            problems.append(
                error(where.path, f"{where.key}: {column} {text!r} {verb} {what}{hint}", line=where.line)
            )
        if len(bad) > MAX_PER_COLUMN:
            problems.append(
                error(
                    fallback.path,
                    f"{fallback.key}: and {len(bad) - MAX_PER_COLUMN} more unknown value(s) of {column}",
                    line=fallback.line,
                )
            )
    return problems


def _is_replicate(value: Value) -> bool:
    return isinstance(value, str) and value.isascii() and value.isdigit() and int(value) >= 1
