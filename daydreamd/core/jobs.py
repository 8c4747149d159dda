"""Jobs: a cohort generation joined with what it needs to run (pure).

The cohort knows ids; running a generation needs the template text, the model string, the
stage's settings and, for drafts, the concepts' texts. ``Jobs`` indexes the experiment once so
turning a million generations into jobs costs a dict lookup each.
"""

from __future__ import annotations

from dataclasses import dataclass

from daydreamd.core.cohort import Generation, build_combos
from daydreamd.core.config import Settings, StageSettings
from daydreamd.core.experiment import Experiment, Generator, LlmModel, Template
from daydreamd.core.stages import Stage


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """Everything needed to run one generation."""

    generation: Generation
    template: Template
    model: LlmModel | None
    """The model that answers (None for copy templates, which call none)."""
    settings: StageSettings
    concepts: tuple[tuple[str, str], ...] = ()
    """(name, content) in combo order: a draft's input."""

    @property
    def stage(self) -> Stage:
        """The generation's stage."""
        return self.generation.stage

    @property
    def gen_id(self) -> str:
        """The generation's id."""
        return self.generation.gen_id


class Jobs:
    """Makes jobs for the generations of one experiment under one set of settings."""

    def __init__(self, experiment: Experiment, settings: Settings) -> None:
        level = settings.experiment.description_level
        self._settings = settings
        self._templates = {(t.stage, t.template_id): t for t in experiment.templates}
        self._models = {m.model_id: m for m in experiment.models}
        concepts = {c.concept_id: c for c in experiment.concepts}
        self._combo_inputs = {
            combo.combo_id: tuple(
                (concepts[cid].name, concepts[cid].description(level)[0]) for cid in combo.concept_ids
            )
            for combo in build_combos(experiment, settings.experiment.k_max, level)
        }

    def templates(self) -> list[Template]:
        """Every template of the experiment."""
        return list(self._templates.values())

    def template(self, stage: Stage, template_id: str) -> Template | None:
        """A template of the experiment by stage and id."""
        return self._templates.get((stage, template_id))

    def models(self) -> list[LlmModel]:
        """Every model of the experiment, in CSV order."""
        return list(self._models.values())

    def model(self, model_id: str) -> LlmModel | None:
        """A model of the experiment by id."""
        return self._models.get(model_id)

    def job(self, generation: Generation) -> Job | None:
        """The job, or None when the generation's template, model or combo is not in the experiment."""
        template = self._templates.get((generation.stage, generation.template_id))
        if template is None:
            return None
        model = None
        if template.generator is Generator.LLM:
            model = self._models.get(generation.llm_model_id)
            if model is None:
                return None
        concepts: tuple[tuple[str, str], ...] = ()
        if generation.stage is Stage.DRAFT:
            if generation.combo_id not in self._combo_inputs:
                return None
            concepts = self._combo_inputs[generation.combo_id]
        return Job(
            generation=generation,
            template=template,
            model=model,
            settings=self._settings.stage(generation.stage),
            concepts=concepts,
        )
