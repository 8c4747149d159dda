"""Unattended operation: the real daemon rides out a provider outage, a full data disk and a locked
state database by itself, losing nothing and paying nothing twice, then resumes with no operator.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from daydreamd.cli.client import ServiceClient
from tests.fakellm import FakeLlm, FaultKind, RecordedRequest
from tests.integration.daemon import Daemon, fast_config

pytestmark = pytest.mark.slow

OUTAGE = "outage_failures = 3\noutage_probe_s = 0.2\noutage_probe_cap_s = 1.0\n"
LLM_GENERATIONS = 9 + 9 + 36  # the example: drafts, LLM essays (the copy essays make no call), evaluations


def troubles(status: dict[str, Any] | None) -> list[str]:
    return [t["what"] for t in (status or {}).get("pool", {}).get("troubles", [])]


def answered(fake: FakeLlm) -> Counter[str]:
    """Successful (paid) replies per prompt: every LLM generation exactly once means none paid twice."""
    return Counter(r.prompt for r in fake.requests if r.status == 200 and r.fault is None)


async def approve_all(daemon: Daemon) -> None:
    for stage in ("draft", "essay", "evaluation"):
        await daemon.approve(stage)


async def all_done(daemon: Daemon, deadline_s: float = 60.0) -> dict[str, Any]:
    def finished(status: dict[str, Any] | None) -> bool:
        if status is None:
            return False
        stages = status["stages"]
        return (stages["draft"]["done"], stages["essay"]["done"], stages["evaluation"]["done"]) == (9, 18, 36)

    return await daemon.wait_for(finished, deadline_s=deadline_s, what="the whole cohort done")


def no_failures(status: dict[str, Any]) -> bool:
    return all(counts["failed"] == 0 for counts in status["stages"].values())


async def test_a_provider_outage_parks_the_work_and_it_resumes_by_itself(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The provider answers 503 (and drops connections) for a while: nothing fails, the breaker
    probes, and when the provider is back every generation finishes, each paid once."""
    down = {"on": True}

    def outage(number: int, request: RecordedRequest) -> FaultKind | None:
        if not down["on"]:
            return None
        return FaultKind.DROP if number % 2 else FaultKind.UNAVAILABLE

    async with FakeLlm(fault_fn=outage) as fake:
        daemon = Daemon(tmp_path, fast_config(fake.base_url, extra=OUTAGE))
        daemons.append(daemon)
        await daemon.start()
        await approve_all(daemon)
        status = await daemon.wait_for(lambda s: "provider_down" in troubles(s), what="the provider down")
        (trouble,) = status["pool"]["troubles"]
        assert trouble["since"] and trouble["next_try_in_s"] is not None
        probes = len(fake.requests)
        await daemon.wait_for(lambda s: len(fake.requests) >= probes + 2, what="two probes while down")
        status = await daemon.status()
        assert status is not None and no_failures(status), status["stages"]
        down["on"] = False
        status = await all_done(daemon)
        assert no_failures(status) and troubles(status) == []
        paid = answered(fake)
        assert len(paid) == LLM_GENERATIONS and set(paid.values()) == {1}


@pytest.fixture(name="small_disk")
def _small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs for ``data/gens`` (needs root and mount; skipped elsewhere)."""
    gens = tmp_path / "data" / "gens"
    gens.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(gens)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield gens
    finally:
        subprocess.run(["umount", "-l", str(gens)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; return the filler file."""
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (65536, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


async def test_a_full_data_disk_holds_paid_replies_until_space_returns(
    tmp_path: Path, small_disk: Path, daemons: list[Daemon]
) -> None:
    """With data/gens full, replies that arrive are kept in memory, nothing new is claimed, status
    says so; when space returns every generation finishes and no reply was paid for twice. With 2
    slots, at most 2 x 2 generations are between start and commit, so at most 4 of the 9 drafts
    are called while nothing can be saved."""
    filler = fill(small_disk)
    async with FakeLlm() as fake:
        config = fast_config(fake.base_url).replace(
            "concurrency = 8\nmodel_concurrency = 4\n", "concurrency = 2\nmodel_concurrency = 2\n"
        )
        assert "concurrency = 2\n" in config
        daemon = Daemon(tmp_path, config)
        daemons.append(daemon)
        await daemon.start()
        await approve_all(daemon)
        status = await daemon.wait_for(
            lambda s: "data_dir_unwritable" in troubles(s), what="the data dir reported unwritable"
        )
        (trouble,) = status["pool"]["troubles"]
        assert "ENOSPC" in trouble["message"] and trouble["waiting"] >= 1
        held = len(fake.requests)
        assert held <= 4, f"it went on claiming and calling while it could not save: {held} calls"
        await anyio.to_thread.run_sync(filler.unlink)
        status = await all_done(daemon)
        assert no_failures(status) and troubles(status) == []
        paid = answered(fake)
        assert len(paid) == LLM_GENERATIONS and set(paid.values()) == {1}


async def test_a_locked_state_database_delays_commits_without_stranding_work(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Another process holds the state database's write lock for longer than the busy timeout:
    completions wait and retry (status says so), nothing is left running, everything finishes."""
    async with FakeLlm(latency_ms=(1000, 1000)) as fake:
        daemon = Daemon(tmp_path, fast_config(fake.base_url))
        daemons.append(daemon)
        await daemon.start()
        locker = sqlite3.connect(daemon.root / "state" / "dd.sqlite", timeout=30, isolation_level=None)
        try:
            await daemon.approve("draft")
            await daemon.wait_for(
                lambda s: bool(s and s["stages"]["draft"]["running"]), what="drafts running"
            )
            locker.execute("BEGIN EXCLUSIVE")
            status = await daemon.wait_for(
                lambda s: "state_db_unwritable" in troubles(s),
                deadline_s=40,
                what="the locked state reported",
            )
            assert "locked" in status["pool"]["troubles"][0]["message"]
        finally:
            locker.execute("ROLLBACK") if locker.in_transaction else None
            locker.close()
        status = await daemon.wait_for(
            lambda s: s is not None and s["stages"]["draft"]["done"] == 9 and not troubles(s),
            deadline_s=60,
            what="the drafts done after the lock is gone",
        )
        assert no_failures(status) and status["stages"]["draft"]["running"] == 0
        paid = answered(fake)
        assert len(paid) == 9 and set(paid.values()) == {1}


async def test_a_revoke_while_the_state_database_is_locked_catches_the_armed_generations(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Four drafts at the provider, two armed behind them, three queued; another process locks the
    state database past its busy timeout and a revoke comes: the armed two cannot be given back
    until the lock is gone, and the revoke waits for them instead of leaving them running (to be
    sent back later by the reconciler, and run though revoked). It revokes all five."""
    async with FakeLlm(latency_ms=(4000, 4000)) as fake:
        daemon = Daemon(tmp_path, fast_config(fake.base_url))
        daemons.append(daemon)
        await daemon.start()
        await daemon.approve("draft")
        await daemon.wait_for(
            lambda s: bool(s) and s["stages"]["draft"]["running"] == 6 and fake.in_progress == 4,
            what="four drafts at the provider and two armed",
        )
        locker = sqlite3.connect(daemon.root / "state" / "dd.sqlite", timeout=30, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")
            async with anyio.create_task_group() as tasks:
                result: dict[str, Any] = {}

                patient = ServiceClient(daemon.socket, timeout=60.0)  # the revoke waits out the lock

                async def revoke() -> None:
                    body = {"stage": "draft", "requested_by": "t"}
                    result.update(await anyio.to_thread.run_sync(patient.post, "/v1/revocations", body))

                tasks.start_soon(revoke)
                await daemon.wait_for(
                    lambda s: "state_db_unwritable" in troubles(s),
                    deadline_s=40,
                    what="the give-back waiting",
                )
                locker.execute("ROLLBACK")
        finally:
            locker.close()
        assert result["revoked"] == 5
        status = await daemon.wait_for(
            lambda s: bool(s) and s["stages"]["draft"]["done"] == 4 and s["stages"]["draft"]["running"] == 0,
            deadline_s=30,
            what="the four calls in flight done",
        )
        assert status["stages"]["draft"]["pending"] == 5 and len(fake.requests) == 4
        assert await daemon.stop() == 0
