"""The scheduler, with the real process: every model busy up to its own limits, and work read
ahead of need that stays exact under revoke, budgets and kill -9.

The example experiment writes its drafts with three models here (gemini, deepseek, gpt-4o
mini: 9 drafts each); the pool has 4 slots.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from tests.fakellm import FakeLlm
from tests.integration.daemon import Daemon, ctl, fast_config, holds
from tests.integration.test_operations import GatedFake

SLOW = "gemini_25_flash"
OTHERS = ("deepseek_r1", "gpt_4o_mini")
MODEL_STRINGS = {
    "gemini_25_flash": "google/gemini-2.5-flash",
    "deepseek_r1": "deepseek/deepseek-r1",
    "gpt_4o_mini": "openai/gpt-4o-mini",
}
DRAFTS_PER_MODEL = 9


def make(daemons: list[Daemon], root: Path, config: str) -> Daemon:
    """A daemon whose drafts are written by three models."""
    daemon = Daemon(root, config.replace("concurrency = 8\nmodel_concurrency = 4\n", "concurrency = 4\n"))
    models = daemon.raw / "llm_models.csv"
    lines = models.read_text().splitlines()
    models.write_text(
        "\n".join(
            line.replace(",false,false", ",true,false") if line.split(",")[0] in OTHERS else line
            for line in lines
        )
        + "\n"
    )
    daemons.append(daemon)
    return daemon


def drafts(status: dict[str, Any] | None) -> dict[str, int]:
    assert status is not None
    counts: dict[str, int] = status["stages"]["draft"]
    return counts


def requests_by_model(fake: FakeLlm) -> Counter[str]:
    by_string = {v: k for k, v in MODEL_STRINGS.items()}
    return Counter(by_string.get(r.model or "", "?") for r in fake.requests)


async def lift_limit(daemon: Daemon, model: str) -> None:
    done = await anyio.to_thread.run_sync(lambda: ctl(daemon, "limits", "--model", model, "--rpm", "6000"))
    assert done.returncode == 0, done.stderr


async def test_a_rate_limited_model_never_starves_the_others(tmp_path: Path, daemons: list[Daemon]) -> None:
    """gemini may send 2 requests a minute, the others are unlimited, the pool has 4 slots. The
    other models finish all their drafts at once while gemini's wait for its window (holding no
    slot); gemini never sends a third request in the minute."""
    async with FakeLlm(latency_ms=20) as fake:
        extra = f"[pool.models.{SLOW}]\nrequests_per_minute = 2\n"
        daemon = make(daemons, tmp_path, fast_config(fake.base_url, extra=extra))
        await daemon.start()
        approved = await daemon.approve("draft")
        assert approved["matched"] == 3 * DRAFTS_PER_MODEL

        def others_done(status: dict[str, Any] | None) -> bool:
            return drafts(status)["done"] == 2 * DRAFTS_PER_MODEL + 2

        status = await daemon.wait_for(others_done, deadline_s=20, what="the unlimited models' drafts")
        assert requests_by_model(fake) == {SLOW: 2, **{m: DRAFTS_PER_MODEL for m in OTHERS}}
        assert drafts(status)["running"] == 0  # gemini's waiting work holds no slot
        assert status["models"][SLOW]["requests_last_minute"] == 2
        await holds(
            daemon,
            lambda s: drafts(s)["queued"] == DRAFTS_PER_MODEL - 2 and drafts(s)["running"] == 0,
            for_s=1.0,
            what="gemini's drafts waiting, queued",
        )
        assert requests_by_model(fake)[SLOW] == 2
        # Lifting the limit live lets the rest go at once.
        await lift_limit(daemon, SLOW)
        await daemon.wait_stage("draft", done=3 * DRAFTS_PER_MODEL)
        assert fake.request_count == 3 * DRAFTS_PER_MODEL
        assert await daemon.stop() == 0


async def four_calls_held_and_more_armed(daemons: list[Daemon], root: Path, fake: GatedFake) -> Daemon:
    """A daemon whose 27 drafts are approved while ``fake`` holds every call: its 4 slots hold 4
    calls at the server, and more drafts are armed (``running``, waiting for a slot)."""
    daemon = make(daemons, root, fast_config(fake.base_url))
    await daemon.start()
    assert (await daemon.approve("draft"))["matched"] == 27
    await daemon.wait_for(
        lambda s: fake.held == 4 and drafts(s)["running"] > 4, what="4 calls held and more armed"
    )
    return daemon


async def test_work_read_ahead_is_revoked_exactly(tmp_path: Path, daemons: list[Daemon]) -> None:
    """With every slot held by a call, the rest of the approved drafts wait: a few armed (started
    and prepared ahead of a slot), the others in memory; revoke sends every one of them back to
    pending, armed ones included (none starts later), and lets the four calls finish."""
    fake = GatedFake(hold=lambda _: True, latency_ms=10)
    async with fake:
        daemon = await four_calls_held_and_more_armed(daemons, tmp_path, fake)
        revoked = await daemon.post("/v1/revocations", {"stage": "draft", "requested_by": "test"})
        assert revoked["revoked"] == 23
        fake.gate.set()
        await daemon.wait_for(
            lambda s: drafts(s)["done"] == 4 and drafts(s)["pending"] == 23 and drafts(s)["queued"] == 0,
            what="the four calls done, the rest pending",
        )
        await holds(daemon, lambda s: drafts(s)["running"] == 0, for_s=0.5, what="nothing more starting")
        assert fake.request_count == 4
        assert await daemon.stop() == 0


async def test_a_budget_is_never_passed_by_a_first_burst_or_by_work_read_ahead(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """$0.10 a call, a budget of $0.35, 4 slots and 27 drafts read ahead: the first call runs alone
    (no cost known yet), then calls start only while spent + (in flight + 1) x $0.10 stays within
    the budget: exactly 3 calls, $0.30, and the other 24 stay queued."""
    fake = GatedFake(cost_per_call=0.10, latency_ms=10)
    async with fake:
        daemon = make(daemons, tmp_path, fast_config(fake.base_url))
        await daemon.start()
        approval = await daemon.post(
            "/v1/approvals", {"stage": "draft", "requested_by": "test", "budget_usd": 0.35}
        )
        key = str(approval["approval_id"])
        status = await daemon.wait_for(
            lambda s: s is not None and s["pool"]["budgets"][key]["exhausted"] and drafts(s)["done"] == 3,
            what="the budget reached",
        )
        await holds(
            daemon,
            lambda s: drafts(s)["done"] == 3 and drafts(s)["queued"] == 24 and drafts(s)["running"] == 0,
            for_s=0.5,
            what="the rest staying queued",
        )
        assert fake.request_count == 3
        assert status["pool"]["budgets"][key]["spent_usd"] == 0.3
        assert await daemon.stop() == 0


async def test_kill_9_with_work_read_ahead_loses_nothing_and_pays_nothing_twice(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """gemini may send 3 a minute: 3 drafts run, 6 wait in memory. A clean stop is quick (no call
    waits for the window). kill -9, restart: the 6 are
    queued (none stuck running), the restored window still holds them; lifting the limit runs
    exactly those 6: 9 requests in all, 9 drafts done."""
    async with FakeLlm(latency_ms=10) as fake:
        extra = "requests_per_minute = 3\n"
        config = fast_config(fake.base_url).replace("requests_per_minute = 6000\n", extra)
        daemon = Daemon(tmp_path, config)
        daemons.append(daemon)
        await daemon.start()
        await daemon.approve("draft")
        await daemon.wait_for(
            lambda s: drafts(s)["done"] == 3 and drafts(s)["queued"] == 6, what="3 done, 6 waiting"
        )
        # Nothing waits for the window holding a call, so a clean stop has nothing to drain.
        began = time.monotonic()
        assert await daemon.stop() == 0
        assert time.monotonic() - began < 2.5  # (the grace period is 5 s)
        await daemon.start()
        daemon.kill()
        status = await daemon.start()
        await holds(
            daemon,
            lambda s: drafts(s)["queued"] == 6 and drafts(s)["running"] == 0 and drafts(s)["done"] == 3,
            for_s=1.0,
            what="the read-ahead work queued after kill -9",
        )
        assert status["models"][SLOW]["requests_per_minute"] == 3
        await lift_limit(daemon, SLOW)
        await daemon.wait_stage("draft", done=9)
        assert fake.request_count == 9
        assert len({r.prompt for r in fake.requests}) == 9
        assert await daemon.stop() == 0


async def test_kill_9_with_armed_work_sends_nothing_twice(tmp_path: Path, daemons: list[Daemon]) -> None:
    """Four calls held at the server and more drafts armed (started and prepared, waiting for a
    slot, so `running` in the run state): the armed ones have sent nothing. kill -9, restart with
    the server answering: every draft ends done; the four calls cut by the kill are sent again
    (their first never reached the service), every other draft is sent exactly once."""
    fake = GatedFake(hold=lambda _: True, latency_ms=10)
    async with fake:
        daemon = await four_calls_held_and_more_armed(daemons, tmp_path, fake)
        daemon.kill()
        cut = Counter((r.model, r.prompt) for r in fake.requests)
        assert len(cut) == 4 and set(cut.values()) == {1}  # the armed drafts sent nothing
        fake.gate.set()
        await daemon.start()
        status = await daemon.wait_stage("draft", done=27)
        assert drafts(status)["running"] == 0 and drafts(status)["failed"] == 0
        sent = Counter((r.model, r.prompt) for r in fake.requests)
        assert len(sent) == 27
        assert {key for key, n in sent.items() if n > 1} == set(cut)
        assert set(sent.values()) == {1, 2}
        assert await daemon.stop() == 0
