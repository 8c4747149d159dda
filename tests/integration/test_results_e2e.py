"""Results from a run the real service finished against the fake LLM server."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest

from daydreamd.core import legacy
from daydreamd.results import ResultsError, load
from tests.fakellm import FakeLlm
from tests.integration.daemon import ROOT, Daemon, ctl, fast_config

TABLES = (
    "parsing/aggregated_scores.csv",
    "summary/generation_scores.csv",
    "summary/final_results.csv",
    "summary/perfect_score_paths.csv",
    "analysis/judge_agreement.csv",
    "analysis/variance_analysis.csv",
    "summary/breakdowns.csv",
    "summary/breakdowns_by_judge.csv",
    "analysis/agreement_pairs.csv",
)


async def test_tables_and_report_from_a_finished_run(tmp_path: Path) -> None:
    """SQLite and --from-files give byte-identical tables for a service run; the report is written."""
    async with FakeLlm() as fake:
        daemon = Daemon(tmp_path, fast_config(fake.base_url))
        try:
            await daemon.start()
            for stage in ("draft", "essay", "evaluation"):
                await daemon.approve(stage)
            status = await daemon.wait_stage("evaluation", done=36)
            cohort_id = status["cohort_id"]
            assert await daemon.stop() == 0
        finally:
            daemon.close()
    db_out, files_out = tmp_path / "from-db", tmp_path / "from-files"
    first = await anyio.to_thread.run_sync(lambda: ctl(daemon, "results", "--out", str(db_out)))
    second = await anyio.to_thread.run_sync(
        lambda: ctl(daemon, "results", "--from-files", "--out", str(files_out))
    )
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    for table in TABLES:
        assert (db_out / table).read_bytes() == (files_out / table).read_bytes(), table
    rows = (db_out / "parsing/aggregated_scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 36 and all(cohort_id in row for row in rows[1:])
    check_the_python_api(daemon, db_out, cohort_id)
    await check_the_legacy_layout(daemon, db_out, tmp_path / "legacy-out")
    report = await anyio.to_thread.run_sync(lambda: ctl(daemon, "report", "--out", str(tmp_path / "r.html")))
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "<svg" in html and cohort_id in html
    assert not any(
        f'{attr}="http' in html or f"{attr}='http" in html for attr in ("src", "href")
    )  # nothing fetched


LEGACY_HEADERS = {
    legacy.PARSED_SCORES: legacy.PARSED_COLUMNS,
    legacy.FINAL_RESULTS: legacy.FINAL_COLUMNS,
    legacy.PERFECT_SCORE_PATHS: legacy.PERFECT_COLUMNS,
    legacy.EVALUATOR_AGREEMENT: legacy.AGREEMENT_COLUMNS,
    legacy.VARIANCE_ANALYSIS: legacy.VARIANCE_COLUMNS,
}
"""The legacy tables whose header is fixed; the two pivots have a column per template and judge."""


async def check_the_legacy_layout(daemon: Daemon, standard: Path, out: Path) -> None:
    """``results --layout legacy`` writes the old tables under legacy/ beside unchanged standard ones."""
    done = await anyio.to_thread.run_sync(
        lambda: ctl(daemon, "results", "--layout", "legacy", "--out", str(out))
    )
    assert done.returncode == 0, done.stderr
    for table in TABLES:
        assert (out / table).read_bytes() == (standard / table).read_bytes(), table

    def header(path: str) -> list[str]:
        with (out / path).open(newline="") as f:
            return next(csv.reader(f))

    for path, columns in LEGACY_HEADERS.items():
        assert header(path) == list(columns), path
    judges = sorted(
        {r["evaluation_model"] for r in csv.DictReader(io.StringIO((standard / TABLES[0]).read_text()))}
    )
    rubrics = ("novelty-judge", "rigor-judge")
    assert header(legacy.GENERATION_SCORES_PIVOT) == [
        *legacy.GENERATION_PIVOT_INDEX,
        *sorted(f"{t}_{j}" for t in rubrics for j in judges),
        "sum_scores",
        "generation_response_path",
    ]
    assert header(legacy.EVALUATION_MODEL_TEMPLATE_PIVOT) == [
        *legacy.MODEL_TEMPLATE_PIVOT_INDEX,
        *sorted(f"{j}_{t}" for t in rubrics for j in judges),
    ]
    parsed = (out / legacy.PARSED_SCORES).read_text().splitlines()
    assert len(parsed) == 1 + 36
    final = list(csv.DictReader(io.StringIO((out / legacy.FINAL_RESULTS).read_text())))
    assert {r["analysis_type"] for r in final} >= {"by_generation_vs_evaluation_model", "overall_statistics"}


UPSTREAM_RAW = Path(__file__).parents[3] / "shared" / "corpus" / "upstream-daydreaming" / "1_raw"


@pytest.mark.skipif(not UPSTREAM_RAW.is_dir(), reason="the upstream corpus is not beside this checkout")
def check_the_python_api(daemon: Daemon, written: Path, cohort_id: str) -> None:
    """``daydreamd.results.load`` gives the rows and tables ``results`` wrote, as records and frames."""
    results = load(daemon.config)
    assert results.cohort_id == cohort_id and len(results.rows) == 36
    assert {row.evaluation_template for row in results.rows} == {"novelty-judge", "rigor-judge"}
    with (written / "summary/breakdowns.csv").open(newline="") as f:
        on_disk = list(csv.DictReader(f))
    table = results.table("breakdowns")
    frame = results.frame("breakdowns")
    assert list(frame.columns) == list(table.columns) and len(frame) == len(on_disk)
    assert frame["n"].dtype.kind in "if" and frame["mean"].dtype.kind == "f"  # numbers, not text
    assert set(frame["evaluation_template"]) == {"novelty-judge", "rigor-judge"}
    assert [round(m, 4) for m in frame["mean"]] == [float(r["mean"]) for r in on_disk]  # what results wrote
    scores = results.frame()  # aggregated_scores
    assert scores["score"].dtype.kind in "if" and len(scores) == 36
    assert "costs" in results.tables and results.table("costs").rows
    best = results.top(3, by="novelty-judge")
    assert len(best) == 3 and best[0].mean >= best[-1].mean
    with pytest.raises(KeyError, match="breakdowns"):
        results.table("nope")
    with pytest.raises(ResultsError, match="not a valid cohort id"):
        load(daemon.config, cohort="../x")
    run_the_documented_examples(daemon)


def run_the_documented_examples(daemon: Daemon) -> None:
    """Every Python example of docs/python-api.md runs, in order, against this finished run."""
    text = (ROOT / "docs" / "python-api.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    assert len(blocks) >= 4
    namespace: dict[str, Any] = {}
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.chdir(daemon.root):
        for block in blocks:
            exec(compile(block, "docs/python-api.md", "exec"), namespace)
    printed = output.getvalue()
    assert "novelty-judge" in printed and "evaluations" in printed
    assert not namespace["best"].empty and set(namespace["pairs"]["kind"]) <= {"judges", "rubrics"}


@pytest.mark.skipif(not UPSTREAM_RAW.is_dir(), reason="the upstream corpus is not beside this checkout")
async def test_the_real_corpus_scores_on_its_own_scale(tmp_path: Path) -> None:
    """The real corpus, unchanged: both active judges score on 0-9, so perfect_score_paths.csv lists
    exactly the evaluations that scored 9 of 9, and a partial cohort says it is partial."""
    shutil.copytree(UPSTREAM_RAW, tmp_path / "data" / "1_raw")
    daemon = Daemon(tmp_path, fast_config(None, provider="mock"))
    try:
        await daemon.start()
        await daemon.approve("draft", template_id="creative-synthesis-v2")
        await daemon.approve("essay")
        await daemon.approve("evaluation")

        def settled(status: dict[str, Any] | None) -> bool:
            if status is None:
                return False
            drafts, evaluations = status["stages"]["draft"], status["stages"]["evaluation"]
            return drafts["done"] == 75 and evaluations["done"] + evaluations["failed"] == 4 * 75

        await daemon.wait_for(settled, deadline_s=120, what="75 drafts and their 300 evaluations")
        rows = (await daemon.get("/v1/generations", stage="evaluation", state="done", limit=5000))[
            "generations"
        ]
        assert await daemon.stop() == 0
    finally:
        daemon.close()
    nines = {(r["parent_gen_id"], r["template_id"], r["llm_model_id"]) for r in rows if r["score"] == 9.0}
    assert len(rows) == 300 and 0 < len(nines) < 300
    out = tmp_path / "results"
    done = await anyio.to_thread.run_sync(lambda: ctl(daemon, "results", "--out", str(out)))
    assert done.returncode == 0, done.stderr
    assert "PARTIAL: 300 of 2,100 evaluations done, 0 failed" in done.stdout
    with (out / "summary" / "perfect_score_paths.csv").open(newline="") as handle:
        perfect = list(csv.DictReader(handle))
    listed = {(r["essay_gen_id"], r["evaluation_template"], r["evaluation_model"]) for r in perfect}
    assert listed == nines
    assert {r["score"] for r in perfect} == {"9"}
    with (out / "parsing" / "aggregated_scores.csv").open(newline="") as handle:
        assert {r["score_max"] for r in csv.DictReader(handle)} == {"9"}


async def test_compare_before_and_after_a_rubric_edit_shows_exactly_that_rubrics_items_changed(
    tmp_path: Path,
) -> None:
    """A finished run; the novelty judge's template edited; its evaluations approved and run again.
    ``results --compare A B``: every novelty-judge item changed, every rigor-judge item the same
    generation (difference 0), nothing new or gone."""
    async with FakeLlm() as fake:
        daemon = Daemon(tmp_path, fast_config(fake.base_url))
        try:
            await daemon.start()
            for stage in ("draft", "essay", "evaluation"):
                await daemon.approve(stage)
            before = (await daemon.wait_stage("evaluation", done=36))["cohort_id"]
            template = daemon.raw / "templates" / "evaluation" / "novelty-judge.txt"
            template.write_text(template.read_text() + "\nBe strict about novelty.\n")
            edited = await daemon.wait_for(
                lambda s: s is not None and s["cohort_id"] not in (None, before),
                what="the cohort after the edit",
            )
            await daemon.approve("evaluation")
            await daemon.wait_stage("evaluation", done=36)
            after = edited["cohort_id"]
            assert await daemon.stop() == 0
        finally:
            daemon.close()
    out = tmp_path / "compared"
    result = await anyio.to_thread.run_sync(
        lambda: ctl(daemon, "results", "--compare", before, after, "--out", str(out), "--json")
    )
    assert result.returncode == 0, result.stderr
    summary = {
        (r["evaluation_template"], r["evaluation_model"]): r for r in json.loads(result.stdout)["summary"]
    }
    assert set(summary) == {("novelty-judge", "sonnet_4"), ("rigor-judge", "sonnet_4")}
    novelty, rigor = summary["novelty-judge", "sonnet_4"], summary["rigor-judge", "sonnet_4"]
    assert (novelty["changed"], novelty["same"], novelty["paired"]) == (18, 0, 18)
    assert (rigor["changed"], rigor["same"], rigor["mean_diff"]) == (0, 18, 0.0)
    assert novelty["new"] == novelty["gone"] == rigor["new"] == rigor["gone"] == 0
    with (out / "comparison" / "items.csv").open(newline="") as f:
        statuses = {(r["evaluation_template"], r["status"]) for r in csv.DictReader(f)}
    assert statuses == {("novelty-judge", "changed"), ("rigor-judge", "same")}
    everything = tmp_path / "all"
    result = await anyio.to_thread.run_sync(lambda: ctl(daemon, "results", "--all", "--out", str(everything)))
    assert result.returncode == 0, result.stderr
    with (everything / "parsing" / "aggregated_scores.csv").open(newline="") as f:
        names = {r["evaluation_template"] for r in csv.DictReader(f)}
    novelty = {n for n in names if n.startswith("novelty-judge@")}
    assert len(novelty) == 2 and "rigor-judge" in names and "novelty-judge" not in names  # never pooled


@pytest.mark.skipif(not UPSTREAM_RAW.is_dir(), reason="the upstream corpus is not beside this checkout")
async def test_compare_on_the_real_corpus_shows_exactly_the_edited_templates_items_changed(
    tmp_path: Path,
) -> None:
    """The real corpus through the fake server: 75 drafts, their essays and 300 evaluations (two
    rubrics, two judges); the novelty rubric's text edited and its evaluations run again. Compared,
    every novelty item changed and every style-coherence-v3 item is the same generation."""
    shutil.copytree(UPSTREAM_RAW, tmp_path / "data" / "1_raw")
    async with FakeLlm() as fake:
        daemon = Daemon(tmp_path, fast_config(fake.base_url))
        try:
            await daemon.start()
            await daemon.approve("draft", template_id="creative-synthesis-v2")
            await daemon.approve("essay")
            await daemon.approve("evaluation")

            def evaluated(status: dict[str, Any] | None, n: int) -> bool:
                """``n`` evaluations finished in the cohort in force and none running (those of the
                essays not approved stay queued)."""
                stage = (status or {}).get("stages", {}).get("evaluation", {})
                finished = stage.get("done", 0) + stage.get("failed", 0)
                return finished >= n and stage.get("running") == 0

            before = (
                await daemon.wait_for(lambda s: evaluated(s, 300), deadline_s=120, what="300 evaluations")
            )["cohort_id"]
            template = daemon.raw / "templates" / "evaluation" / "novelty.txt"
            template.write_text(template.read_text() + "\nAnswer with care.\n")
            after = (
                await daemon.wait_for(
                    lambda s: bool(s) and s["cohort_id"] not in (None, before), what="new cohort"
                )
            )["cohort_id"]
            sent = len(fake.requests)
            await daemon.approve("evaluation", template_id="novelty")
            await daemon.wait_for(  # the 150 novelty evaluations of the 75 essays, called and committed
                lambda s: len(fake.requests) >= sent + 150 and evaluated(s, 300),
                deadline_s=120,
                what="the novelty rubric again",
            )
            assert await daemon.stop() == 0
        finally:
            daemon.close()
    result = await anyio.to_thread.run_sync(
        lambda: ctl(daemon, "results", "--compare", before, after, "--out", str(tmp_path / "cmp"), "--json")
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["summary"]
    by_template: dict[str, Counter[str]] = {}
    for r in rows:
        counts = by_template.setdefault(r["evaluation_template"], Counter())
        counts.update({key: r[key] for key in ("changed", "same", "new", "gone")})
    assert by_template["novelty"] == Counter(changed=150)
    assert by_template["style-coherence-v3"] == Counter(same=150)
