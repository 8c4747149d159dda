"""Tests for daydreamd.core.loader: every validation rule has one bad input, located precisely.

Each case starts from the minimal valid experiment in ``experiment_files`` and changes one thing,
then checks the problem's level, path, line, column and a key word of its message. Only the two
real-directory tests at the end read files.
"""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daydreamd.core.experiment import Concept, Generator
from daydreamd.core.loader import load_experiment
from daydreamd.core.problems import Level, Problem, error, has_errors, warning
from daydreamd.core.snapshot import RawFiles, read_raw_dir
from daydreamd.core.stages import STAGES, Stage
from daydreamd.core.templates import Renderer
from tests.core.experiment_files import (
    CONCEPT_ROWS,
    DRAFT_ROW,
    ESSAY_ROW,
    EVALUATION_HEADER,
    EVALUATION_ROW,
    MODEL_ROWS,
    MODELS_HEADER,
    Expect,
    assert_problem,
    base_files,
    concepts_csv,
    error_at,
    experiment_files,
    load,
    models_csv,
    replication_csv,
    show,
    templates_csv,
    warning_at,
)

EXAMPLE_RAW = Path(__file__).parents[2] / "data" / "1_raw"
UPSTREAM_RAW = Path(__file__).parents[3] / "shared" / "corpus" / "upstream-daydreaming" / "1_raw"

CSV_NAMES = (
    "concepts_metadata.csv",
    "draft_templates.csv",
    "essay_templates.csv",
    "evaluation_templates.csv",
    "llm_models.csv",
    "replication_config.csv",
)


def draft_rows(*rows: str) -> str:
    """``draft_templates.csv`` with the base row on line 2 and ``rows`` from line 3."""
    return templates_csv(DRAFT_ROW, *rows)


def evaluation_rows(*rows: str) -> str:
    """``evaluation_templates.csv`` with the base row on line 2 and ``rows`` from line 3."""
    return templates_csv(EVALUATION_ROW, *rows, header=EVALUATION_HEADER)


# --- the baseline ------------------------------------------------------------------------------


def test_minimal_experiment_loads_without_problems() -> None:
    """The shared builder is a valid experiment, so every case below isolates one rule."""
    experiment, problems = load()
    assert problems == (), show(problems)
    assert [c.concept_id for c in experiment.active_concepts()] == ["alpha", "beta", "gamma"]
    assert [(t.stage, t.template_id) for t in experiment.templates] == [
        (Stage.DRAFT, "sketch"),
        (Stage.ESSAY, "essay"),
        (Stage.EVALUATION, "judge"),
    ]
    assert [m.model_id for m in experiment.generation_models()] == ["writer"]
    assert [m.model_id for m in experiment.evaluation_models()] == ["critic"]
    assert all(experiment.replicates_for(stage) == 1 for stage in STAGES)
    assert experiment.fingerprint == RawFiles.of(experiment_files()).fingerprint


# --- one bad input per rule --------------------------------------------------------------------

ERROR_CASES = [
    # undecodable files: a CSV, a template and a description, each with the line of the bad byte
    pytest.param(
        {"concepts_metadata.csv": b"concept_id,name,active\nalpha,Alpha,True\nb\xffta,Beta,True\n"},
        error_at("concepts_metadata.csv", 3, None, "UTF-8"),
        id="csv-not-utf8",
    ),
    pytest.param(
        {"templates/draft/sketch.txt": b"Concepts:\n\xff{{ concepts }}\n"},
        error_at("templates/draft/sketch.txt", 2, None, "UTF-8"),
        id="template-not-utf8",
    ),
    pytest.param(
        {"concepts/descriptions-sentence/beta.txt": b"caf\xe9"},
        error_at("concepts/descriptions-sentence/beta.txt", 1, None, "UTF-8"),
        id="description-not-utf8",
    ),
    # CSV structure
    pytest.param(
        {"draft_templates.csv": draft_rows('other,"Other"x,,,llm,True')},
        error_at("draft_templates.csv", 3, None, "does not parse"),
        id="csv-does-not-parse",
    ),
    pytest.param(
        {"concepts_metadata.csv": "concept_id,active\nalpha,True\n"},
        error_at("concepts_metadata.csv", 1, None, "missing required column(s) name"),
        id="concepts-missing-column",
    ),
    pytest.param(
        {"essay_templates.csv": "template_id,template_name,description,parser,active\nessay,E,,,True\n"},
        error_at("essay_templates.csv", 1, None, "missing required column(s) generator"),
        id="templates-missing-column",
    ),
    pytest.param(
        {"llm_models.csv": "id,model,provider,for_generation\nwriter,v/w,v,true\n"},
        error_at("llm_models.csv", 1, None, "missing required column(s) for_evaluation"),
        id="models-missing-column",
    ),
    pytest.param(
        {"replication_config.csv": "stage\ndraft\n"},
        error_at("replication_config.csv", 1, None, "missing required column(s) replicates"),
        id="replication-missing-column",
    ),
    pytest.param(
        {"concepts_metadata.csv": "concept_id,name,name\nalpha,Alpha,A\n"},
        error_at("concepts_metadata.csv", 1, None, "duplicate column"),
        id="duplicate-column",
    ),
    pytest.param(
        {"llm_models.csv": b""},
        error_at("llm_models.csv", 1, None, "empty"),
        id="empty-csv",
    ),
    pytest.param(
        {"llm_models.csv": None},
        error_at("llm_models.csv", None, None, "missing file"),
        id="required-csv-missing",
    ),
    pytest.param(
        {"llm_models.csv": models_csv(*MODEL_ROWS, "extra,vendor/x,vendor")},
        error_at("llm_models.csv", 4, None, "3 fields but the header has 6"),
        id="row-wrong-field-count",
    ),
    # booleans
    pytest.param(
        {"concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS, "delta,Delta,maybe")},
        error_at("concepts_metadata.csv", 5, "active", "not a boolean"),
        id="concept-active-maybe",
    ),
    pytest.param(
        {"draft_templates.csv": draft_rows("other,Other,,,llm,maybe")},
        error_at("draft_templates.csv", 3, "active", "not a boolean"),
        id="template-active-maybe",
    ),
    pytest.param(
        {"draft_templates.csv": draft_rows("other,Other,,,llm,")},
        error_at("draft_templates.csv", 3, "active", "not a boolean"),
        id="template-active-empty",
    ),
    pytest.param(
        {"llm_models.csv": models_csv(*MODEL_ROWS, "extra,vendor/x,vendor,X,2,false")},
        error_at("llm_models.csv", 4, "for_generation", "not a boolean"),
        id="model-for-generation-2",
    ),
    pytest.param(
        {"llm_models.csv": models_csv(*MODEL_ROWS, "extra,vendor/x,vendor,X,false,maybe")},
        error_at("llm_models.csv", 4, "for_evaluation", "not a boolean"),
        id="model-for-evaluation-maybe",
    ),
    # generator
    pytest.param(
        {"draft_templates.csv": draft_rows("other,Other,,,human,True"), "templates/draft/other.txt": "x"},
        error_at("draft_templates.csv", 3, "generator", "not 'llm' or 'copy'"),
        id="generator-unknown",
    ),
    pytest.param(
        {"draft_templates.csv": draft_rows("copier,Copier,,,copy,True")},
        error_at("draft_templates.csv", 3, "generator", "only makes sense for essays"),
        id="copy-on-draft",
    ),
    # parser
    pytest.param(
        {
            "draft_templates.csv": draft_rows("other,Other,,in_last_line,llm,True"),
            "templates/draft/other.txt": "x",
        },
        error_at("draft_templates.csv", 3, "parser", "not registered for draft"),
        id="draft-parser-from-evaluation",
    ),
    pytest.param(
        {"essay_templates.csv": templates_csv("essay,Essay,,essay_block,llm,True")},
        error_at("essay_templates.csv", 2, "parser", "not registered for essay"),
        id="essay-parser-from-draft",
    ),
    pytest.param(
        {"essay_templates.csv": templates_csv(ESSAY_ROW, "copier,Copier,,essay_idea_last,copy,True")},
        error_at("essay_templates.csv", 3, "parser", "not registered for essay"),
        id="copy-essay-with-parser",
    ),
    pytest.param(
        {"evaluation_templates.csv": templates_csv("judge,Judge,,identity,llm,True")},
        error_at("evaluation_templates.csv", 2, "parser", "not registered for evaluation"),
        id="evaluation-parser-identity",
    ),
    pytest.param(
        {"evaluation_templates.csv": templates_csv("judge,Judge,,,llm,True")},
        error_at("evaluation_templates.csv", 2, "parser", "must name a parser"),
        id="evaluation-without-parser",
    ),
    # template files and their text
    pytest.param(
        {"templates/essay/essay.txt": None},
        error_at("essay_templates.csv", 2, "template_id", "templates/essay/essay.txt is missing"),
        id="active-template-file-missing",
    ),
    pytest.param(
        {"templates/draft/sketch.txt": "Concepts:\n{{ concepts | }}\n"},
        error_at("templates/draft/sketch.txt", 2, None, "syntax error"),
        id="jinja-syntax-error",
    ),
    pytest.param(
        {"templates/evaluation/judge.txt": "Rate:\n{% for x in response %}\n{{ x }}\n"},
        error_at("templates/evaluation/judge.txt", 3, None, "syntax error"),
        id="jinja-unclosed-block",
    ),
    pytest.param(
        {"templates/draft/sketch.txt": "Concepts:\n{{ concepts }}\nPrevious: {{ response }}\n"},
        error_at("templates/draft/sketch.txt", 3, None, "variable 'response'"),
        id="draft-uses-response",
    ),
    pytest.param(
        {"templates/essay/essay.txt": "{{ draft_block }}\n{% for c in concepts %}{{ c }}{% endfor %}\n"},
        error_at("templates/essay/essay.txt", 2, None, "variable 'concepts'"),
        id="essay-uses-concepts",
    ),
    pytest.param(
        {"templates/evaluation/judge.txt": "{{ response }}\n\n\nDraft: {{ draft_block }}\n"},
        error_at("templates/evaluation/judge.txt", 4, None, "variable 'draft_block'"),
        id="evaluation-uses-draft-block",
    ),
    pytest.param(
        {"templates/draft/sketch.txt": "{% for concept in concepts %}\n{{ concept.title }}\n{% endfor %}\n"},
        error_at("templates/draft/sketch.txt", 2, None, "'title' of a concept"),
        id="draft-uses-concept-title",
    ),
    # other row checks
    pytest.param(
        {"concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS, "delta,,True")},
        error_at("concepts_metadata.csv", 5, "name", "name is empty"),
        id="concept-name-empty",
    ),
    pytest.param(
        {"llm_models.csv": models_csv(*MODEL_ROWS, "extra,,vendor,X,true,false")},
        error_at("llm_models.csv", 4, "model", "model string is empty"),
        id="model-string-empty",
    ),
    # replication_config.csv
    pytest.param(
        {"replication_config.csv": replication_csv("draft,1", "links,2")},
        error_at("replication_config.csv", 3, "stage", "unknown stage 'links'"),
        id="replication-unknown-stage",
    ),
    pytest.param(
        {"replication_config.csv": replication_csv("draft,two")},
        error_at("replication_config.csv", 2, "replicates", "whole number"),
        id="replication-not-integer",
    ),
    pytest.param(
        {"replication_config.csv": replication_csv("draft,1.5")},
        error_at("replication_config.csv", 2, "replicates", "whole number"),
        id="replication-fraction",
    ),
    pytest.param(
        {"replication_config.csv": replication_csv("essay,0")},
        error_at("replication_config.csv", 2, "replicates", "at least 1"),
        id="replication-zero",
    ),
    pytest.param(
        {"replication_config.csv": replication_csv("essay,-2")},
        error_at("replication_config.csv", 2, "replicates", "at least 1"),
        id="replication-negative",
    ),
    pytest.param(
        {"replication_config.csv": replication_csv("draft,1", "essay,2", "Draft,3")},
        error_at("replication_config.csv", 4, "stage", "listed twice"),
        id="replication-duplicate-stage",
    ),
]


@pytest.mark.parametrize(("overrides", "expect"), ERROR_CASES)
def test_each_rule_reports_one_located_error(
    overrides: dict[str, str | bytes | None], expect: Expect
) -> None:
    """Breaking one rule gives exactly one error, with the file, line, column and cause."""
    _, problems = load(overrides)
    assert_problem(problems, expect)


def test_copy_evaluation_template_reports_generator_and_parser() -> None:
    """A copy evaluation template is wrong twice: copy is for essays, and copy takes no parser."""
    _, problems = load(
        {"evaluation_templates.csv": evaluation_rows("copier,Copier,,in_last_line,copy,True,10")}
    )
    generator = error_at("evaluation_templates.csv", 3, "generator", "only makes sense for essays")
    parser = error_at("evaluation_templates.csv", 3, "parser", "leave parser empty")
    assert_problem(problems, generator, only=False)
    assert_problem(problems, parser, only=False)
    assert len([p for p in problems if p.level is Level.ERROR]) == 2, show(problems)


WARNING_CASES = [
    pytest.param(
        {"draft_templates.csv": draft_rows("old,Old,,,llm,False")},
        warning_at("draft_templates.csv", 3, "template_id", "templates/draft/old.txt is missing"),
        id="inactive-template-file-missing",
    ),
    pytest.param(
        {"concepts/descriptions-article/ghost.txt": "A concept nobody listed."},
        warning_at("concepts/descriptions-article/ghost.txt", None, None, "unknown concept 'ghost'"),
        id="description-for-unknown-concept",
    ),
    # empty active sets, one per axis
    pytest.param(
        {"concepts_metadata.csv": concepts_csv("alpha,Alpha,False", "beta,Beta,no", "gamma,Gamma,0")},
        warning_at("concepts_metadata.csv", None, None, "no active concepts"),
        id="no-active-concepts",
    ),
    pytest.param(
        {"draft_templates.csv": templates_csv("sketch,Sketch,,,llm,False")},
        warning_at("draft_templates.csv", None, None, "no active draft templates"),
        id="no-active-draft-templates",
    ),
    pytest.param(
        {"essay_templates.csv": templates_csv()},
        warning_at("essay_templates.csv", None, None, "no active essay templates"),
        id="no-essay-templates",
    ),
    pytest.param(
        {"evaluation_templates.csv": templates_csv("judge,Judge,,in_last_line,llm,false")},
        warning_at("evaluation_templates.csv", None, None, "no active evaluation templates"),
        id="no-active-evaluation-templates",
    ),
    pytest.param(
        {"llm_models.csv": models_csv("critic,vendor/critic-1,vendor,Critic,false,true")},
        warning_at("llm_models.csv", None, None, "no model is for_generation"),
        id="no-generation-models",
    ),
    pytest.param(
        {"llm_models.csv": models_csv("writer,vendor/writer-1,vendor,Writer,true,false")},
        warning_at("llm_models.csv", None, None, "no model is for_evaluation"),
        id="no-evaluation-models",
    ),
]


@pytest.mark.parametrize(("overrides", "expect"), WARNING_CASES)
def test_each_warning_rule_reports_one_located_warning(
    overrides: dict[str, str | bytes | None], expect: Expect
) -> None:
    """Legal but suspicious input gives exactly the expected warning and no error."""
    _, problems = load(overrides)
    assert_problem(problems, expect)


# --- problems on inactive rows are warnings ----------------------------------------------------

INACTIVE_CASES = [
    pytest.param(
        {
            "draft_templates.csv": draft_rows("old,Old,,in_last_line,llm,False"),
            "templates/draft/old.txt": "x",
        },
        warning_at("draft_templates.csv", 3, "parser", "not registered"),
        id="unregistered-parser",
    ),
    pytest.param(
        {"draft_templates.csv": draft_rows("old,Old,,,human,False"), "templates/draft/old.txt": "x"},
        warning_at("draft_templates.csv", 3, "generator", "not 'llm' or 'copy'"),
        id="unknown-generator",
    ),
    pytest.param(
        {"draft_templates.csv": draft_rows("old,Old,,,copy,False")},
        warning_at("draft_templates.csv", 3, "generator", "only makes sense for essays"),
        id="copy-on-draft",
    ),
    pytest.param(
        {
            "evaluation_templates.csv": evaluation_rows("old,Old,,,llm,False,10"),
            "templates/evaluation/old.txt": "x",
        },
        warning_at("evaluation_templates.csv", 3, "parser", "must name a parser"),
        id="evaluation-without-parser",
    ),
    pytest.param(
        {"draft_templates.csv": draft_rows("a/b,Old,,,llm,False")},
        warning_at("draft_templates.csv", 3, "template_id", "separator"),
        id="template-bad-id",
    ),
    pytest.param(
        {"concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS, "..,Up,False")},
        warning_at("concepts_metadata.csv", 5, "concept_id", "'..'"),
        id="concept-bad-id",
    ),
    pytest.param(
        {"llm_models.csv": models_csv(*MODEL_ROWS, ".hidden,vendor/x,vendor,X,false,false")},
        warning_at("llm_models.csv", 4, "id", "dot"),
        id="unused-model-bad-id",
    ),
    pytest.param(
        {"llm_models.csv": models_csv(*MODEL_ROWS, "spare,,vendor,X,false,false")},
        warning_at("llm_models.csv", 4, "model", "model string is empty"),
        id="unused-model-empty-model",
    ),
    pytest.param(
        {"concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS, "delta,,False")},
        warning_at("concepts_metadata.csv", 5, "name", "name is empty"),
        id="concept-empty-name",
    ),
    pytest.param(
        {"concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS, "beta,Beta again,False")},
        warning_at("concepts_metadata.csv", 5, "concept_id", "duplicate id 'beta'"),
        id="duplicate-id",
    ),
    pytest.param(
        {"draft_templates.csv": draft_rows("old,Old,,,llm,False"), "templates/draft/old.txt": "\n{% if %}"},
        warning_at("templates/draft/old.txt", 2, None, "syntax error"),
        id="template-syntax-error",
    ),
    pytest.param(
        {
            "draft_templates.csv": draft_rows("old,Old,,,llm,False"),
            "templates/draft/old.txt": "{{ response }}",
        },
        warning_at("templates/draft/old.txt", 1, None, "variable 'response'"),
        id="template-unknown-variable",
    ),
    pytest.param(
        {"draft_templates.csv": draft_rows("old,Old,,,llm,False"), "templates/draft/old.txt": b"\n\n\x80"},
        warning_at("templates/draft/old.txt", 3, None, "UTF-8"),
        id="template-not-utf8",
    ),
    pytest.param(
        {
            "concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS, "delta,Delta,False"),
            "concepts/descriptions-paragraph/delta.txt": b"\xc3(",
        },
        warning_at("concepts/descriptions-paragraph/delta.txt", 1, None, "UTF-8"),
        id="description-not-utf8",
    ),
]


@pytest.mark.parametrize(("overrides", "expect"), INACTIVE_CASES)
def test_problems_on_inactive_rows_are_warnings(
    overrides: dict[str, str | bytes | None], expect: Expect
) -> None:
    """A retired row's problem is only a warning (saying so), so it never blocks today's cohort."""
    _, problems = load(overrides)
    found = assert_problem(problems, expect)
    assert "inactive" in found.message


# --- ids that could escape their folder --------------------------------------------------------

BAD_IDS = [
    pytest.param("a/b", "separator", id="slash"),
    pytest.param("a\\b", "separator", id="backslash"),
    pytest.param("..", "'..'", id="dotdot"),
    pytest.param("x..y", "'..'", id="inner-dotdot"),
    pytest.param(".hidden", "starts with a dot", id="leading-dot"),
    pytest.param("a\tb", "control character", id="tab"),
    pytest.param("a\x00b", "control character", id="nul"),
]

ID_COLUMNS = [
    pytest.param(
        "concepts_metadata.csv",
        lambda bad: concepts_csv(*CONCEPT_ROWS, f"{bad},Bad,True"),
        5,
        "concept_id",
        id="concept_id",
    ),
    pytest.param(
        "draft_templates.csv",
        lambda bad: draft_rows(f"{bad},Bad,,,llm,True"),
        3,
        "template_id",
        id="template_id",
    ),
    pytest.param(
        "llm_models.csv",
        lambda bad: models_csv(*MODEL_ROWS, f"{bad},vendor/x,vendor,X,true,true"),
        4,
        "id",
        id="model-id",
    ),
]


@pytest.mark.parametrize(("bad_id", "word"), BAD_IDS)
@pytest.mark.parametrize(("csv_name", "make_csv", "line", "column"), ID_COLUMNS)
def test_ids_that_could_escape_their_folder_are_errors(
    csv_name: str, make_csv, line: int, column: str, bad_id: str, word: str
) -> None:
    """Concept, template and model ids name folders, so separators, '..', dots and controls are errors."""
    experiment, problems = load({csv_name: make_csv(bad_id)})
    assert_problem(problems, error_at(csv_name, line, column, word))
    ids = {c.concept_id for c in experiment.concepts}
    ids |= {t.template_id for t in experiment.templates} | {m.model_id for m in experiment.models}
    assert bad_id not in ids


@pytest.mark.parametrize(
    ("csv_name", "csv_text", "line", "column"),
    [
        ("concepts_metadata.csv", concepts_csv(*CONCEPT_ROWS, ",Nameless,True"), 5, "concept_id"),
        ("essay_templates.csv", templates_csv(ESSAY_ROW, ",Nameless,,,copy,True"), 3, "template_id"),
        ("llm_models.csv", models_csv(*MODEL_ROWS, ",vendor/x,vendor,X,true,false"), 4, "id"),
    ],
)
def test_empty_ids_are_errors(csv_name: str, csv_text: str, line: int, column: str) -> None:
    """Every row needs an id; an empty id cell is an error on that cell."""
    _, problems = load({csv_name: csv_text})
    assert_problem(problems, error_at(csv_name, line, column, "is empty"))


# --- duplicate ids -----------------------------------------------------------------------------

DUPLICATE_CASES = [
    pytest.param(
        "concepts_metadata.csv",
        concepts_csv(*CONCEPT_ROWS, "beta,Beta again,True"),
        5,
        "concept_id",
        "beta",
        id="concepts",
    ),
    pytest.param(
        "essay_templates.csv",
        templates_csv(ESSAY_ROW, "copier,Copier,,,copy,True", "essay,Essay again,,,copy,True"),
        4,
        "template_id",
        "essay",
        id="templates",
    ),
    pytest.param(
        "llm_models.csv",
        models_csv(*MODEL_ROWS, "writer,vendor/other,vendor,Other,true,true"),
        4,
        "id",
        "writer",
        id="models",
    ),
]


@pytest.mark.parametrize(("csv_name", "csv_text", "line", "column", "dup"), DUPLICATE_CASES)
def test_duplicate_ids_are_errors_and_the_first_row_wins(
    csv_name: str, csv_text: str, line: int, column: str, dup: str
) -> None:
    """A repeated id is an error on the later row, which is dropped; the first definition is kept."""
    experiment, problems = load({csv_name: csv_text})
    errors = [p for p in problems if p.level is Level.ERROR]
    assert len(errors) == 1, show(problems)
    (found,) = errors
    assert (found.path, found.line) == (f"1_raw/{csv_name}", line)
    assert f"duplicate id {dup!r}" in found.message
    assert "first defined on line" in found.message
    ids = [c.concept_id for c in experiment.concepts]
    ids += [t.template_id for t in experiment.templates] + [m.model_id for m in experiment.models]
    assert ids.count(dup) == 1
    if csv_name == "llm_models.csv":
        assert experiment.model("writer").model == "vendor/writer-1"


@pytest.mark.parametrize(("csv_name", "csv_text", "line", "column", "dup"), DUPLICATE_CASES)
def test_duplicate_id_problem_names_the_id_column(
    csv_name: str, csv_text: str, line: int, column: str, dup: str
) -> None:
    """A duplicate id is a problem of the id cell, so the problem names the id column."""
    _, problems = load({csv_name: csv_text})
    assert_problem(problems, error_at(csv_name, line, column, "duplicate id"))


# --- unreadable files and a missing directory --------------------------------------------------

UNREADABLE_CASES = [
    pytest.param("x.csv", id="stray-file"),
    pytest.param("draft_templates.csv", id="csv"),
    pytest.param("templates/draft/sketch.txt", id="template"),
    pytest.param("concepts/descriptions-sentence/beta.txt", id="description"),
]


@pytest.mark.parametrize("path", UNREADABLE_CASES)
def test_unreadable_files_are_errors_naming_the_reason(path: str) -> None:
    """A file that exists but cannot be read is an error carrying the OS reason."""
    _, problems = load({path: None}, unreadable=((path, "Permission denied"),))
    assert_problem(problems, error_at(path, None, None, "cannot read file: Permission denied"), only=False)


@pytest.mark.parametrize("path", ["draft_templates.csv", "templates/draft/sketch.txt"])
def test_unreadable_file_is_not_also_reported_missing(path: str) -> None:
    """An unreadable file is reported once, as unreadable, not also as a file that does not exist."""
    _, problems = load({path: None}, unreadable=((path, "Permission denied"),))
    assert_problem(problems, error_at(path, None, None, "cannot read file"))


def test_missing_raw_directory_is_one_error() -> None:
    """A missing 1_raw directory is a single error, not one per expected file."""
    experiment, problems = load_experiment(RawFiles.of({}, missing=True))
    assert len(problems) == 1
    (problem,) = problems
    assert (problem.level, problem.path, problem.line, problem.column) == (Level.ERROR, "1_raw/", None, None)
    assert "does not exist" in problem.message
    assert experiment.concepts == experiment.templates == experiment.models == ()


def test_replication_config_is_optional() -> None:
    """Without replication_config.csv every stage has one replicate and nothing is reported."""
    experiment, problems = load({"replication_config.csv": None})
    assert problems == ()
    assert experiment.replicates == ()
    assert [experiment.replicates_for(stage) for stage in STAGES] == [1, 1, 1]


def test_replication_config_values_are_kept() -> None:
    """Valid replication rows set each listed stage's replicates (stage names ignore case)."""
    experiment, problems = load({"replication_config.csv": replication_csv(" Essay ,3", "draft,2")})
    assert problems == ()
    assert experiment.replicates == ((Stage.DRAFT, 2), (Stage.ESSAY, 3))
    assert experiment.replicates_for(Stage.EVALUATION) == 1


# --- what is accepted --------------------------------------------------------------------------


def test_utf8_bom_is_accepted_everywhere() -> None:
    """Files saved with a UTF-8 BOM load exactly like files without it."""
    bom = {path: b"\xef\xbb\xbf" + data for path, data in experiment_files().items()}
    experiment, problems = load(bom)
    assert problems == (), show(problems)
    assert experiment == load()[0]
    assert experiment.template(Stage.ESSAY, "essay").text == base_files()["templates/essay/essay.txt"]


def test_crlf_line_endings_are_accepted_everywhere() -> None:
    """Files with Windows line endings load exactly like files with LF (texts are normalised)."""
    crlf = {path: data.replace(b"\n", b"\r\n") for path, data in experiment_files().items()}
    experiment, problems = load(crlf)
    assert problems == (), show(problems)
    assert experiment == load()[0]


def test_crlf_keeps_line_numbers() -> None:
    """With CRLF endings, problems still point at the right CSV line and template line."""
    overrides = {
        "concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS, "delta,Delta,maybe").replace("\n", "\r\n"),
        "templates/essay/essay.txt": "{{ draft_block }}\r\n\r\n{{ concepts }}\r\n",
    }
    _, problems = load(overrides)
    assert {(p.path, p.line) for p in problems if p.level is Level.ERROR} == {
        ("1_raw/concepts_metadata.csv", 5),
        ("1_raw/templates/essay/essay.txt", 3),
    }


@pytest.mark.parametrize(
    ("word", "value"),
    [
        ("True", True),
        ("False", False),
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("YES", True),
        ("No", False),
    ],
)
def test_boolean_words_are_accepted(word: str, value: bool) -> None:
    """Every documented boolean spelling works for active, for_generation and for_evaluation."""
    experiment, problems = load(
        {
            "concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS, f"delta,Delta,{word}"),
            "draft_templates.csv": draft_rows(f"other,Other,,,llm,{word}"),
            "templates/draft/other.txt": "{{ concepts | length }}",
            "llm_models.csv": models_csv(*MODEL_ROWS, f"extra,vendor/x,vendor,X,{word},{word}"),
        }
    )
    assert not has_errors(problems), show(problems)
    assert next(c for c in experiment.concepts if c.concept_id == "delta").active is value
    assert experiment.template(Stage.DRAFT, "other").active is value
    extra = experiment.model("extra")
    assert (extra.for_generation, extra.for_evaluation) == (value, value)


def test_concept_active_column_is_optional() -> None:
    """concepts_metadata.csv may omit `active` (or leave it empty): such concepts are active."""
    experiment, problems = load(
        {"concepts_metadata.csv": "concept_id,name\nalpha,Alpha\nbeta,Beta\ngamma,Gamma\n"}
    )
    assert problems == ()
    assert len(experiment.active_concepts()) == 3
    experiment, problems = load({"concepts_metadata.csv": concepts_csv("alpha,Alpha,", "beta,Beta,False")})
    assert not has_errors(problems)
    assert [c.concept_id for c in experiment.active_concepts()] == ["alpha"]


def test_extra_columns_are_allowed_and_kept() -> None:
    """Columns beyond the standard ones are no problem and are readable from the loaded rows."""
    experiment, problems = load(
        {
            "llm_models.csv": models_csv(
                "writer,vendor/writer-1,vendor,Writer,true,true,reasoning",
                header=MODELS_HEADER + ",specialization",
            ),
            "concepts_metadata.csv": concepts_csv(
                *[r + ",note" for r in CONCEPT_ROWS], header="concept_id,name,active,notes"
            ),
        }
    )
    assert problems == (), show(problems)
    assert experiment.template(Stage.EVALUATION, "judge").extra_value("score_max") == "10"
    assert experiment.template(Stage.EVALUATION, "judge").extra_value("absent", "dflt") == "dflt"
    assert experiment.template(Stage.DRAFT, "sketch").extra == ()
    assert experiment.model("writer").extra_value("specialization") == "reasoning"


def test_template_fields_are_read() -> None:
    """Each template row keeps its names, resolved parser, generator, text, hash and line."""
    experiment, problems = load(
        {"essay_templates.csv": templates_csv(ESSAY_ROW, "copier,Copier,Uses the draft,,COPY,yes")}
    )
    assert problems == ()
    sketch = experiment.template(Stage.DRAFT, "sketch")
    assert (sketch.name, sketch.description, sketch.parser, sketch.generator, sketch.line) == (
        "Sketch",
        "Free notes on the concepts",
        "identity",
        Generator.LLM,
        2,
    )
    assert sketch.text == base_files()["templates/draft/sketch.txt"]
    assert len(sketch.text_sha256) == 64
    copier = experiment.template(Stage.ESSAY, "copier")
    assert (copier.generator, copier.text, copier.text_sha256, copier.line) == (Generator.COPY, None, "", 3)
    assert experiment.template(Stage.EVALUATION, "judge").parser == "in_last_line"


def test_row_lines_count_blank_lines_and_multiline_cells() -> None:
    """Row line numbers are file lines, so blank lines and quoted newlines do not shift them."""
    text = 'concept_id,name,active\nalpha,Alpha,True\n\n"beta","Be\nta",True\ngamma,Gamma,maybe\n'
    experiment, problems = load({"concepts_metadata.csv": text})
    assert [(c.concept_id, c.line) for c in experiment.concepts] == [("alpha", 2), ("beta", 4)]
    assert_problem(problems, error_at("concepts_metadata.csv", 6, "active", "boolean"))


# --- description fallback ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "requested", "expected_level"),
    [
        (("sentence", "paragraph", "article"), "article", "article"),
        (("sentence", "paragraph", "article"), "sentence", "sentence"),
        (("sentence", "paragraph"), "article", "paragraph"),
        (("sentence",), "article", "sentence"),
        (("paragraph",), "sentence", "paragraph"),
        (("article",), "sentence", "name"),
        ((), "paragraph", "name"),
    ],
)
def test_description_falls_back_requested_paragraph_sentence_name(
    levels: tuple[str, ...], requested: str, expected_level: str
) -> None:
    """A missing level falls back to paragraph, then sentence, then the concept's name."""
    concept = Concept(
        concept_id="c",
        name="The Name",
        active=True,
        descriptions=tuple((level, f"text at {level}") for level in levels),
    )
    expected_text = "The Name" if expected_level == "name" else f"text at {expected_level}"
    assert concept.description(requested) == (expected_text, expected_level)


def test_loaded_descriptions_feed_the_fallback() -> None:
    """Description files are attached to their concept, and a concept with none falls back to its name."""
    experiment, problems = load(
        {
            "concepts/descriptions-article/alpha.txt": "alpha at length.",
            "concepts/descriptions-sentence/beta.txt": None,
            "concepts/descriptions-paragraph/gamma.txt": None,
            "concepts/descriptions-sentence/gamma.txt": None,
        }
    )
    assert problems == ()
    alpha, beta, gamma = experiment.concepts
    assert alpha.description("article") == ("alpha at length.", "article")
    assert beta.description("sentence") == ("beta in a paragraph.", "paragraph")
    assert gamma.description("article") == ("Gamma", "name")


# --- Problem formatting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem", "text"),
    [
        (
            error("1_raw/draft_templates.csv", "bad", line=3, column="parser"),
            "1_raw/draft_templates.csv:3: error: column 'parser': bad",
        ),
        (
            warning("1_raw/templates/draft/x.txt", "odd", line=7),
            "1_raw/templates/draft/x.txt:7: warning: odd",
        ),
        (error("1_raw/llm_models.csv", "missing file"), "1_raw/llm_models.csv: error: missing file"),
        (warning("1_raw/x.csv", "hm", column="id"), "1_raw/x.csv: warning: column 'id': hm"),
    ],
)
def test_problem_str_is_path_line_level_message(problem: Problem, text: str) -> None:
    """Problems print as `path:line: level: message`, with a column prefix when there is one."""
    assert str(problem) == text


# --- bad input never raises --------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(CSV_NAMES), data=st.binary(max_size=300))
def test_random_bytes_as_any_csv_give_problems_not_exceptions(name: str, data: bytes) -> None:
    """Any bytes in place of any CSV load without raising and are reported as problems."""
    _, problems = load({name: data})
    assert problems
    assert all(isinstance(p, Problem) for p in problems)


CSV_ALPHABET = st.sampled_from([*',"\n\r\t ;.\\/x1', "True", "llm", "copy", "\x00", "é", "\ufeff"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(CSV_NAMES), body=st.lists(CSV_ALPHABET, max_size=60).map("".join))
def test_random_rows_after_a_valid_header_never_raise(name: str, body: str) -> None:
    """Rows of commas, quotes, controls and keywords under a valid header never make loading raise."""
    header = experiment_files()[name].decode().splitlines()[0]
    _, problems = load({name: f"{header}\n{body}"})
    assert all(isinstance(p, Problem) for p in problems)


def test_deeply_nested_template_is_a_problem_not_an_exception() -> None:
    """A template nested too deeply for Jinja's parser is reported, not raised out of load_experiment."""
    nested = "{{ " + "(" * 200 + "1" + ")" * 200 + " }}"
    _, problems = load({"templates/essay/essay.txt": nested})
    assert any(p.level is Level.ERROR and p.path == "1_raw/templates/essay/essay.txt" for p in problems)


def test_inactive_concept_description_warning_does_not_mention_a_template() -> None:
    """The warning suffix for an inactive concept's bad description speaks of the row, not a template."""
    _, problems = load(
        {
            "concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS, "delta,Delta,False"),
            "concepts/descriptions-paragraph/delta.txt": b"\xc3(",
        }
    )
    found = assert_problem(
        problems, warning_at("concepts/descriptions-paragraph/delta.txt", 1, None, "UTF-8")
    )
    assert "template" not in found.message


# --- real directories --------------------------------------------------------------------------


def test_shipped_example_loads_without_errors() -> None:
    """The example experiment in data/1_raw loads cleanly (only warnings, e.g. a retired template)."""
    experiment, problems = load_experiment(read_raw_dir(EXAMPLE_RAW))
    assert not has_errors(problems), show(problems)
    assert experiment.active_concepts()
    assert all(experiment.active_templates(stage) for stage in STAGES)
    assert experiment.generation_models() and experiment.evaluation_models()


def _render_variables(stage: Stage) -> dict[str, object]:
    concepts = [{"name": "Alpha", "content": "First idea."}, {"name": "Beta", "content": "Second idea."}]
    return {
        Stage.DRAFT: {"concepts": concepts},
        Stage.ESSAY: {"draft_block": "The draft.", "links_block": "The links."},
        Stage.EVALUATION: {"response": "The essay."},
    }[stage]


def test_upstream_corpus_loads_and_renders_like_plain_jinja() -> None:
    """The upstream corpus loads with no errors, and every template, including the `{% raw %}`
    and `loop.last` ones, renders with Renderer exactly as with plain jinja2.Template."""
    if not UPSTREAM_RAW.is_dir():
        pytest.skip(f"upstream corpus not present at {UPSTREAM_RAW}")
    experiment, problems = load_experiment(read_raw_dir(UPSTREAM_RAW))
    assert not has_errors(problems), show(problems)
    renderer = Renderer()
    with_text = [t for t in experiment.templates if t.text is not None]
    tricky = [t for t in with_text if "{% raw %}" in t.text or "loop.last" in t.text]
    assert tricky, "the corpus should contain {% raw %} and loop.last templates"
    for template in with_text:
        variables = _render_variables(template.stage)
        rendered = renderer.render(
            template.text, variables, template_id=template.template_id, stage=template.stage
        )
        assert rendered == jinja2.Template(template.text).render(**variables), template.template_id
