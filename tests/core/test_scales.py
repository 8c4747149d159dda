"""Scale inference from an evaluation template's text, and the row's columns that override it."""

from __future__ import annotations

from pathlib import Path

import pytest

from daydreamd.core.loader import load_experiment
from daydreamd.core.scales import ScaleSource, infer_scale
from daydreamd.core.snapshot import read_raw_dir
from daydreamd.core.stages import Stage

UPSTREAM_RAW = Path(__file__).parents[3] / "shared" / "corpus" / "upstream-daydreaming" / "1_raw"


@pytest.mark.parametrize(
    ("text", "expected", "line"),
    [
        ("Rate the essay.\nEnd with exactly one line: SCORE: X where X is a digit 0-9.\nSCORE: X", (0, 9), 2),
        ("Score it on a scale of 0 to 10.\n\nSCORE: N", (0, 10), 1),
        ("Give a rating from 1–10.\n**SCORE:** N", (1, 10), 1),
        ("**SCORE:** 0-10", (0, 10), 1),
        ("Use a score between 0 and 9.\nSCORE: X", (0, 9), 1),
        ("Final score out of 10.\nSCORE: N", (0, 10), 1),
        ("End with SCORE: X, X being a single digit.", (0, 9), 1),
    ],
)
def test_the_statement_by_the_verdict_instruction_decides(
    text: str, expected: tuple[int, int], line: int
) -> None:
    inferred = infer_scale(text)
    assert (inferred.scale.minimum, inferred.scale.maximum) == expected
    assert inferred.scale.source is ScaleSource.VERDICT_INSTRUCTION
    assert inferred.scale.line == line
    assert inferred.warning is None


def test_a_sub_rubric_far_from_the_verdict_does_not_decide() -> None:
    """A 0-10 sub-rubric early on, the final verdict on 0-9: the verdict's neighbourhood wins."""
    text = "\n".join(
        [
            "Rate each section on a 0-10 scale:",
            *(f"- section {i}" for i in range(30)),
            "Convert to 0-9 scale.",
            "SCORE: X",
        ]
    )
    inferred = infer_scale(text)
    assert (inferred.scale.minimum, inferred.scale.maximum) == (0, 9)
    assert inferred.scale.line == 32


@pytest.mark.parametrize(
    "text",
    [
        "- Poor Integration (1-3): no connection.\n1-2: isolated mentions.\nSCORE: X",
        "Award 90-100 points for excellence, 0-19 points otherwise.\nSCORE: X",
        "**Example (Score: 8-9):** strong.\nSCORE: X",
        "Analyse sections 1–3, then give the final score.\nSCORE: X",
    ],
)
def test_rubric_bands_and_point_ranges_are_not_scales(text: str) -> None:
    inferred = infer_scale(text)
    assert inferred.scale.source is ScaleSource.DEFAULT
    assert inferred.warning is not None and "states no scale" in inferred.warning


def test_several_scales_without_a_verdict_instruction_is_a_warning() -> None:
    inferred = infer_scale("Score novelty 0-10.\nScore rigor 0-9.\nWrite your thoughts.")
    assert inferred.scale.source is ScaleSource.DEFAULT
    assert inferred.warning is not None
    assert "0-9 (line 2)" in inferred.warning and "0-10 (line 1)" in inferred.warning


def _experiment(tmp_path: Path, row_extra: str, text: str) -> tuple[object, list[str]]:
    raw = tmp_path / "1_raw"
    (raw / "templates" / "draft").mkdir(parents=True)
    (raw / "templates" / "evaluation").mkdir(parents=True)
    (raw / "concepts_metadata.csv").write_text("concept_id,name,active\na,Alpha,True\nb,Beta,True\n")
    (raw / "llm_models.csv").write_text(
        "id,model,provider,display_name,for_generation,for_evaluation\nm,x/y,mock,M,True,True\n"
    )
    (raw / "draft_templates.csv").write_text(
        "template_id,template_name,description,parser,generator,active\nd,D,,,llm,True\n"
    )
    (raw / "templates" / "draft" / "d.txt").write_text("{% for c in concepts %}{{ c.name }}{% endfor %}")
    (raw / "essay_templates.csv").write_text(
        "template_id,template_name,description,parser,generator,active\ne,E,,,copy,True\n"
    )
    header, values = row_extra.split("|") if row_extra else ("", "")
    (raw / "evaluation_templates.csv").write_text(
        f"template_id,template_name,description,parser,generator,active{header}\n"
        f"v,V,,in_last_line,llm,True{values}\n"
    )
    (raw / "templates" / "evaluation" / "v.txt").write_text(text)
    experiment, problems = load_experiment(read_raw_dir(raw))
    return experiment, [str(p) for p in problems]


def test_the_row_declares_the_scale_and_a_disagreeing_text_is_a_warning(tmp_path: Path) -> None:
    experiment, problems = _experiment(
        tmp_path, ",score_min,score_max|,1,10", "{{ response }}\nGive a score 0-9.\nSCORE: X"
    )
    template = next(t for t in experiment.templates if t.stage is Stage.EVALUATION)  # type: ignore[attr-defined]
    assert (template.verdict.scale.minimum, template.verdict.scale.maximum) == (1, 10)
    assert template.verdict.scale.source is ScaleSource.CSV
    (disagreement,) = [p for p in problems if "disagrees with the template text, which says 0-9" in p]
    assert "warning" in disagreement and "inactive" not in disagreement and "csv:2" in disagreement


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (",score_max|,ten", "score_max 'ten' is not a number"),
        (",score_min,score_max|,9,9", "score_min 9 must be below score_max 9"),
        (",score_min|,1", "score_min needs score_max"),
        (",verdict_label|,SCORE: please", "verdict_label 'SCORE: please' must be letters"),
    ],
)
def test_bad_scale_columns_are_errors_naming_the_column(tmp_path: Path, extra: str, message: str) -> None:
    _, problems = _experiment(tmp_path, extra, "{{ response }}\nSCORE: X with X a digit 0-9")
    assert any(message in p and "evaluation_templates.csv:2" in p and "error" in p for p in problems), (
        problems
    )


def test_a_silent_template_is_a_warning_naming_its_file(tmp_path: Path) -> None:
    _, problems = _experiment(tmp_path, "", "{{ response }}\nJudge it.")
    assert any("v.txt" in p and "states no scale" in p for p in problems), problems


@pytest.mark.skipif(not UPSTREAM_RAW.is_dir(), reason="the upstream corpus is not beside this checkout")
def test_the_upstream_active_judges_score_on_0_to_9() -> None:
    experiment, problems = load_experiment(read_raw_dir(UPSTREAM_RAW))
    active = {
        t.template_id: t.verdict for t in experiment.templates if t.stage is Stage.EVALUATION and t.active
    }
    assert set(active) == {"novelty", "style-coherence-v3"}
    for spec in active.values():
        assert spec is not None
        assert (spec.scale.minimum, spec.scale.maximum) == (0, 9)
        assert spec.scale.source is ScaleSource.VERDICT_INSTRUCTION
    assert not problems
