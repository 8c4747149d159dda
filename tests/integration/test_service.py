"""daydreamd as a real process: real SQLite, real socket, real HTTP to the fake LLM server."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio.to_thread

from tests.fakellm import FakeLlm, FaultKind
from tests.integration.daemon import API_KEY, Daemon, fast_config, make


def gens(daemon: Daemon, stage: str, name: str) -> list[Path]:
    return sorted((daemon.data / "gens" / stage).glob(f"*/{name}"))


async def test_whole_loop_runs_only_what_is_approved(
    tmp_path: Path, fake: FakeLlm, daemons: list[Daemon]
) -> None:
    """No call before approval; drafts, essays, evaluations each run once approved, with their files."""
    daemon = make(daemons, tmp_path, fast_config(fake.base_url))
    status = await daemon.start()
    assert status["stages"]["draft"]["pending"] == 9
    assert status["cohort_id"].startswith("cohort_")
    await daemon.approve("essay")  # essays wait for their drafts: approving them starts nothing
    await daemon.wait_for(
        lambda s: s is not None and s["stages"]["essay"]["queued"] == 18, what="essays queued"
    )
    assert fake.request_count == 0

    assert (await daemon.approve("draft"))["matched"] == 9
    await daemon.wait_stage("essay", done=18)
    status = await daemon.wait_stage("draft", done=9)
    assert status["stages"]["evaluation"]["pending"] == 36
    assert fake.request_count == 9 + 9  # drafts and the llm essays; copy essays call nothing

    await daemon.approve("evaluation")
    await daemon.wait_stage("evaluation", done=36)
    assert fake.request_count == 54
    assert all(r.headers.get("Authorization") == f"Bearer {API_KEY}" for r in fake.requests)
    assert len(gens(daemon, "draft", "parsed.txt")) == 9
    assert len(gens(daemon, "essay", "parsed.txt")) == 18
    assert len(gens(daemon, "essay", "raw.txt")) == 9
    scores = [p.read_text() for p in gens(daemon, "evaluation", "parsed.txt")]
    assert len(scores) == 36 and all(float(s) >= 0 for s in scores)
    assert (daemon.data / "cohorts" / status["cohort_id"] / "membership.csv").exists()
    rows = (await daemon.get("/v1/generations", stage="evaluation", state="done", limit=100))["generations"]
    recorded = {row["gen_id"]: row["score"] for row in rows}
    on_disk = {p.parent.name: float(p.read_text()) for p in gens(daemon, "evaluation", "parsed.txt")}
    assert recorded == on_disk  # scores are in the run state, equal to the files
    for path in daemon.data.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    assert API_KEY not in (daemon.root / "state" / "dd.log").read_text()
    assert await daemon.stop() == 0


async def test_edits_rebuild_and_bad_input_keeps_the_service_up(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A template edit re-pends exactly its generations; a broken CSV is reported and fixed live."""
    daemon = make(daemons, tmp_path, fast_config(None, provider="mock"))
    await daemon.start()
    for stage in ("draft", "essay", "evaluation"):
        await daemon.approve(stage)
    before = await daemon.wait_stage("evaluation", done=36)

    template = daemon.raw / "templates" / "evaluation" / "rigor-judge.txt"
    template.write_text(template.read_text() + "\nBe brief.\n")
    after = await daemon.wait_for(
        lambda s: s is not None and s["cohort_id"] != before["cohort_id"], what="the edited cohort"
    )
    assert after["stages"]["evaluation"] == {
        "pending": 18,
        "queued": 0,
        "running": 0,
        "done": 18,
        "failed": 0,
        "retired": 18,
    }
    assert after["stages"]["draft"]["done"] == 9 and after["stages"]["essay"]["done"] == 18

    models = daemon.raw / "llm_models.csv"
    good = models.read_text()
    models.write_text(good.replace("true", "maybe", 1))
    broken = await daemon.wait_for(lambda s: s is not None and bool(_errors(s)), what="the error in status")
    assert broken["cohort_id"] == after["cohort_id"]
    (error,) = _errors(broken)
    assert error["file"] == "1_raw/llm_models.csv" and error["line"] == 2 and "maybe" in error["message"]

    models.write_text(good)
    fixed = await daemon.wait_for(lambda s: s is not None and not _errors(s), what="the error to clear")
    assert fixed["cohort_id"] == after["cohort_id"]
    assert await daemon.stop(signal.SIGINT) == 0


def _errors(status: dict) -> list[dict]:
    return [e for e in status["errors"] if e["level"] == "error"]


async def test_kill_9_loses_nothing_and_pays_nothing_twice(tmp_path: Path, daemons: list[Daemon]) -> None:
    """kill -9 mid-run, restart: all approved work finishes; no saved reply is paid for again."""
    async with FakeLlm(latency_ms=(50, 400), seed=3) as fake:
        config = fast_config(fake.base_url)
        daemon = make(daemons, tmp_path, config)
        await daemon.start()
        for stage in ("draft", "essay", "evaluation"):
            await daemon.approve(stage)
        await daemon.wait_for(
            lambda s: s is not None and s["stages"]["essay"]["done"] >= 4 and s["in_flight"] > 0,
            what="a run in full swing",
        )
        daemon.kill()
        saved = {
            p.parent.name
            for stage in ("draft", "essay", "evaluation")
            for p in gens(daemon, stage, "raw.txt")
        }
        prompts_before = Counter(r.prompt for r in fake.requests)

        restarted = make(daemons, tmp_path, config)
        await restarted.start()
        await restarted.wait_stage("evaluation", done=36, deadline_s=60)
        final = await restarted.wait_stage("draft", done=9)
        assert final["stages"]["essay"]["done"] == 18

        counts = Counter(r.prompt for r in fake.requests)
        for stage in ("draft", "essay", "evaluation"):
            for prompt_file in gens(restarted, stage, "prompt.txt"):
                gen_id = prompt_file.parent.name
                if gen_id in saved:  # its reply was on disk when the process died
                    assert counts[prompt_file.read_text()] == prompts_before[prompt_file.read_text()] == 1, (
                        gen_id
                    )
        assert not list(restarted.data.glob("gens/*/*/raw.*.txt")), "a saved reply was replaced"
        assert not list(restarted.data.rglob(".*.tmp")), "a half-written file was left behind"
        assert await restarted.stop() == 0


async def test_faults_slow_down_but_never_stop_the_service(tmp_path: Path, daemons: list[Daemon]) -> None:
    """429 storms, 5xx bursts and a quota error: every generation ends done or failed with its kind."""
    rates = {FaultKind.RATE_LIMIT: 0.3, FaultKind.SERVER_ERROR: 0.15, FaultKind.BAD_GATEWAY: 0.1}
    async with FakeLlm(fault_rates=rates, seed=7) as fake:
        fake.script(FaultKind.QUOTA, times=1)
        extra = "quota_park_s = 0.5\n"
        daemon = make(daemons, tmp_path, fast_config(fake.base_url, extra=extra))
        await daemon.start()
        await daemon.approve("draft")
        status = await daemon.wait_for(
            lambda s: (
                s is not None
                and s["stages"]["draft"]["done"] + s["stages"]["draft"]["failed"] == 9
                and s["stages"]["draft"]["running"] == 0
            ),
            deadline_s=60,
            what="every draft to end",
        )
        failed = (await daemon.get("/v1/generations", stage="draft", state="failed"))["generations"]
        kinds = Counter(row["error_kind"] for row in failed)
        assert kinds["quota"] == 1, kinds
        assert set(kinds) <= {"quota", "rate_limit", "transient"}
        assert status["stages"]["draft"]["done"] >= 5
        assert sum(1 for r in fake.requests if r.status == 429) > 0
        errors = (await daemon.status() or {})["recent_errors"]
        assert errors["rate_limit"] > 0 and errors["transient"] > 0 and errors["quota"] == 1
        assert await daemon.stop() == 0


async def test_one_instance_per_state_and_a_clean_socket(tmp_path: Path, daemons: list[Daemon]) -> None:
    """A second daemon on the same state refuses clearly; the socket is 0660 and curl can read status."""
    daemon = make(daemons, tmp_path, fast_config(None, provider="mock"))
    await daemon.start()
    assert stat.S_IMODE(daemon.socket.stat().st_mode) == 0o660
    second = await anyio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "daydreamd", "--config", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env={**os.environ, "DD_TEST_KEY": API_KEY},
        )
    )
    assert second.returncode == 2
    assert "already running" in second.stderr and str(daemon.root / "state" / "dd.sqlite") in second.stderr
    if shutil.which("curl"):
        curl = await anyio.to_thread.run_sync(
            lambda: subprocess.run(
                ["curl", "-sf", "--unix-socket", str(daemon.socket), "http://daydreamd/v1/status"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
        )
        out = curl.stdout
        assert '"cohort_id"' in out and '"stages"' in out and '"errors"' in out
    assert (await daemon.status()) is not None  # the first instance still serves
    assert await daemon.stop() == 0
    assert not daemon.socket.exists()
