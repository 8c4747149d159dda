"""Startup hygiene, with the real process: what a restart keeps, and a run state it cannot read.

- The requests-per-minute windows survive restarts (clean or kill -9): quick restarts mid-run
  never send a second minute's budget to a server that counts by the minute.
- A pause (of everything, or of one model) survives restarts until ``resume``.
- An empty, random or truncated state file stops the service with exit code 2 and one message
  naming the file and the ways out, and is left as it was; ``--new-state`` sets it aside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from tests.core.test_ratelimit import max_in_any_window
from tests.fakellm import FakeLlm
from tests.integration.daemon import API_KEY, Daemon, fast_config, holds, make

WRITER = "gemini_25_flash"  # writes drafts and essays
JUDGE = "sonnet_4"
JUDGE_MODEL = "anthropic/claude-sonnet-4"


def stage(status: dict[str, Any] | None, name: str) -> dict[str, int]:
    assert status is not None
    counts: dict[str, int] = status["stages"][name]
    return counts


# -- rate windows --------------------------------------------------------------------------------

RPM = 10


def waiting(status: dict[str, Any] | None) -> int:
    """Approved generations not started: with the budget spent, work waiting for the window (the
    scheduler starts nothing that cannot send at once, so none of it holds a slot)."""
    return stage(status, "draft")["queued"] + stage(status, "essay")["queued"]


async def test_quick_restarts_mid_run_never_exceed_the_rpm_limit(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The server allows 10 requests per minute. The first process spends them; four quick
    restarts (clean, kill -9, clean, kill -9) start with that minute's requests in their window,
    so none sends another one: no 429, never more than 10 in any 60 s of the server's log."""
    async with FakeLlm(rpm=RPM, latency_ms=20) as fake:
        config = fast_config(fake.base_url).replace(
            "requests_per_minute = 6000", f"requests_per_minute = {RPM}"
        )
        daemon = make(daemons, tmp_path, config.replace("grace_s = 5.0", "grace_s = 0.5"))
        await daemon.start()
        await daemon.approve("draft")
        await daemon.approve("essay")
        # 18 calls to make (9 drafts, 9 essays); the first 10 spend the minute, the next wait.
        await daemon.wait_for(
            lambda s: fake.request_count == RPM and waiting(s) > 0, what="the first minute's budget spent"
        )

        def held_or_refused(status: dict[str, Any] | None) -> bool:
            if fake.rate_limited_count:  # (what happened before: the restart sent at once, and got 429s)
                return True
            if status is None or waiting(status) == 0:
                return False
            return bool(status["models"].get(WRITER, {}).get("requests_last_minute", 0) >= RPM)

        for how in ("clean", "kill -9", "clean", "kill -9"):
            if how == "clean":
                assert await daemon.stop() == 0
            else:
                daemon.kill()
            await daemon.start()
            await daemon.wait_for(
                held_or_refused, what=f"after a {how} restart, work waiting for a full window"
            )
            assert fake.rate_limited_count == 0, f"after a {how} restart: {fake.status_counts}"

        assert fake.request_count == RPM and dict(fake.status_counts) == {200: RPM}
        assert max_in_any_window([r.at for r in fake.requests], 60.0) <= RPM
        status = await daemon.status()
        assert stage(status, "draft")["failed"] == stage(status, "essay")["failed"] == 0
        assert await daemon.stop() == 0


# -- pauses --------------------------------------------------------------------------------------


async def test_a_pause_survives_restarts_until_resume(tmp_path: Path, daemons: list[Daemon]) -> None:
    """Pause everything, kill -9, restart, approve: nothing starts until resume. Pause one model,
    restart cleanly: the other model's work runs, the paused one's waits until resume."""
    async with FakeLlm() as fake:
        daemon = make(daemons, tmp_path, fast_config(fake.base_url))
        await daemon.start()
        assert (await daemon.post("/v1/pause", {}))["paused"] is True
        daemon.kill()
        status = await daemon.start()
        assert status["pool"]["paused"] is True
        assert "still_paused" in (tmp_path / "state" / "dd.log").read_text()
        assert (await daemon.approve("draft"))["matched"] == 9

        def nothing_started(s: dict[str, Any] | None) -> bool:
            return s is not None and stage(s, "draft")["queued"] == 9 and fake.request_count == 0

        await holds(
            daemon, nothing_started, for_s=1.5, what="the pause (the pool looks for work every second)"
        )
        assert (await daemon.post("/v1/resume", {}))["paused"] is False
        await daemon.wait_stage("draft", done=9)

        await daemon.post("/v1/pause", {"llm_model_id": JUDGE})
        assert await daemon.stop() == 0
        status = await daemon.start()
        assert (status["pool"]["paused"], status["pool"]["paused_models"]) == (False, [JUDGE])
        await daemon.approve("essay")
        await daemon.approve("evaluation")
        await daemon.wait_stage("essay", done=18)  # the writer runs; every evaluation became ready meanwhile
        status = await daemon.status()
        assert stage(status, "evaluation")["queued"] == 36 and stage(status, "evaluation")["running"] == 0
        assert not [r for r in fake.requests if r.model == JUDGE_MODEL]
        assert (await daemon.post("/v1/resume", {"llm_model_id": JUDGE}))["paused_models"] == []
        await daemon.wait_stage("evaluation", done=36)
        assert await daemon.stop() == 0


# -- an unreadable run state ---------------------------------------------------------------------


async def _finished_state(daemon: Daemon) -> None:
    """A real state: drafts run and the service stopped cleanly (its WAL folded into the file)."""
    await daemon.start()
    await daemon.approve("draft")
    await daemon.wait_stage("draft", done=9)
    assert await daemon.stop() == 0


def _run(daemon: Daemon, *args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``daydreamd`` to its exit; one still running after ``timeout_s`` is killed and fails the test."""
    env = {**os.environ, "DD_TEST_KEY": API_KEY}
    command = [sys.executable, "-m", "daydreamd", "--config", str(daemon.config), *args]
    try:
        return subprocess.run(
            command, cwd=daemon.root, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"daydreamd did not exit on an unreadable state; it ran on:\n{exc.stdout!r}"
        ) from None


def _events(log_file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("damage", ["empty", "random", "truncated"])
async def test_an_unreadable_state_is_a_clear_error_and_new_state_sets_it_aside(
    tmp_path: Path, daemons: list[Daemon], damage: str
) -> None:
    daemon = make(daemons, tmp_path, fast_config(None, provider="mock"))
    state = tmp_path / "state" / "dd.sqlite"
    if damage == "truncated":
        await _finished_state(daemon)
        assert not state.with_name("dd.sqlite-wal").exists()
        os.truncate(state, state.stat().st_size // 2)
    else:
        state.parent.mkdir(parents=True)
        state.write_bytes(b"" if damage == "empty" else os.urandom(16384))
    before = state.read_bytes()

    ran = await anyio.to_thread.run_sync(_run, daemon)
    assert ran.returncode == 2, ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    (message,) = lines
    assert message.startswith(f"daydreamd: the run state {state} is unreadable: "), message
    for remedy in ("backup", "move the file away", "--new-state"):
        assert remedy in message
    assert "Traceback" not in ran.stderr + ran.stdout
    failed = [e for e in _events(tmp_path / "state" / "dd.log") if e["event"] == "startup_failed"]
    assert [e["error"] for e in failed] == [message.removeprefix("daydreamd: ")]
    assert state.read_bytes() == before  # never reset, never repaired behind the user's back
    assert not list(state.parent.glob("*unreadable*"))

    status = await daemon.start("--new-state")
    assert stage(status, "draft")["pending"] == 9  # a new, empty state on the same experiment
    (aside,) = state.parent.glob("dd.sqlite.unreadable-*")
    assert aside.read_bytes() == before
    (moved,) = [e for e in _events(tmp_path / "state" / "dd.log") if e["event"] == "state_set_aside"]
    assert moved["moved_to"] == str(aside)
    assert await daemon.stop() == 0


# -- cohort files that cannot be written -----------------------------------------------------------


async def test_cohort_files_that_cannot_be_written_hold_the_cohort_back_until_they_can(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """``data/cohorts`` is a file, so the cohort's files cannot be written (they are written while
    the membership syncs): the rebuild fails, naming the path, and is tried again with nothing in
    force; once the file is gone the next try puts the cohort in force with its files, by itself."""
    async with FakeLlm() as fake:
        daemon = make(daemons, tmp_path, fast_config(fake.base_url))
        blocker = daemon.data / "cohorts"
        blocker.write_text("not a folder\n")
        daemon.spawn()

        def failed_on_files(status: dict[str, Any] | None) -> bool:
            return status is not None and "rebuild_failed" in daemon.log_tail(400)

        status = await daemon.wait_for(failed_on_files, what="the rebuild failing on data/cohorts")
        failure = next(line for line in daemon.log_tail(400).splitlines() if "rebuild_failed" in line)
        assert "cohorts" in failure
        assert status["cohort_id"] is None
        await anyio.to_thread.run_sync(blocker.unlink)
        status = await daemon.wait_for(
            lambda s: s is not None and s["cohort_id"] is not None and not s.get("cohort_progress"),
            what="the cohort in force after the retry",
        )
        assert stage(status, "draft")["pending"] == 9
        assert (blocker / status["cohort_id"] / "membership.csv").is_file()
        assert await daemon.stop() == 0
