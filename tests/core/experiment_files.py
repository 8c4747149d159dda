"""In-memory experiment files for loader tests: a minimal valid ``1_raw`` and ways to change it.

``experiment_files()`` is a small experiment that loads with no problems at all: 3 concepts with
descriptions, one llm template per stage with its text, a generation model and an evaluation
model, and a replication config. Tests pass overrides to replace a file (``str`` or ``bytes``)
or delete it (``None``), then load the result with ``load``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daydreamd.core.experiment import Experiment
from daydreamd.core.loader import load_experiment
from daydreamd.core.problems import Level, Problem
from daydreamd.core.snapshot import RawFiles

CONCEPTS_HEADER = "concept_id,name,active"
TEMPLATES_HEADER = "template_id,template_name,description,parser,generator,active"
EVALUATION_HEADER = TEMPLATES_HEADER + ",score_max"
MODELS_HEADER = "id,model,provider,display_name,for_generation,for_evaluation"
REPLICATION_HEADER = "stage,replicates"

CONCEPT_ROWS = ("alpha,Alpha,True", "beta,Beta,True", "gamma,Gamma,True")
DRAFT_ROW = "sketch,Sketch,Free notes on the concepts,,llm,True"
ESSAY_ROW = "essay,Essay,A polished essay,,llm,True"
EVALUATION_ROW = "judge,Judge,Scores the essay,in_last_line,llm,True,10"
MODEL_ROWS = (
    "writer,vendor/writer-1,vendor,Writer,true,false",
    "critic,vendor/critic-1,vendor,Critic,false,true",
)

DRAFT_TEXT = (
    "Concepts:\n{% for concept in concepts %}- {{ concept.name }}: {{ concept.content }}\n{% endfor %}"
)
ESSAY_TEXT = "Write an essay from these notes:\n{{ draft_block }}\n"
EVALUATION_TEXT = "Rate this essay:\n{{ response }}\nEnd with SCORE: X\n"

FileValue = str | bytes | None


def csv_text(header: str, *rows: str) -> str:
    """A CSV file's text: the header and each row on its own line."""
    return "".join(f"{line}\n" for line in (header, *rows))


def concepts_csv(*rows: str, header: str = CONCEPTS_HEADER) -> str:
    """``concepts_metadata.csv`` with the given data rows."""
    return csv_text(header, *rows)


def templates_csv(*rows: str, header: str = TEMPLATES_HEADER) -> str:
    """A ``<stage>_templates.csv`` with the given data rows."""
    return csv_text(header, *rows)


def models_csv(*rows: str, header: str = MODELS_HEADER) -> str:
    """``llm_models.csv`` with the given data rows."""
    return csv_text(header, *rows)


def replication_csv(*rows: str) -> str:
    """``replication_config.csv`` with the given data rows."""
    return csv_text(REPLICATION_HEADER, *rows)


def base_files() -> dict[str, FileValue]:
    """The minimal valid experiment, as text (paths relative to ``1_raw``)."""
    files: dict[str, FileValue] = {
        "concepts_metadata.csv": concepts_csv(*CONCEPT_ROWS),
        "draft_templates.csv": templates_csv(DRAFT_ROW),
        "essay_templates.csv": templates_csv(ESSAY_ROW),
        "evaluation_templates.csv": templates_csv(EVALUATION_ROW, header=EVALUATION_HEADER),
        "llm_models.csv": models_csv(*MODEL_ROWS),
        "replication_config.csv": replication_csv("draft,1", "essay,1", "evaluation,1"),
        "templates/draft/sketch.txt": DRAFT_TEXT,
        "templates/essay/essay.txt": ESSAY_TEXT,
        "templates/evaluation/judge.txt": EVALUATION_TEXT,
    }
    for concept in ("alpha", "beta", "gamma"):
        files[f"concepts/descriptions-sentence/{concept}.txt"] = f"{concept} in one sentence."
        files[f"concepts/descriptions-paragraph/{concept}.txt"] = f"{concept} in a paragraph."
    return files


def experiment_files(overrides: Mapping[str, FileValue] | None = None) -> dict[str, bytes]:
    """The minimal valid experiment as bytes, with ``overrides`` applied (``None`` deletes a file)."""
    merged = {**base_files(), **(overrides or {})}
    return {
        path: value if isinstance(value, bytes) else value.encode()
        for path, value in merged.items()
        if value is not None
    }


def load(
    overrides: Mapping[str, FileValue] | None = None,
    *,
    unreadable: tuple[tuple[str, str], ...] = (),
) -> tuple[Experiment, tuple[Problem, ...]]:
    """Load the minimal experiment with ``overrides`` applied and ``unreadable`` files."""
    return load_experiment(RawFiles.of(experiment_files(overrides), unreadable=unreadable))


@dataclass(frozen=True)
class Expect:
    """One problem a test expects: where it is, how bad it is, and a word its message contains."""

    level: Level
    path: str
    line: int | None
    column: str | None
    word: str

    def matches(self, problem: Problem) -> bool:
        """True when ``problem`` is this one (the word is matched case-insensitively)."""
        return (problem.level, problem.path, problem.line, problem.column) == (
            self.level,
            self.path,
            self.line,
            self.column,
        ) and self.word.lower() in problem.message.lower()


def show(problems: tuple[Problem, ...] | list[Problem]) -> str:
    """Problems one per line, for assertion messages."""
    return "\n".join(str(p) for p in problems) or "(no problems)"


def assert_problem(problems: tuple[Problem, ...], expect: Expect, *, only: bool = True) -> Problem:
    """Assert ``expect`` was reported exactly once and return it.

    With ``only``, an expected error must be the only error, and an expected warning must come
    with no error at all (warnings about an axis left empty may accompany either).
    """
    found = [p for p in problems if expect.matches(p)]
    assert len(found) == 1, f"expected one {expect}, got:\n{show(problems)}"
    if only:
        errors = [p for p in problems if p.level is Level.ERROR]
        assert errors == (found if expect.level is Level.ERROR else []), show(problems)
    return found[0]


def error_at(path: str, line: int | None, column: str | None, word: str) -> Expect:
    """An expected error at ``1_raw/<path>``."""
    return Expect(Level.ERROR, f"1_raw/{path}", line, column, word)


def warning_at(path: str, line: int | None, column: str | None, word: str) -> Expect:
    """An expected warning at ``1_raw/<path>``."""
    return Expect(Level.WARNING, f"1_raw/{path}", line, column, word)
