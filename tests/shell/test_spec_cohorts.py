"""The original project's seven example specs built into named cohorts, and spec folders found on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daydreamd.core.build import build_from_raw
from daydreamd.core.cohort import Cohort, Combo, Generation
from daydreamd.core.config import Settings
from daydreamd.core.problems import Level
from daydreamd.core.snapshot import RawFiles
from daydreamd.core.spec.catalog import catalog_from_experiment
from daydreamd.core.spec.compile import compile_spec
from daydreamd.core.spec.membership import SpecInputs, build_spec_cohort
from daydreamd.core.stages import Stage
from daydreamd.storage.spec_files import read_cohort_specs, read_spec
from tests.core.experiment_files import (
    DRAFT_TEXT,
    ESSAY_TEXT,
    EVALUATION_HEADER,
    EVALUATION_TEXT,
    experiment_files,
    models_csv,
    templates_csv,
)
from tests.shell.test_spec_files import EXAMPLES, needs_examples

DRAFTS = ("creative-synthesis-v2", "application-implementation-v2", "gwern_original", "draft-A")
DRAFTS += ("creative-synthesis-v10", "creative-synthesis-v7")
ESSAYS = ("parsed-from-links-v1", "essay-X", "essay-Y", "creative-synthesis-v10", "essay-llm-v1")
ESSAYS += ("essay-theme-v16", "essay-theme-v17")
COPY_ESSAYS = ("essay-copy-v1",)
EVALUATIONS = ("creativity-metrics-v2", "daydreaming-verification-v3", "eval-1", "verification-eval-v1")
EVALUATIONS += ("quality-eval-v1", "daydreaming-verification-v2", "gemini-prior-art-eval-v2")
EVALUATIONS += ("interdisciplinary-coherence", "iterative-loops-v2", "novel-elements-coverage-v1", "novelty")
EVALUATIONS += ("novelty-v2", "o3-prior-art-eval", "scientific-rigor-v2", "style-coherence-v3")
MODELS = ("gemini_25_pro", "sonnet-4", "deepseek_r1_p", "draft-llm", "essay-llm", "eval-llm")


def catalog_experiment() -> dict[str, bytes]:
    """An experiment holding every id the examples name (none active but one of each stage)."""

    def row(template_id: str, generator: str, active: bool, *extra: str) -> str:
        parser = "in_last_line" if extra else ""
        return ",".join((template_id, template_id, "", parser, generator, str(active), *extra))

    files: dict[str, str | bytes | None] = {
        "draft_templates.csv": templates_csv(*(row(t, "llm", t == DRAFTS[0]) for t in DRAFTS)),
        "essay_templates.csv": templates_csv(
            *(row(t, "llm", t == ESSAYS[0]) for t in ESSAYS), *(row(t, "copy", False) for t in COPY_ESSAYS)
        ),
        "evaluation_templates.csv": templates_csv(
            *(row(t, "llm", t == EVALUATIONS[0], "10") for t in EVALUATIONS), header=EVALUATION_HEADER
        ),
        "llm_models.csv": models_csv(*(f"{m},vendor/{m},vendor,{m},true,true" for m in MODELS)),
    }
    for stage, ids in (("draft", DRAFTS), ("essay", ESSAYS), ("evaluation", EVALUATIONS)):
        for template_id in ids:
            text = {"draft": DRAFT_TEXT, "essay": ESSAY_TEXT, "evaluation": EVALUATION_TEXT}[stage]
            files[f"templates/{stage}/{template_id}.txt"] = text
    return experiment_files(files)


def build_example(name: str) -> Cohort:
    build = build_from_raw(RawFiles.of(catalog_experiment()), Settings())
    assert build.cohort is not None, [str(p) for p in build.problems if p.level is Level.ERROR]
    combos = {  # the combo ids the examples name, written into the catalog as their README says
        cid: Combo(cid, concepts, "paragraph")
        for cid, concepts in (
            ("combo-1", ("alpha", "beta")),
            ("combo_v1_a", ("alpha", "beta")),
            ("combo_v1_b", ("alpha", "gamma")),
            ("combo_v1_c", ("beta", "gamma")),
        )
    }
    catalog = catalog_from_experiment(build.experiment)
    compiled, problems = compile_spec(read_spec(EXAMPLES / name), catalog)
    assert compiled is not None, [str(p) for p in problems]
    inputs = SpecInputs(experiment=build.experiment, settings=Settings(), default=build.cohort, combos=combos)
    cohort, problems = build_spec_cohort(name.replace("_", "-"), compiled, inputs, fingerprint="f")
    assert cohort is not None, [str(p) for p in problems]
    return cohort


def of(cohort: Cohort, stage: Stage) -> list[Generation]:
    return [g for g in cohort.generations if g.stage is stage]


@needs_examples
@pytest.mark.parametrize(
    ("name", "evaluations"),
    [
        # no combo axis: the default cohort's 3 combos (k=2 of 3 concepts); no draft_llm: its 6 models
        ("baseline_cartesian", 12 * 3 * 6),
        ("cohort_cartesian", 8),
        ("creative_alignment_tuple", 528),
        ("dual_llm_cartesian", 4 * 3),
        ("full_two_phase_cartesian", 64 * 3),
        ("paired_copy_mix", 2 * 3 * 6),
    ],
)
def test_each_example_gives_one_evaluation_per_row_and_combo(name: str, evaluations: int) -> None:
    cohort = build_example(name)
    assert len(of(cohort, Stage.EVALUATION)) == evaluations
    ids = {g.gen_id: g for g in cohort.generations}
    for g in cohort.generations:  # every parent is in the cohort, of the stage above
        assert g.stage is Stage.DRAFT or ids[g.parent_gen_id].stage is not g.stage


@needs_examples
def test_copy_essays_keep_their_drafts_model_and_llm_essays_take_the_essay_llm() -> None:
    cohort = build_example("dual_llm_cartesian")
    drafts = {g.gen_id: g for g in of(cohort, Stage.DRAFT)}
    assert {g.llm_model_id for g in drafts.values()} == {"gemini_25_pro"}
    essays = of(cohort, Stage.ESSAY)
    copies = [e for e in essays if e.template_id == "essay-copy-v1"]
    written = [e for e in essays if e.template_id == "essay-llm-v1"]
    assert copies and all(e.llm_model_id == "gemini_25_pro" for e in copies)  # a copy calls no model
    assert written and all(e.llm_model_id == "sonnet-4" for e in written)
    assert {drafts[e.parent_gen_id].template_id for e in copies} == {"application-implementation-v2"}


@needs_examples
def test_curated_essays_example_runs_its_essays_on_the_default_drafts() -> None:
    cohort = build_example("curated_essays")
    # no draft axes: the default cohort's drafts (3 combos x 1 active template x 6 models)
    assert len(of(cohort, Stage.DRAFT)) == 3 * 6
    assert {g.template_id for g in of(cohort, Stage.EVALUATION)} == {"verification-eval-v1"}


# --- spec folders on disk ---------------------------------------------------------------------------


def write_spec(data: Path, name: str, text: str = "axes: {}\n") -> Path:
    folder = data / "cohorts" / name / "spec"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(text)
    return folder


def test_spec_folders_are_found_by_name_and_output_folders_are_not(tmp_path: Path) -> None:
    write_spec(tmp_path, "b-cohort")
    write_spec(tmp_path, "a-cohort", "axes: [oops\n")
    (tmp_path / "cohorts" / "deadbeef0123").mkdir()  # the default cohort's output folder: no spec/
    (tmp_path / "cohorts" / "deadbeef0123" / "membership.csv").write_text("stage,gen_id\n")
    found = read_cohort_specs(tmp_path)
    specs = found.specs
    assert [s.name for s in specs] == ["a-cohort", "b-cohort"] and not found.problems and found.listed
    broken = specs[0].document
    assert broken.path == "cohorts/a-cohort/spec/config.yaml"
    assert broken.problems and broken.problems[0].line == 2 and "invalid YAML" in broken.problems[0].message
    assert specs[1].document.fingerprint and specs[1].document.fingerprint != broken.fingerprint


def test_a_spec_fingerprint_follows_its_includes(tmp_path: Path) -> None:
    folder = write_spec(tmp_path, "c", "axes:\n  draft_template: '@file:items.csv'\n")
    (folder / "items.csv").write_text("draft_template\nd1\n")
    before = read_cohort_specs(tmp_path).specs[0].document.fingerprint
    (folder / "items.csv").write_text("draft_template\nd2\n")
    assert read_cohort_specs(tmp_path).specs[0].document.fingerprint != before


def test_linked_folders_and_bad_names_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write_spec(outside, "elsewhere")
    (tmp_path / "data" / "cohorts").mkdir(parents=True)
    cohorts = tmp_path / "data" / "cohorts"
    (cohorts / "linked").symlink_to(outside / "cohorts" / "elsewhere")
    write_spec(tmp_path / "data", "ok")
    (tmp_path / "data" / "cohorts" / "inner").mkdir()
    (cohorts / "inner" / "spec").symlink_to(outside / "cohorts" / "elsewhere" / "spec")
    write_spec(tmp_path / "data", "bad name")
    found = read_cohort_specs(tmp_path / "data")
    assert [s.name for s in found.specs] == ["ok"]
    assert found.held == {"linked", "inner"}  # kept as they were, not taken as removed
    shown = "\n".join(str(p) for p in found.problems)
    assert "cohorts/linked/spec" in shown and "cohorts/inner/spec" in shown and "link" in shown
    assert "cohorts/bad name/spec" in shown


def test_an_unlistable_cohorts_folder_keeps_every_cohort(tmp_path: Path) -> None:
    (tmp_path / "cohorts").write_text("not a folder but")  # a file: nothing to list, nothing removed
    assert read_cohort_specs(tmp_path).specs == () and read_cohort_specs(tmp_path).listed
    other = tmp_path / "other"
    write_spec(other, "x")
    (other / "cohorts").chmod(0o000)
    try:
        found = read_cohort_specs(other)
        if os.geteuid() == 0:  # root reads it anyway
            assert found.listed
        else:
            assert not found.listed and "cannot list" in str(found.problems[0])
    finally:
        (other / "cohorts").chmod(0o755)


def test_deep_nesting_is_refused_before_anything_walks_it(tmp_path: Path) -> None:
    folder = write_spec(tmp_path, "deep", "axes:\n  evaluation_template: " + "[" * 600 + "]" * 600 + "\n")
    document = read_spec(folder)
    assert document.data is None and "nests more than 32 levels" in str(document.problems[0])
