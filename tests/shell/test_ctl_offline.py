"""daydreamctl's offline verbs: validate and cohort, on real directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from daydreamd.cli.main import cli

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
        [sys.executable, "-m", "daydreamd.cli.main", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "validate" in out and "cohort" in out


def test_parse_prints_the_score_or_the_error(tmp_path: Path) -> None:
    """parse prints just the score for a judge's reply, and exits 1 with the reason when there is none."""
    reply = tmp_path / "raw.txt"
    reply.write_text("The essay is good.\n**Final Score:** 7\nIt could be tighter.\n")
    code, out, _ = run("parse", "--stage", "evaluation", "--parser", "in_last_line", str(reply))
    assert (code, out.strip()) == (0, "7.0")
    reply.write_text("No verdict here.\n")
    code, _, err = run("parse", "--stage", "evaluation", "--parser", "in_last_line", str(reply))
    assert code == 1 and "raw.txt" in err and "score" in err.lower()
    code, _, err = run("parse", "--stage", "draft", "--parser", "in_last_line", str(reply))
    assert code == 1 and "in_last_line" in err


def test_parse_explain_shows_the_decision_and_the_score_line(tmp_path: Path) -> None:
    """--explain names what was set aside, the verdict's line and the score; --scale is the template's."""
    reply = tmp_path / "raw.txt"
    reply.write_text("<think>\nTotal score: 4 + 4 = 8.\n</think>\nNovelty (3/5)\n**SCORE: 7/9**\n")
    code, out, err = run(
        "parse", "--stage", "evaluation", "--parser", "complex", "--scale", "0-9", "--explain", str(reply)
    )
    assert code == 0, err
    assert "3 line(s) inside reasoning blocks set aside" in out
    assert "score 7.0 from line 5: SCORE: 7/9" in out
    assert "set aside line 2 (reasoning, 4)" in out
    code, out, _ = run(
        "parse", "--stage", "evaluation", "--parser", "complex", "--scale", "0-9", "--json", str(reply)
    )
    assert code == 0 and json.loads(out)["verdict"]["line"] == 5
    code, _, err = run("parse", "--stage", "evaluation", "--parser", "complex", str(reply))
    assert code == 1 and "no verdict" in err and "other scale" in err  # 7/9 is not a 0-10 score
    code, _, err = run("parse", "--stage", "evaluation", "--parser", "complex", "--scale", "9-0", str(reply))
    assert code == 2 and "--scale" in err


def test_render_writes_prompts_without_calling_anything(data: Path) -> None:
    """render writes every draft prompt; essays wait for their drafts; copy essays have none."""
    code, out, _ = run("render", "--data", str(data), "--json")
    report = json.loads(out)
    assert code == 0
    assert report["rendered"] == 9 and report["failed"] == 0
    assert report["waiting_for_parent"] == 9 + 36 and report["skipped_copy"] == 9
    prompts = sorted((data / "gens" / "draft").glob("*/prompt.txt"))
    texts = [p.read_text() for p in prompts]
    assert len(texts) == 9 and all(t.strip() and "{{ concept" not in t for t in texts)
    assert not list((data / "gens").glob("*/*/raw.txt"))


def test_render_reports_a_failing_template_by_gen_id(data: Path) -> None:
    """A template that validates but fails at render time is reported per generation, exit 1."""
    (data / "1_raw" / "templates" / "draft" / "contrast-map.txt").write_text("{{ concepts[7].name }}\n")
    code, out, _ = run("render", "--data", str(data), "--stage", "draft")
    assert code == 1
    failures = [line for line in out.splitlines() if line.startswith("d_")]
    assert len(failures) == 3 and all("contrast-map" in line for line in failures)


@pytest.mark.skipif(
    not (ROOT.parent / "shared" / "corpus" / "upstream-daydreaming" / "1_raw").is_dir(),
    reason="upstream corpus not present",
)
def test_render_the_upstream_corpus(tmp_path: Path) -> None:
    """All 525 draft prompts of the researchers' corpus (k_max=2) render."""
    shutil.copytree(ROOT.parent / "shared" / "corpus" / "upstream-daydreaming" / "1_raw", tmp_path / "1_raw")
    code, out, _ = run("render", "--data", str(tmp_path), "--stage", "draft", "--json")
    assert code == 0 and json.loads(out)["rendered"] == 525
