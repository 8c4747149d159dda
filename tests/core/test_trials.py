"""Trial renders on sample inputs (pure, with the in-process renderer and its size limit)."""

from __future__ import annotations

from collections.abc import Iterator

from daydreamd.core.build import Build, build_from_raw
from daydreamd.core.cohort import Generation
from daydreamd.core.config import Settings
from daydreamd.core.problems import Level
from daydreamd.core.snapshot import RawFiles
from daydreamd.core.stages import Stage
from daydreamd.core.templates import Renderer, RenderLimits
from daydreamd.core.trials import first_of_each_template
from tests.core.experiment_files import experiment_files

LIMITS = RenderLimits(max_bytes=10_000)


def build(overrides: dict[str, str | None] | None = None) -> Build:
    raw = RawFiles.of(experiment_files(overrides))
    return build_from_raw(raw, Settings(), Renderer(LIMITS))


def test_ordinary_templates_pass_their_trial() -> None:
    result = build()
    assert result.problems == ()
    assert result.cohort is not None


def test_a_template_past_a_limit_on_the_sample_is_an_error_that_blocks_the_cohort() -> None:
    result = build({"templates/essay/essay.txt": "{{ draft_block * 100 }}"})
    assert result.cohort is None
    (problem,) = result.problems
    assert (problem.level, problem.path) == (Level.ERROR, "1_raw/templates/essay/essay.txt")
    assert "trial render" in problem.message and "render.max_bytes" in problem.message


def test_other_failures_on_the_sample_are_warnings() -> None:
    """Real inputs may differ from the sample (a longer essay, say): the cohort is still built."""
    result = build({"templates/evaluation/judge.txt": "{{ response.splitlines()[500] }}"})
    assert result.cohort is not None
    (problem,) = result.problems
    assert (problem.level, problem.path) == (Level.WARNING, "1_raw/templates/evaluation/judge.txt")
    assert "has no element 500" in problem.message


def test_drafts_are_tried_with_the_concepts_of_their_first_draft() -> None:
    """Too big only for combos with Gamma: the first draft (Alpha, Beta) passes, so no problem."""
    text = "{% for c in concepts %}{{ c.name * (100000 if c.name == 'Gamma' else 1) }}{% endfor %}"
    result = build({"templates/draft/sketch.txt": text})
    assert result.problems == ()
    assert result.cohort is not None
    first = first_of_each_template(result.cohort.generations)[0]
    assert first.stage is Stage.DRAFT and "gamma" not in first.combo_id


def test_the_scan_for_first_generations_stops_once_all_wanted_are_seen() -> None:
    cohort = build().cohort
    assert cohort is not None
    read: list[Generation] = []

    def counted() -> Iterator[Generation]:
        for generation in cohort.generations:
            read.append(generation)
            yield generation

    wanted = {(Stage.DRAFT, "sketch"), (Stage.ESSAY, "essay")}
    firsts = first_of_each_template(counted(), wanted)
    assert {(g.stage, g.template_id) for g in firsts} == wanted
    assert len(read) < len(cohort.generations)
    assert len(first_of_each_template(cohort.generations)) == 3
