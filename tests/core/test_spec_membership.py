"""A compiled spec turned into a named cohort: defaults, shared ids, copy essays, curated inputs, errors."""

from __future__ import annotations

from typing import Any

import pytest

from daydreamd.core.build import build_from_raw
from daydreamd.core.cohort import Cohort, Generation
from daydreamd.core.config import Settings
from daydreamd.core.experiment import Experiment
from daydreamd.core.problems import Level
from daydreamd.core.snapshot import RawFiles
from daydreamd.core.spec.compile import compile_spec
from daydreamd.core.spec.document import SpecDocument
from daydreamd.core.spec.membership import (
    DRAFT_COLUMNS,
    ESSAY_COLUMNS,
    SpecInputs,
    build_spec_cohort,
    curated_ids,
)
from daydreamd.core.stages import Stage
from tests.core.experiment_files import (
    DRAFT_ROW,
    DRAFT_TEXT,
    ESSAY_ROW,
    EVALUATION_HEADER,
    EVALUATION_ROW,
    EVALUATION_TEXT,
    MODEL_ROWS,
    experiment_files,
    models_csv,
    templates_csv,
)

FILES = experiment_files(
    {
        "draft_templates.csv": templates_csv(DRAFT_ROW, "sketch2,Sketch 2,Another draft,,llm,False"),
        "essay_templates.csv": templates_csv(ESSAY_ROW, "verbatim,Verbatim,Copy the draft,,copy,True"),
        "evaluation_templates.csv": templates_csv(
            EVALUATION_ROW,
            "rubric2,Rubric 2,A new rubric,in_last_line,llm,False,10",
            header=EVALUATION_HEADER,
        ),
        "llm_models.csv": models_csv(*MODEL_ROWS, "writer2,vendor/writer-2,vendor,Writer 2,false,false"),
        "templates/draft/sketch2.txt": DRAFT_TEXT + "\nBe brief.",
        "templates/evaluation/rubric2.txt": EVALUATION_TEXT + "\nBe strict.",
    }
)
SETTINGS = Settings()


def default() -> tuple[Experiment, Cohort]:
    build = build_from_raw(RawFiles.of(FILES), SETTINGS)
    assert build.cohort is not None, [str(p) for p in build.problems]
    return build.experiment, build.cohort


def spec_cohort(
    data: Any,
    files: dict[str, str] | None = None,
    *,
    known: dict[str, Generation] | None = None,
    raw: dict[str, bytes] | None = None,
) -> tuple[Cohort | None, list[str]]:
    build = build_from_raw(RawFiles.of(raw or FILES), SETTINGS)
    assert build.cohort is not None, [str(p) for p in build.problems]
    experiment, cohort = build.experiment, build.cohort
    doc = SpecDocument(
        path="cohorts/x/spec/config.yaml",
        data=data,
        files={k: v.encode() for k, v in (files or {}).items()},
    )
    compiled, problems = compile_spec(doc)
    assert compiled is not None, [str(p) for p in problems]
    inputs = SpecInputs(
        experiment=experiment, settings=SETTINGS, default=cohort, known=known or {}, problems=build.problems
    )
    built, problems = build_spec_cohort("x", compiled, inputs, fingerprint="f")
    return built, [str(p) for p in problems if p.level is Level.ERROR]


def ok(data: Any, files: dict[str, str] | None = None, **kwargs: Any) -> Cohort:
    built, errors = spec_cohort(data, files, **kwargs)
    assert built is not None and not errors, errors
    return built


def fails(data: Any, files: dict[str, str] | None = None, **kwargs: Any) -> str:
    built, errors = spec_cohort(data, files, **kwargs)
    assert built is None and errors
    return "\n".join(errors)


def by_stage(cohort: Cohort, stage: Stage) -> list[Generation]:
    return [g for g in cohort.generations if g.stage is stage]


def test_a_spec_naming_nothing_is_the_default_cohort_with_the_same_ids() -> None:
    _, base = default()
    built = ok({"axes": {}})
    assert [g.gen_id for g in built.generations] == [g.gen_id for g in base.generations]
    assert built.cohort_id == "x" and built.manifest["kind"] == "spec"
    assert built.manifest["counts"] == base.manifest["counts"]


def test_new_rubric_shares_drafts_and_essays_and_adds_only_its_evaluations() -> None:
    _, base = default()
    built = ok({"axes": {"evaluation_template": ["rubric2"]}})
    base_ids = {g.gen_id for g in base.generations}
    for stage in (Stage.DRAFT, Stage.ESSAY):
        assert {g.gen_id for g in by_stage(built, stage)} == {g.gen_id for g in by_stage(base, stage)}
    evaluations = by_stage(built, Stage.EVALUATION)
    assert len(evaluations) == len(by_stage(base, Stage.ESSAY))  # one judge, one replicate
    assert all(g.template_id == "rubric2" and g.gen_id not in base_ids for g in evaluations)


def test_essay_model_other_than_the_draft_model_gives_new_essays_but_copy_essays_keep_theirs() -> None:
    _, base = default()
    built = ok({"axes": {"essay_llm": ["writer2"], "evaluation_template": ["judge"]}})
    essays = by_stage(built, Stage.ESSAY)
    llm = [g for g in essays if g.template_id == "essay"]
    copies = [g for g in essays if g.template_id == "verbatim"]
    base_ids = {g.gen_id for g in base.generations}
    assert llm and all(g.llm_model_id == "writer2" and g.gen_id not in base_ids for g in llm)
    # a copy calls no model: it keeps its draft's model and its id in the default cohort
    assert copies and all(g.llm_model_id == "writer" and g.gen_id in base_ids for g in copies)


def test_replicate_axis_and_an_inactive_template_and_model() -> None:
    _, base = default()
    axes = {"draft_template": ["sketch2"], "draft_llm": ["writer2"], "draft_replicate": ["1", "2"]}
    built = ok({"axes": axes})
    drafts = by_stage(built, Stage.DRAFT)
    assert len(drafts) == 2 * len(base.combos)
    assert {g.replicate for g in drafts} == {1, 2}
    assert all(g.template_id == "sketch2" and g.llm_model_id == "writer2" for g in drafts)
    essays = by_stage(built, Stage.ESSAY)
    assert all(g.llm_model_id == "writer2" for g in essays)  # an essay inherits its draft's model


def test_replicate_1_of_an_explicit_axis_is_the_default_generation() -> None:
    _, base = default()
    built = ok({"axes": {"draft_replicate": ["1"]}})
    assert {g.gen_id for g in built.generations} == {g.gen_id for g in base.generations}


def test_pairs_and_tuples_select_paths() -> None:
    built = ok(
        {
            "axes": {"draft_template": ["sketch", "sketch2"], "essay_template": ["essay", "verbatim"]},
            "rules": {
                "pairs": {
                    "mode": {
                        "left": "draft_template",
                        "right": "essay_template",
                        "allowed": [["sketch", "essay"], ["sketch2", "verbatim"]],
                    }
                }
            },
        }
    )
    essays = by_stage(built, Stage.ESSAY)
    drafts = {g.gen_id: g for g in by_stage(built, Stage.DRAFT)}
    pairs = {(drafts[e.parent_gen_id].template_id, e.template_id) for e in essays}
    assert pairs == {("sketch", "essay"), ("sketch2", "verbatim")}


def test_curated_essays_by_id_define_only_the_stages_below() -> None:
    _, base = default()
    chosen = [g for g in by_stage(base, Stage.ESSAY) if g.template_id == "essay"][:2]
    csv = "essay_gen_id\n" + "".join(f"{g.gen_id}\n" for g in chosen)
    built = ok(
        {"axes": {"essay_gen_id": "@file:top.csv", "evaluation_template": ["rubric2"]}},
        {"top.csv": csv},
    )
    assert [g.gen_id for g in by_stage(built, Stage.ESSAY)] == [g.gen_id for g in chosen]
    assert {g.gen_id for g in by_stage(built, Stage.DRAFT)} == {g.parent_gen_id for g in chosen}
    evaluations = by_stage(built, Stage.EVALUATION)
    assert sorted(g.parent_gen_id for g in evaluations) == sorted(g.gen_id for g in chosen)
    assert all(g.template_id == "rubric2" for g in evaluations)


def test_curated_ids_with_coordinates_are_recomputed_and_checked() -> None:
    _, base = default()
    essay = next(g for g in by_stage(base, Stage.ESSAY) if g.template_id == "essay")
    draft = next(g for g in base.generations if g.gen_id == essay.parent_gen_id)
    header = ",".join(["essay_gen_id", *DRAFT_COLUMNS, *ESSAY_COLUMNS])
    row = [draft.combo_id, "sketch", "writer", "1", "essay", "writer", "1"]
    spec = {
        "axes": {"evaluation_template": ["rubric2"]},
        "rules": {"tuples": {"top": {"axes": header.split(","), "items": "@file:top.csv"}}},
    }
    built = ok(spec, {"top.csv": f"{header}\n{essay.gen_id},{','.join(row)}\n"})
    assert [g.gen_id for g in by_stage(built, Stage.ESSAY)] == [essay.gen_id]
    # the same coordinates no longer giving that id (the essay changed since it was chosen) is an error
    message = fails(spec, {"top.csv": f"{header}\nessay_0123456789abcdef,{','.join(row)}\n"})
    assert "essay_0123456789abcdef" in message and "experiment changed" in message


def test_curated_id_found_in_the_run_state_when_not_in_the_default_cohort() -> None:
    draft = Generation(Stage.DRAFT, "draft_old", "", "combo_v1_x", "sketch", "writer", 1)
    essay = Generation(Stage.ESSAY, "essay_old", "draft_old", "combo_v1_x", "essay", "writer", 1)
    spec = {"axes": {"essay_gen_id": ["essay_old"], "evaluation_template": ["rubric2"]}}
    assert "essay_old" in fails(spec)  # unknown without the run state
    built = ok(spec, known={"draft_old": draft, "essay_old": essay})
    assert [g.gen_id for g in built.generations[:2]] == ["draft_old", "essay_old"]
    assert by_stage(built, Stage.EVALUATION)[0].parent_gen_id == "essay_old"


def test_curated_ids_are_what_the_shell_looks_up() -> None:
    doc = SpecDocument(path="c.yaml", data={"axes": {"essay_gen_id": ["e1", "e2"], "draft_llm": ["writer"]}})
    compiled, _ = compile_spec(doc)
    assert compiled is not None and curated_ids(compiled) == {"e1", "e2"}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"axes": {"combo_id": ["combo_v1_nope"]}}, ["combo_v1_nope", "not a combo"]),
        ({"axes": {"draft_template": ["ghost"]}}, ["ghost", "draft_templates.csv"]),
        ({"axes": {"evaluation_llm": ["ghost"]}}, ["ghost", "llm_models.csv"]),
        ({"axes": {"draft_gen_id": ["d"], "essay_gen_id": ["e"]}}, ["cannot both be set"]),
        ({"axes": {"essay_gen_id": ["e"], "draft_template": ["sketch"]}}, ["give all of them"]),
        ({"axes": {"combo": ["a"], "combo_id": ["b"]}}, ["both set combo_id"]),
        ({"axes": {"essay_gen_id": ["draft_x"]}}, ["draft_x", "not a generation"]),
    ],
)
def test_errors_name_the_spec_the_key_and_the_value(data: Any, words: list[str]) -> None:
    message = fails(data)
    assert "cohorts/x/spec/config.yaml" in message
    for word in words:
        assert word in message


def test_a_curated_id_of_the_wrong_stage_is_an_error() -> None:
    _, base = default()
    draft = by_stage(base, Stage.DRAFT)[0]
    assert "is a draft, not an essay" in fails({"axes": {"essay_gen_id": [draft.gen_id]}})


def test_a_spec_past_the_size_limit_is_refused_unbuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    import daydreamd.core.spec.membership as membership

    monkeypatch.setattr(membership, "MAX_PATHS", 5)
    message = fails({"axes": {"draft_replicate": ["1", "2"]}})  # 2 rows x 3 combos x 2 essay templates
    assert "expands to 12 paths" in message and "combo_id" in message


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"templates/evaluation/rubric2.txt": None}, "missing"),
        ({"templates/evaluation/rubric2.txt": "Rate {{ response \nSCORE: X\n"}, "rubric2.txt"),
    ],
)
def test_an_inactive_template_with_problems_is_an_error_for_a_spec_that_uses_it(
    change: dict[str, str | None], word: str
) -> None:
    raw = dict(FILES)
    for path, text in change.items():
        if text is None:
            raw.pop(path)
        else:
            raw[path] = text.encode()
    build = build_from_raw(RawFiles.of(raw), SETTINGS)
    assert build.cohort is not None  # only a warning in 1_raw: nothing there uses it
    message = fails({"axes": {"evaluation_template": ["rubric2"]}}, raw=raw)
    assert "rubric2" in message and "inactive" in message and word in message
    ok({"axes": {"evaluation_template": ["judge"]}})  # a spec that does not use it is fine
