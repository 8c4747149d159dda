"""Cohort specs read from disk: the original project's seven example specs, formats, lines, containment."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from daydreamd.core.problems import Level
from daydreamd.core.spec.catalog import Catalog
from daydreamd.core.spec.compile import Compiled, compile_spec
from daydreamd.storage.spec_files import read_spec

SHARED = Path(__file__).parents[2].parent / "shared" / "corpus" / "upstream-daydreaming" / "cohort-specs"
EXAMPLES = SHARED / "examples"
needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason="shared cohort-specs corpus not present")

CATALOG = Catalog(
    draft_templates=frozenset(
        {
            "creative-synthesis-v2",
            "application-implementation-v2",
            "gwern_original",
            "draft-A",
            "creative-synthesis-v10",
            "creative-synthesis-v7",
        }
    ),
    essay_templates=frozenset(
        {
            "parsed-from-links-v1",
            "essay-X",
            "essay-Y",
            "creative-synthesis-v10",
            "essay-copy-v1",
            "essay-llm-v1",
            "essay-theme-v16",
            "essay-theme-v17",
        }
    ),
    evaluation_templates=frozenset(
        {
            "creativity-metrics-v2",
            "daydreaming-verification-v3",
            "eval-1",
            "verification-eval-v1",
            "quality-eval-v1",
            "daydreaming-verification-v2",
            "gemini-prior-art-eval-v2",
            "interdisciplinary-coherence",
            "iterative-loops-v2",
            "novel-elements-coverage-v1",
            "novelty",
            "novelty-v2",
            "o3-prior-art-eval",
            "scientific-rigor-v2",
            "style-coherence-v3",
        }
    ),
    generation_models=frozenset({"gemini_25_pro", "sonnet-4", "deepseek_r1_p", "draft-llm", "essay-llm"}),
    evaluation_models=frozenset({"gemini_25_pro", "sonnet-4", "eval-llm"}),
    combos=frozenset({"combo-1", "combo_v1_a", "combo_v1_b", "combo_v1_c"}),
)
"""The ids the seven examples name (a later catalog than 1_raw's: written here, as their README says)."""


def compiled_example(name: str) -> tuple[Compiled, list[dict[str, str]]]:
    compiled, problems = compile_spec(read_spec(EXAMPLES / name / "config.yaml"), CATALOG)
    assert compiled is not None, [str(p) for p in problems]
    assert not [p for p in problems if p.level is Level.ERROR]
    return compiled, [{k: str(v) for k, v in row.items()} for row in compiled.dicts()]


@needs_examples
def test_baseline_cartesian() -> None:
    """3 drafts x 1 essay x the 4 allowed (evaluation template, judge) pairs = 12, pairs fastest."""
    compiled, rows = compiled_example("baseline_cartesian")
    assert compiled.columns == ("draft_template", "essay_template", "evaluation_template", "evaluation_llm")
    assert len(rows) == 12
    assert rows[0] == {
        "draft_template": "creative-synthesis-v2",
        "essay_template": "parsed-from-links-v1",
        "evaluation_template": "creativity-metrics-v2",
        "evaluation_llm": "sonnet-4",
    }
    assert [r["evaluation_llm"] for r in rows[:4]] == ["sonnet-4", "gemini_25_pro"] * 2
    assert rows[4]["draft_template"] == "application-implementation-v2"
    assert rows[11]["draft_template"] == "gwern_original"
    assert rows[11]["evaluation_template"] == "daydreaming-verification-v3"


@needs_examples
def test_cohort_cartesian() -> None:
    """The tuples section is written before the pairs, so it runs first; 2 x 2 replicates x 2 essays = 8.

    Axes after the rules: combo, draft template, draft llm, draft replicate, essay replicate, the
    evaluation pair (in the place of evaluation_template), the essay tuple (appended: its axes are
    tuple-derived); the tuple varies fastest, then the essay replicate, then the draft replicate.
    """
    compiled, rows = compiled_example("cohort_cartesian")
    assert len(rows) == 8
    assert [
        (r["draft_template_replicate"], r["essay_template_replicate"], r["essay_template"]) for r in rows
    ] == [
        ("1", "1", "essay-X"),
        ("1", "1", "essay-Y"),
        ("1", "2", "essay-X"),
        ("1", "2", "essay-Y"),
        ("2", "1", "essay-X"),
        ("2", "1", "essay-Y"),
        ("2", "2", "essay-X"),
        ("2", "2", "essay-Y"),
    ]
    assert {r["essay_llm"] for r in rows} == {"essay-llm"}
    assert rows[0]["combo_id"] == "combo-1" and rows[0]["evaluation_llm"] == "eval-llm"
    assert compiled.columns[-1] == "evaluation_llm"


@needs_examples
def test_creative_alignment_tuple() -> None:
    """3 combos x 11 rubrics x 1 judge x 2 x 2 replicates x 2 draft/essay bundles x 2 model bundles = 528."""
    compiled, rows = compiled_example("creative_alignment_tuple")
    assert len(rows) == compiled.count == 528
    assert compiled.columns == (
        "combo_id",
        "draft_template",
        "draft_llm",
        "essay_template",
        "essay_llm",
        "draft_replicate",
        "evaluation_template",
        "evaluation_llm",
        "evaluation_replicate",
    )
    # the two tuples are the last axes: the model bundle varies fastest, then the template bundle
    first4 = [(r["draft_template"], r["essay_template"], r["draft_llm"], r["essay_llm"]) for r in rows[:4]]
    assert first4 == [
        ("creative-synthesis-v10", "creative-synthesis-v10", "gemini_25_pro", "gemini_25_pro"),
        ("creative-synthesis-v10", "creative-synthesis-v10", "deepseek_r1_p", "deepseek_r1_p"),
        ("creative-synthesis-v7", "parsed-from-links-v1", "gemini_25_pro", "gemini_25_pro"),
        ("creative-synthesis-v7", "parsed-from-links-v1", "deepseek_r1_p", "deepseek_r1_p"),
    ]
    # then draft_replicate (declared last among the plain axes), then evaluation_replicate
    assert (rows[4]["draft_replicate"], rows[4]["evaluation_replicate"]) == ("2", "1")
    assert (rows[8]["draft_replicate"], rows[8]["evaluation_replicate"]) == ("1", "2")
    assert rows[16]["evaluation_template"] == "daydreaming-verification-v2"
    assert rows[176]["combo_id"] == "combo_v1_b"  # 11 x 2 x 2 x 2 x 2 = 176 rows per combo
    assert all(r["draft_llm"] == r["essay_llm"] for r in rows)


@needs_examples
def test_curated_essays() -> None:
    """No axes at all: one tuple of four derived axes gives its two curated rows."""
    _, rows = compiled_example("curated_essays")
    assert rows == [
        {
            "essay_template": "essay-copy-v1",
            "essay_llm": "sonnet-4",
            "evaluation_template": "verification-eval-v1",
            "evaluation_llm": "sonnet-4",
        },
        {
            "essay_template": "essay-llm-v1",
            "essay_llm": "sonnet-4",
            "evaluation_template": "verification-eval-v1",
            "evaluation_llm": "sonnet-4",
        },
    ]


@needs_examples
def test_dual_llm_cartesian() -> None:
    """The pair binds each draft template to one (essay template, essay llm) tuple: 2 pairs x 2 replicates."""
    _, rows = compiled_example("dual_llm_cartesian")
    assert [(r["draft_template"], r["draft_template_replicate"], r["essay_template"]) for r in rows] == [
        ("creative-synthesis-v2", "1", "essay-llm-v1"),
        ("creative-synthesis-v2", "2", "essay-llm-v1"),
        ("application-implementation-v2", "1", "essay-copy-v1"),
        ("application-implementation-v2", "2", "essay-copy-v1"),
    ]
    assert {(r["essay_llm"], r["evaluation_template"], r["evaluation_llm"]) for r in rows} == {
        ("sonnet-4", "verification-eval-v1", "sonnet-4")
    }


@needs_examples
def test_full_two_phase_cartesian() -> None:
    """8 (draft, essay bundle) pairs x 2 draft llms x 4 (evaluation, judge) pairs = 64."""
    _, rows = compiled_example("full_two_phase_cartesian")
    assert len(rows) == 64
    assert rows[0] == {
        "draft_template": "creative-synthesis-v2",
        "draft_llm": "gemini_25_pro",
        "essay_template": "essay-theme-v16",
        "essay_llm": "gemini_25_pro",
        "evaluation_template": "creativity-metrics-v2",
        "evaluation_llm": "gemini_25_pro",
    }
    assert (rows[4]["draft_llm"], rows[4]["essay_llm"]) == ("sonnet-4", "gemini_25_pro")
    assert (rows[8]["essay_llm"], rows[8]["draft_llm"]) == ("sonnet-4", "gemini_25_pro")
    assert rows[63]["draft_template"] == "application-implementation-v2"
    assert rows[63]["essay_template"] == "essay-theme-v17"
    assert len({tuple(r.values()) for r in rows}) == 64


@needs_examples
def test_paired_copy_mix() -> None:
    """The pair allows two of the four (draft, essay) combinations: one LLM essay, one copy essay."""
    _, rows = compiled_example("paired_copy_mix")
    assert [(r["draft_template"], r["essay_template"]) for r in rows] == [
        ("creative-synthesis-v2", "essay-llm-v1"),
        ("gwern_original", "essay-copy-v1"),
    ]


@needs_examples
def test_an_example_against_a_catalog_without_its_ids_names_each_csv_line() -> None:
    compiled, problems = compile_spec(read_spec(EXAMPLES / "paired_copy_mix"), Catalog())
    assert compiled is None
    shown = str(EXAMPLES / "paired_copy_mix" / "items" / "draft_templates.csv")
    assert f"{shown}:3: error: axes.draft_template: draft_template 'gwern_original' is not" in "\n".join(
        str(p) for p in problems
    )


# --- formats, lines, containment ------------------------------------------------------------------

YAML_SPEC = """\
axes:
  draft_template: [d1, d2]
  essay_template:
    - e1
    - true
"""


def test_yaml_problems_carry_the_line(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(YAML_SPEC)
    _, problems = compile_spec(read_spec(tmp_path / "config.yaml", shown="spec/config.yaml"))
    assert str(problems[0]).startswith(
        "spec/config.yaml:5: error: axes.essay_template[1]: a level must be an id"
    )


def test_invalid_yaml_json_toml_report_their_line(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("axes:\n  a: [x\n  b: y\n")
    (tmp_path / "b.json").write_text('{"axes":\n {"a": [1,]}}')
    (tmp_path / "c.toml").write_text("[axes]\na = [1,\nb\n")
    for name, line in (("a.yaml", 3), ("b.json", 2), ("c.toml", 3)):
        problems = read_spec(tmp_path / name).problems
        assert len(problems) == 1 and problems[0].line == line, (name, [str(p) for p in problems])


def test_toml_and_json_specs_compile_like_yaml(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        '[axes]\ndraft_template = ["d1", "d2"]\n[output]\nfield_order = []\n'
    )
    (tmp_path / "s.json").write_text('{"axes": {"draft_template": ["d1", "d2"]}}')
    for path in (tmp_path, tmp_path / "s.json"):
        compiled, _ = compile_spec(read_spec(path))
        assert compiled is not None and list(compiled.rows()) == [("d1",), ("d2",)]


def test_yaml_is_read_safely_and_alias_bombs_are_refused(tmp_path: Path) -> None:
    (tmp_path / "tag.yaml").write_text("axes: !!python/object/apply:os.system ['true']\n")
    assert "invalid YAML" in str(read_spec(tmp_path / "tag.yaml").problems[0])
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(7)]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert "refused: its aliases expand to more than" in str(read_spec(tmp_path / "bomb.yaml").problems[0])
    (tmp_path / "loop.yaml").write_text("axes: &a {b: *a}\n")
    assert "refused" in str(read_spec(tmp_path / "loop.yaml").problems[0])


def test_includes_that_leave_the_folder_are_refused_unread(tmp_path: Path) -> None:
    spec = tmp_path / "spec"
    spec.mkdir()
    secret = tmp_path / "secret.csv"
    secret.write_text("draft_template\nsecret-id\n")
    (spec / "link.csv").symlink_to(secret)
    (spec / "items").symlink_to(tmp_path)  # a folder link out of the spec folder
    os.mkfifo(spec / "fifo.csv")
    for ref, expected in (
        ("../secret.csv", "is refused: an include must name a file inside the spec's folder"),
        ("link.csv", "refused: it is a symbolic link"),
        ("items/secret.csv", "refused"),
        ("fifo.csv", "FIFO"),
    ):
        (spec / "config.yaml").write_text(f"axes:\n  draft_template: '@file:{ref}'\n")
        compiled, problems = compile_spec(read_spec(spec / "config.yaml", shown="spec/config.yaml"))
        assert compiled is None
        text = "\n".join(str(p) for p in problems)
        assert text.startswith(f"spec/config.yaml:2: error: axes.draft_template: include '@file:{ref}'"), text
        assert expected in text and "secret-id" not in text


def test_a_link_inside_the_folder_is_followed_as_in_1_raw(tmp_path: Path) -> None:
    (tmp_path / "items").mkdir()
    (tmp_path / "items" / "d.csv").write_text("draft_template\nd1\n")
    (tmp_path / "d.csv").symlink_to("items/d.csv")
    (tmp_path / "config.yaml").write_text("axes:\n  draft_template: '@file:d.csv'\n")
    compiled, problems = compile_spec(read_spec(tmp_path / "config.yaml"))
    if compiled is None:  # no openat2 here: every link is refused, as for 1_raw
        assert "symbolic link" in str(problems[0])
    else:
        assert list(compiled.rows()) == [("d1",)]


def test_a_missing_spec_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    assert "no such spec file" in str(read_spec(tmp_path / "config.yaml").problems[0])
    assert "must be .yaml" in str(read_spec(tmp_path / "spec.txt").problems[0])
    copied = tmp_path / "copy"
    if EXAMPLES.is_dir():
        shutil.copytree(EXAMPLES / "curated_essays", copied)
        (copied / "items" / "curated_bundles.csv").unlink()
        _, problems = compile_spec(read_spec(copied))
        assert "no such file" in str(problems[0])
