"""daydreamctl's offline verbs: validate and cohort, on real directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from daydreamd.ctl import cli

ROOT = Path(__file__).parents[2]
EXAMPLE_DATA = ROOT / "data"


@pytest.fixture(name="data")
def _data(tmp_path: Path) -> Path:
    """A private copy of the example experiment's data dir."""
    shutil.copytree(EXAMPLE_DATA / "1_raw", tmp_path / "data" / "1_raw")
    return tmp_path / "data"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--config", str(ROOT / "config.toml"), *args])
    return result.exit_code, result.stdout, result.stderr


def test_validate_example_is_ok(data: Path) -> None:
    """The example has no errors (one warning: an inactive row without a file), exit 0."""
    code, out, err = run("validate", "--data", str(data))
    assert code == 0
    assert "warning" in out and "old-brainstorm" in out
    assert "0 error(s), 1 warning(s)" in err


def test_validate_reports_each_problem_as_path_line_level(data: Path) -> None:
    """Two broken files give two lines, each `path:line: level: message`, and exit 1."""
    (data / "1_raw" / "templates" / "essay" / "polished-essay.txt").write_text("{{ draft_block }\n")
    csv = data / "1_raw" / "llm_models.csv"
    csv.write_text(csv.read_text().replace("true", "maybe", 1))
    code, out, _ = run("validate", "--data", str(data))
    assert code == 1
    assert "1_raw/templates/essay/polished-essay.txt:1: error: Jinja syntax error" in out
    assert "1_raw/llm_models.csv:" in out and "'maybe' is not a boolean" in out


def test_validate_json(data: Path) -> None:
    """--json gives counts and every problem with file, line and message."""
    code, out, _ = run("validate", "--data", str(data), "--json")
    report = json.loads(out)
    assert code == 0 and report["ok"] is True
    assert report["warnings"] == 1
    assert report["problems"][0]["file"] == "1_raw/draft_templates.csv"
    assert report["problems"][0]["line"] == 5


def test_cohort_write_then_rewrite_is_identical(data: Path) -> None:
    """cohort --write writes the files; a second run writes the same bytes."""
    code, out, _ = run("cohort", "--data", str(data), "--write", "--json")
    assert code == 0
    first = json.loads(out)
    assert first["counts"] == {"draft": 9, "essay": 18, "evaluation": 36}
    membership = Path(first["membership"]).read_bytes()
    run("cohort", "--data", str(data), "--write")
    assert Path(first["membership"]).read_bytes() == membership
    assert Path(first["manifest"]).parent == data / "cohorts" / first["cohort_id"]


def test_cohort_refuses_an_experiment_with_errors(data: Path) -> None:
    """No cohort is built from broken files; the problems are shown and the exit code is 1."""
    (data / "1_raw" / "concepts_metadata.csv").write_text("concept_id\nx\n")
    code, _, err = run("cohort", "--data", str(data))
    assert code == 1
    assert "missing required column(s) name" in err
    assert not (data / "cohorts").exists()


def test_console_script_runs() -> None:
    """The installed entry point answers --help with the verbs (a real process)."""
    out = subprocess.run(
        [sys.executable, "-m", "daydreamd.ctl", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "validate" in out and "cohort" in out
