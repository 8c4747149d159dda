"""Trial renders: each template the cohort uses, rendered once on sample inputs (pure).

Syntax and variable checks read a template; they cannot see a loop that runs for an hour or a
prompt of a gigabyte. So a build renders every template in use once, through the same renderer
and limits as real work: a template past a limit is an error before anything is approved
(it would fail every generation like the sample), any other failure on the sample is a warning
(real inputs may differ: a draft with more lines than the sample, say).

Drafts are rendered with the concepts of the template's first draft; essays and evaluations,
whose inputs are not written yet, with :data:`SAMPLE_PARENT`.
"""

from __future__ import annotations

from collections.abc import Iterable

from daydreamd.core.cohort import Generation
from daydreamd.core.errors import TemplateError, TemplateLimitError
from daydreamd.core.experiment import Generator
from daydreamd.core.jobs import Jobs
from daydreamd.core.problems import Problem, error, warning
from daydreamd.core.prompts import render_prompt
from daydreamd.core.stages import Stage
from daydreamd.core.templates import PromptRenderer

_PARAGRAPH = (
    "The idea starts from a plain observation and follows it through three examples, each "
    "adding a constraint the previous one ignored, until the constraints meet in one design."
)
SAMPLE_PARENT = "\n\n".join(
    [f"# Sample {n}\n\n" + "\n".join([_PARAGRAPH] * 4) for n in range(1, 9)] + ["SCORE: 7"]
)
"""A parent's text for essays' and evaluations' trial renders: headed paragraphs, ~6 KB."""


def first_of_each_template(
    generations: Iterable[Generation], wanted: set[tuple[Stage, str]] | None = None
) -> list[Generation]:
    """The first generation of each (stage, template), in cohort order.

    With ``wanted``, the scan stops once each of those was seen: a big cohort is mostly
    evaluations, and its first ones come early.
    """
    seen: dict[tuple[Stage, str], Generation] = {}
    missing = set(wanted) if wanted else None
    for generation in generations:
        key = (generation.stage, generation.template_id)
        if key in seen:
            continue
        seen[key] = generation
        if missing is not None:
            missing.discard(key)
            if not missing:
                break
    return list(seen.values())


def trial_problems(
    generations: Iterable[Generation], jobs: Jobs, renderer: PromptRenderer, display: str
) -> list[Problem]:
    """Render each template in use once; problems name its file (``display`` is 1_raw's label)."""
    problems = []
    wanted = {(t.stage, t.template_id) for t in jobs.templates() if t.generator is Generator.LLM and t.active}
    for generation in first_of_each_template(generations, wanted):
        job = jobs.job(generation)
        if job is None or job.template.generator is Generator.COPY:
            continue
        parent = None if job.stage is Stage.DRAFT else SAMPLE_PARENT
        path = f"{display}/templates/{job.stage}/{job.template.template_id}.txt"
        try:
            render_prompt(renderer, job, parent)
        except TemplateLimitError as exc:
            problems.append(error(path, f"a trial render on sample inputs failed: {exc}"))
        except TemplateError as exc:
            problems.append(warning(path, f"a trial render on sample inputs failed: {exc}; check it"))
    return problems
