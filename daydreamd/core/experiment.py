"""The experiment as loaded from ``data/1_raw``: concepts, templates, models, replication (pure).

These frozen values are what the cohort builder and the renderer work from. They hold every row
of the CSVs, active or not, so tools can explain why something is not in the cohort; the
``active_*`` accessors give what the cohort uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from daydreamd.core.stages import Stage

if TYPE_CHECKING:  # the verdict reader compiles its patterns on import; only its type is needed here
    from daydreamd.core.verdicts import VerdictSpec

DESCRIPTION_LEVELS: tuple[str, ...] = ("sentence", "paragraph", "article")


class Generator(StrEnum):
    """How a template produces its output: by calling an LLM, or by copying the parent's text."""

    LLM = "llm"
    COPY = "copy"


@dataclass(frozen=True, slots=True, kw_only=True)
class Concept:
    """One row of ``concepts_metadata.csv`` with the description texts found for it."""

    concept_id: str
    name: str
    active: bool
    line: int = 0
    descriptions: tuple[tuple[str, str], ...] = ()
    """(level, text) pairs for the levels that have a file."""

    def description(self, level: str) -> tuple[str, str]:
        """The text for ``level`` and the level it really came from.

        Falls back requested -> paragraph -> sentence -> the concept's name (level ``name``),
        so a concept missing a file still renders.
        """
        texts = dict(self.descriptions)
        for candidate in (level, "paragraph", "sentence"):
            if candidate in texts:
                return texts[candidate], candidate
        return self.name, "name"


@dataclass(frozen=True, slots=True, kw_only=True)
class Template:
    """One row of a ``<stage>_templates.csv`` with its template text (None for copy or missing)."""

    stage: Stage
    template_id: str
    name: str = ""
    description: str = ""
    parser: str = "identity"
    """The registered parser name ('' in the CSV means identity for drafts and essays)."""
    generator: Generator = Generator.LLM
    active: bool = True
    text: str | None = None
    text_sha256: str = ""
    """SHA-256 of the template text ('' when there is none): part of every gen_id it produces."""
    line: int = 0
    extra: tuple[tuple[str, str], ...] = ()
    """Columns beyond the standard ones (e.g. ``score_max``), as (column, value)."""
    verdict: VerdictSpec | None = None
    """For evaluation templates: the verdict label and score scale the judge is asked for."""

    def extra_value(self, column: str, default: str = "") -> str:
        """The value of an extra CSV column, or ``default``."""
        return dict(self.extra).get(column, default)


@dataclass(frozen=True, slots=True, kw_only=True)
class LlmModel:
    """One row of ``llm_models.csv``: ``model_id`` is what everything refers to."""

    model_id: str
    model: str
    """The provider's model string, e.g. ``google/gemini-2.5-flash``."""
    provider: str = ""
    display_name: str = ""
    for_generation: bool = False
    for_evaluation: bool = False
    line: int = 0
    extra: tuple[tuple[str, str], ...] = ()

    def extra_value(self, column: str, default: str = "") -> str:
        """The value of an extra CSV column (e.g. ``input_usd_per_mtok``), or ``default``."""
        return dict(self.extra).get(column, default)


@dataclass(frozen=True, slots=True, kw_only=True)
class Experiment:
    """Everything in ``data/1_raw`` that defines the cohort."""

    concepts: tuple[Concept, ...] = ()
    templates: tuple[Template, ...] = ()
    models: tuple[LlmModel, ...] = ()
    replicates: tuple[tuple[Stage, int], ...] = ()
    """Replicates per stage from ``replication_config.csv``; a stage not listed has 1."""
    fingerprint: str = field(default="", compare=False)
    """The raw files' fingerprint this experiment was loaded from."""

    def active_concepts(self) -> tuple[Concept, ...]:
        """Active concepts in CSV order (combos keep this order inside them)."""
        return tuple(c for c in self.concepts if c.active)

    def active_templates(self, stage: Stage) -> tuple[Template, ...]:
        """Active templates of ``stage`` in CSV order."""
        return tuple(t for t in self.templates if t.stage is stage and t.active)

    def template(self, stage: Stage, template_id: str) -> Template | None:
        """The template with this id in this stage, active or not."""
        return next((t for t in self.templates if t.stage is stage and t.template_id == template_id), None)

    def generation_models(self) -> tuple[LlmModel, ...]:
        """Models marked ``for_generation`` in CSV order."""
        return tuple(m for m in self.models if m.for_generation)

    def evaluation_models(self) -> tuple[LlmModel, ...]:
        """Models marked ``for_evaluation`` in CSV order."""
        return tuple(m for m in self.models if m.for_evaluation)

    def model(self, model_id: str) -> LlmModel | None:
        """The model with this id, or None."""
        return next((m for m in self.models if m.model_id == model_id), None)

    def replicates_for(self, stage: Stage) -> int:
        """How many replicates each generation of ``stage`` has (default 1)."""
        return dict(self.replicates).get(stage, 1)
