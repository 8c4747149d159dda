"""Synthetic experiments for the benchmarks: valid ``1_raw`` directories of a chosen shape."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

DRAFT_TEXT = "{% for concept in concepts %}{{ concept.name }}: {{ concept.content }}\n{% endfor %}\nWrite.\n"
ESSAY_TEXT = "{{ draft_block }}\n"
EVALUATION_TEXT = "{{ response }}\n"


@dataclass(frozen=True)
class Shape:
    """How many of each axis the experiment has (all active)."""

    concepts: int = 40
    draft_templates: int = 4
    essay_templates: int = 2
    evaluation_templates: int = 2
    generation_models: int = 3
    judge_models: int = 2


def concepts_for(combos: int, k: int = 2) -> int:
    """The fewest concepts whose k-subsets number at least ``combos`` (drafts per template and model)."""
    if combos < 1 or k < 1:
        raise ValueError(f"need at least one combo of at least one concept, got combos={combos}, k={k}")
    concepts = k
    while math.comb(concepts, k) < combos:
        concepts += 1
    return concepts


def drafts_only(drafts_per_model: int, generation_models: int = 1, k: int = 2) -> Shape:
    """One draft template on ``generation_models`` models, at least ``drafts_per_model`` drafts each.

    No essay or evaluation templates and no judges: the cohort is drafts only (the loader warns
    about the missing stages, which is expected here).
    """
    return Shape(
        concepts=concepts_for(drafts_per_model, k),
        draft_templates=1,
        essay_templates=0,
        evaluation_templates=0,
        generation_models=generation_models,
        judge_models=0,
    )


def _paragraph(index: int) -> str:
    """A realistic-length (~600 characters) description, different for every concept."""
    sentence = (
        f"Concept number {index} describes a way in which discoveries become more likely when "
        "people, tools and problems meet under the right conditions. "
    )
    return (sentence * 5).strip() + "\n"


def write_experiment(raw_dir: Path, shape: Shape = Shape()) -> None:
    """Write a valid synthetic experiment of ``shape`` into ``raw_dir``."""
    (raw_dir / "concepts" / "descriptions-paragraph").mkdir(parents=True)
    for stage in ("draft", "essay", "evaluation"):
        (raw_dir / "templates" / stage).mkdir(parents=True)

    concept_rows = ["concept_id,name,active"]
    for i in range(shape.concepts):
        concept_id = f"concept-{i:03d}"
        concept_rows.append(f"{concept_id},Concept {i},true")
        (raw_dir / "concepts" / "descriptions-paragraph" / f"{concept_id}.txt").write_text(
            _paragraph(i), encoding="utf-8"
        )
    _write_lines(raw_dir / "concepts_metadata.csv", concept_rows)

    header = "template_id,template_name,description,parser,generator,active"
    stages = (
        ("draft", shape.draft_templates, "", DRAFT_TEXT),
        ("essay", shape.essay_templates, "", ESSAY_TEXT),
        ("evaluation", shape.evaluation_templates, "in_last_line", EVALUATION_TEXT),
    )
    for stage, count, parser, text in stages:
        rows = [header]
        for i in range(count):
            template_id = f"{stage}-{i}"
            rows.append(f"{template_id},{stage.title()} {i},Synthetic {stage} template {i},{parser},llm,true")
            # A per-template comment keeps the template hashes (and so the gen ids) distinct.
            body = f"{{# {template_id} #}}{text}"
            (raw_dir / "templates" / stage / f"{template_id}.txt").write_text(body, encoding="utf-8")
        _write_lines(raw_dir / f"{stage}_templates.csv", rows)

    model_rows = ["id,model,provider,display_name,for_generation,for_evaluation"]
    for i in range(shape.generation_models):
        model_rows.append(f"gen_{i},vendor/gen-model-{i},vendor,Generator {i},true,false")
    for i in range(shape.judge_models):
        model_rows.append(f"judge_{i},vendor/judge-model-{i},vendor,Judge {i},false,true")
    _write_lines(raw_dir / "llm_models.csv", model_rows)
    _write_lines(
        raw_dir / "replication_config.csv", ["stage,replicates", "draft,1", "essay,1", "evaluation,1"]
    )


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
