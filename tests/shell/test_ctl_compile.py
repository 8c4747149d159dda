"""``daydreamctl cohort compile SPEC``, end to end in a real process, against the example experiment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
CTL = [sys.executable, "-m", "daydreamd.cli.main", "--config", str(ROOT / "config.toml")]

SPEC = """\
axes:
  draft_template: [bridge-sketch, old-brainstorm]   # old-brainstorm is inactive: a spec may name it
  draft_llm: [gemini_25_flash]
  draft_replicate: [1, 2]
  evaluation_template: '@file:items/judges.csv'
  evaluation_llm: [sonnet_4, deepseek_r1]
rules:
  tuples:
    essays:
      axes: [essay_template, essay_llm]
      items:
        - [polished-essay, gemini_25_flash]
        - [idea-as-essay, gemini_25_flash]
  pairs:
    judging:
      left: evaluation_template
      right: evaluation_llm
      allowed: '@file:items/judging.csv'
      balance: both
output:
  field_order: [draft_template, draft_llm, draft_replicate, essay_template, essay_llm]
"""


@pytest.fixture(name="data")
def _data(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "data" / "1_raw", tmp_path / "data" / "1_raw")
    spec = tmp_path / "data" / "cohorts" / "rejudge" / "spec"
    (spec / "items").mkdir(parents=True)
    (spec / "config.yaml").write_text(SPEC)
    (spec / "items" / "judges.csv").write_text("evaluation_template\nnovelty-judge\nrigor-judge\n")
    (spec / "items" / "judging.csv").write_text(
        "evaluation_template,evaluation_llm\nnovelty-judge,sonnet_4\nrigor-judge,deepseek_r1\n"
    )
    return tmp_path / "data"


def ctl(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*CTL, "cohort", "compile", *args, "--data", str(data)]
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=data.parent)


def test_compile_prints_rows_as_jsonl(data: Path) -> None:
    """2 drafts x 2 replicates x 2 essay bundles x 2 (judge, model) pairs = 16 rows; --limit prints 3."""
    done = ctl(data, "data/cohorts/rejudge/spec", "--format", "jsonl", "--limit", "3")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows[0] == {
        "draft_template": "bridge-sketch",
        "draft_llm": "gemini_25_flash",
        "draft_replicate": "1",
        "essay_template": "polished-essay",
        "essay_llm": "gemini_25_flash",
        "evaluation_template": "novelty-judge",
        "evaluation_llm": "sonnet_4",
    }
    # the essay tuple is written first, so it is the last axis and varies fastest, then the judging pair
    assert (rows[1]["essay_template"], rows[1]["evaluation_template"]) == ("idea-as-essay", "novelty-judge")
    assert (rows[2]["essay_template"], rows[2]["evaluation_llm"]) == ("polished-essay", "deepseek_r1")
    assert len(rows) == 3
    assert "ok: 16 row(s), 7 column(s); printed 3" in done.stderr
    assert "combo_mappings.csv: warning: not found" in done.stderr


def test_compile_prints_csv_with_a_header(data: Path) -> None:
    done = ctl(data, "data/cohorts/rejudge/spec/config.yaml")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "draft_template,draft_llm,draft_replicate,essay_template,essay_llm,evaluation_template,evaluation_llm"
    )
    assert len(lines) == 17
    assert (
        lines[-1] == "old-brainstorm,gemini_25_flash,2,idea-as-essay,gemini_25_flash,rigor-judge,deepseek_r1"
    )


def test_compile_errors_are_path_line_error_and_exit_1(data: Path) -> None:
    spec = data / "cohorts" / "rejudge" / "spec"
    (spec / "config.yaml").write_text(SPEC.replace("[1, 2]", "[1, 0]"))
    (spec / "items" / "judges.csv").write_text("evaluation_template\nnovelty-judge\nno-such-judge\n")
    (spec / "items" / "judging.csv").write_text(
        "evaluation_template,evaluation_llm\nnovelty-judge,sonnet_4\nno-such-judge,deepseek_r1\n"
    )
    done = ctl(data, "data/cohorts/rejudge/spec")
    assert done.returncode == 1
    assert done.stdout == ""
    assert (
        "data/cohorts/rejudge/spec/config.yaml:4: error: axes.draft_replicate[1]: draft_replicate '0' "
        "is not a replicate index" in done.stderr
    )
    assert (
        "data/cohorts/rejudge/spec/items/judges.csv:3: error: axes.evaluation_template: evaluation_template "
        "'no-such-judge' is not an evaluation template in 1_raw/evaluation_templates.csv" in done.stderr
    )
    assert "FAILED: 2 error(s)" in done.stderr


def test_compile_refuses_an_include_out_of_the_spec_folder(data: Path) -> None:
    spec = data / "cohorts" / "rejudge" / "spec"
    (spec / "config.yaml").write_text(
        SPEC.replace("@file:items/judging.csv", "@file:../../../1_raw/llm_models.csv")
    )
    done = ctl(data, "data/cohorts/rejudge/spec")
    assert done.returncode == 1
    assert (
        "data/cohorts/rejudge/spec/config.yaml:18: error: rules.pairs.judging.allowed: include "
        "'@file:../../../1_raw/llm_models.csv' is refused" in done.stderr
    )


def test_compile_needs_a_valid_experiment(data: Path) -> None:
    (data / "1_raw" / "concepts_metadata.csv").write_text("concept_id\nx\n")
    done = ctl(data, "data/cohorts/rejudge/spec")
    assert done.returncode == 1
    assert "1_raw/concepts_metadata.csv" in done.stderr and "daydreamctl validate" in done.stderr


def test_cohort_without_a_subcommand_still_builds_the_default_cohort(data: Path) -> None:
    done = subprocess.run(
        [*CTL, "cohort", "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"] == {"draft": 9, "essay": 18, "evaluation": 36}
