"""Results from a run the real service finished against the fake LLM server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio.to_thread

from tests.fakellm import FakeLlm
from tests.integration.daemon import Daemon, fast_config

TABLES = (
    "parsing/aggregated_scores.csv",
    "summary/generation_scores.csv",
    "summary/final_results.csv",
    "summary/perfect_score_paths.csv",
    "analysis/judge_agreement.csv",
    "analysis/variance_analysis.csv",
)


def ctl(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daydreamd.cli.main", "--config", str(daemon.config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=daemon.root,
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
    report = await anyio.to_thread.run_sync(lambda: ctl(daemon, "report", "--out", str(tmp_path / "r.html")))
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "r.html").read_text()
    assert "<svg" in html and cohort_id in html
    assert not any(
        f'{attr}="http' in html or f"{attr}='http" in html for attr in ("src", "href")
    )  # nothing fetched
