"""From an experiment to its cohort: combos, generations with their ids and parents, manifest (pure).

The cohort is every generation the experiment defines right now:

* drafts = combos x active draft templates x generation models x draft replicates
* essays = drafts x active essay templates x essay replicates (an essay inherits its draft's model)
* evaluations = essays x active evaluation templates x evaluation models x evaluation replicates

It is rebuilt from scratch whenever ``1_raw`` changes; ids are content addresses (see ``ids``),
so an unchanged generation keeps its id and its finished work across rebuilds.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from daydreamd.core import ids
from daydreamd.core.canonical import sha256_hex
from daydreamd.core.config import Settings
from daydreamd.core.experiment import Concept, Experiment, Generator, LlmModel, Template
from daydreamd.core.problems import Problem, error
from daydreamd.core.stages import STAGES, Stage

MANIFEST_SCHEMA = 1
MEMBERSHIP_COLUMNS = (
    "stage",
    "gen_id",
    "cohort_id",
    "parent_gen_id",
    "combo_id",
    "template_id",
    "llm_model_id",
    "replicate",
)


@dataclass(frozen=True, slots=True)
class Combo:
    """A k-subset of the active concepts, in CSV order, at one description level."""

    combo_id: str
    concept_ids: tuple[str, ...]
    description_level: str


class Generation(NamedTuple):
    """One unit of work in the cohort: a row of ``membership.csv`` without the cohort id.

    A named tuple rather than a frozen dataclass, for speed alone: a cohort makes one per
    generation, a million or more per rebuild, and a tuple is made in less than half the time.
    """

    stage: Stage
    gen_id: str
    parent_gen_id: str
    """The parent generation ('' for drafts, whose input is their combo)."""
    combo_id: str
    template_id: str
    llm_model_id: str
    """The model that produces it (an essay's is its draft's model)."""
    replicate: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Cohort:
    """The cohort: its id, its manifest and every generation, drafts first, parents before children."""

    cohort_id: str
    manifest: dict[str, Any]
    combos: tuple[Combo, ...]
    generations: tuple[Generation, ...]

    def counts(self) -> dict[str, int]:
        """Generations per stage."""
        return dict(self.manifest["counts"])

    def breakdown(self) -> dict[str, dict[str, dict[str, int]]]:
        """Generations per stage, per template and per model: what ``daydreamctl cohort`` shows."""
        by_template: dict[Stage, Counter[str]] = {s: Counter() for s in STAGES}
        by_model: dict[Stage, Counter[str]] = {s: Counter() for s in STAGES}
        for g in self.generations:
            by_template[g.stage][g.template_id] += 1
            by_model[g.stage][g.llm_model_id] += 1
        return {
            str(s): {
                "templates": dict(sorted(by_template[s].items())),
                "models": dict(sorted(by_model[s].items())),
            }
            for s in STAGES
        }


def build_combos(experiment: Experiment, k_max: int, level: str) -> tuple[Combo, ...]:
    """Every k-subset of the active concepts, k = min(k_max, active concepts), concepts in CSV order."""
    concepts = [c.concept_id for c in experiment.active_concepts()]
    k = min(k_max, len(concepts))
    if k == 0:
        return ()
    return tuple(
        Combo(ids.combo_id(subset, level, k), subset, level) for subset in itertools.combinations(concepts, k)
    )


def build_cohort(experiment: Experiment, settings: Settings) -> tuple[Cohort, tuple[Problem, ...]]:
    """Build the cohort of a validated experiment, with problems for id collisions or broken links."""
    level = settings.experiment.description_level
    combos = build_combos(experiment, settings.experiment.k_max, level)
    drafts = list(_drafts(experiment, settings, combos))
    essays = list(_essays(experiment, settings, drafts))
    evaluations = list(_evaluations(experiment, settings, essays))
    generations = (*drafts, *essays, *evaluations)
    manifest = build_manifest(experiment, settings, combos, generations)
    content_id = ids.cohort_id(manifest)
    cohort_id = settings.experiment.cohort or content_id
    manifest = {"cohort_id": cohort_id, "content_id": content_id, **manifest}
    cohort = Cohort(cohort_id=cohort_id, manifest=manifest, combos=combos, generations=generations)
    return cohort, tuple(check_links(generations))


def draft_parent_key(concepts: Mapping[str, Concept], combo: Combo) -> str:
    """What a draft's id takes from its combo: the combo id and each concept's name and description."""
    texts = []
    for cid in combo.concept_ids:
        text, used = concepts[cid].description(combo.description_level)
        texts.append((cid, concepts[cid].name, used, text))
    return ids.draft_parent_key(combo.combo_id, texts)


def _drafts(experiment: Experiment, settings: Settings, combos: Sequence[Combo]) -> Iterator[Generation]:
    concepts = {c.concept_id: c for c in experiment.concepts}
    specs = _specs(experiment, settings, Stage.DRAFT, experiment.generation_models())
    replicates = range(1, experiment.replicates_for(Stage.DRAFT) + 1)
    for combo in combos:
        parent_key = draft_parent_key(concepts, combo)
        for (template, model), spec in specs.items():
            for r in replicates:
                gen_id = ids.gen_id(Stage.DRAFT, spec, parent_key, r)
                yield Generation(Stage.DRAFT, gen_id, "", combo.combo_id, template, model, r)


def _essays(experiment: Experiment, settings: Settings, drafts: Sequence[Generation]) -> Iterator[Generation]:
    specs = _specs(experiment, settings, Stage.ESSAY, experiment.generation_models())
    templates = [t.template_id for t in experiment.active_templates(Stage.ESSAY)]
    replicates = range(1, experiment.replicates_for(Stage.ESSAY) + 1)
    for d in drafts:
        for template in templates:
            spec = specs.get((template, d.llm_model_id))
            if spec is None:  # the draft's model is not a generation model: cannot happen in a valid cohort
                continue
            for r in replicates:
                gen_id = ids.gen_id(Stage.ESSAY, spec, d.gen_id, r)
                yield Generation(Stage.ESSAY, gen_id, d.gen_id, d.combo_id, template, d.llm_model_id, r)


def _evaluations(
    experiment: Experiment, settings: Settings, essays: Sequence[Generation]
) -> Iterator[Generation]:
    specs = _specs(experiment, settings, Stage.EVALUATION, experiment.evaluation_models())
    replicates = range(1, experiment.replicates_for(Stage.EVALUATION) + 1)
    for e in essays:
        for (template, model), spec in specs.items():
            for r in replicates:
                gen_id = ids.gen_id(Stage.EVALUATION, spec, e.gen_id, r)
                yield Generation(Stage.EVALUATION, gen_id, e.gen_id, e.combo_id, template, model, r)


def _specs(
    experiment: Experiment, settings: Settings, stage: Stage, models: Sequence[LlmModel]
) -> dict[tuple[str, str], str]:
    """The gen_id spec of each (template, model) pair of a stage, in CSV order, computed once."""
    params = settings.stage(stage).call_parameters()
    return {
        (t.template_id, m.model_id): generation_spec(stage, t, m, params)
        for t in experiment.active_templates(stage)
        for m in models
    }


def generation_spec(stage: Stage, template: Template, model: LlmModel, params: dict[str, Any]) -> str:
    """What a template and a model contribute to a gen_id (the model is ignored for copy templates)."""
    return ids.gen_spec(
        stage=stage,
        template_id=template.template_id,
        template_sha256=template.text_sha256,
        generator=str(template.generator),
        llm_model_id=model.model_id,
        model=model.model,
        params=params,
    )


def check_links(generations: Sequence[Generation]) -> Iterator[Problem]:
    """Every gen_id unique, every parent present and of the parent stage."""
    stage_of: dict[str, Stage] = {}
    for g in generations:
        if g.gen_id in stage_of:
            yield error("cohort", f"gen_id collision: {g.gen_id} is produced twice; report this as a bug")
        stage_of[g.gen_id] = g.stage
    expected = {Stage.ESSAY: Stage.DRAFT, Stage.EVALUATION: Stage.ESSAY}
    for g in generations:
        if g.stage in expected and stage_of.get(g.parent_gen_id) is not expected[g.stage]:
            yield error(
                "cohort", f"{g.gen_id}: parent {g.parent_gen_id!r} is not a {expected[g.stage]} of the cohort"
            )


def build_manifest(
    experiment: Experiment, settings: Settings, combos: Sequence[Combo], generations: Sequence[Generation]
) -> dict[str, Any]:
    """Everything that defines the cohort, in a canonical order (hashed into the cohort id)."""
    level = settings.experiment.description_level
    counts = Counter(g.stage for g in generations)
    return {
        "schema": MANIFEST_SCHEMA,
        "k": len(combos[0].concept_ids) if combos else 0,
        "description_level": level,
        "concepts": [concept_entry(c, level) for c in experiment.active_concepts()],
        "combos": [{"combo_id": c.combo_id, "concept_ids": list(c.concept_ids)} for c in combos],
        "templates": {str(s): [template_entry(t) for t in _sorted_templates(experiment, s)] for s in STAGES},
        "models": {
            "generation": [model_entry(m) for m in sorted(experiment.generation_models(), key=_model_key)],
            "evaluation": [model_entry(m) for m in sorted(experiment.evaluation_models(), key=_model_key)],
        },
        "replicates": {str(s): experiment.replicates_for(s) for s in STAGES},
        "stage_parameters": {str(s): settings.stage(s).call_parameters() for s in STAGES},
        "counts": {str(s): counts.get(s, 0) for s in STAGES},
    }


def concept_entry(concept: Any, level: str) -> dict[str, str]:
    text, used = concept.description(level)
    return {"concept_id": concept.concept_id, "name": concept.name, "level": used, "sha256": sha256_hex(text)}


def _sorted_templates(experiment: Experiment, stage: Stage) -> list[Template]:
    return sorted(experiment.active_templates(stage), key=lambda t: t.template_id)


def template_entry(template: Template) -> dict[str, str]:
    return {
        "template_id": template.template_id,
        "sha256": template.text_sha256,
        "generator": str(template.generator),
        "parser": template.parser if template.generator is Generator.LLM else "",
    }


def _model_key(model: LlmModel) -> str:
    return model.model_id


def model_entry(model: LlmModel) -> dict[str, str]:
    return {"id": model.model_id, "model": model.model}
