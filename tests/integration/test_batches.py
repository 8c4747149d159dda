"""Batch mode with the real process: evaluations sent through the fake server's Batch API.

The example experiment with 28 replicates per evaluation has 1,008 evaluations (18 essays x 2
judges' templates x 28); drafts and essays run online first. Batches of at most 400 requests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from tests.fakellm import FakeLlm
from tests.integration.daemon import API_KEY, Daemon, ctl, fast_config, make

REPLICATES = 28
EVALUATIONS = 18 * 2 * REPLICATES
BATCH = (
    '[endpoints.oai]\nkind = "openai"\nbase_url = "{url}"\napi_key_env = "DD_TEST_KEY"\nbatch = true\n'
    "batch_discount = 0.5\n"
    '[models.sonnet_4]\nendpoints = ["oai"]\n'
    "[batch]\ngather_s = 0.3\npoll_s = 0.2\nmax_requests = 400\n"
    "[prices.sonnet_4]\ninput_usd_per_mtok = 3.0\noutput_usd_per_mtok = 15.0\n"
)


def batch_daemon(daemons: list[Daemon], tmp_path: Path, fake: FakeLlm, *, extra: str = "") -> Daemon:
    daemon = make(
        daemons, tmp_path, fast_config(fake.base_url, extra=BATCH.format(url=fake.base_url) + extra)
    )
    (daemon.raw / "replication_config.csv").write_text(
        f"stage,replicates\ndraft,1\nessay,1\nevaluation,{REPLICATES}\n"
    )
    return daemon


async def essays_done(daemon: Daemon) -> None:
    """Drafts and essays, online."""
    await daemon.approve("draft")
    await daemon.wait_stage("draft", done=9)
    await daemon.approve("essay")
    await daemon.wait_stage("essay", done=18)


def online_evaluation_calls(fake: FakeLlm) -> int:
    return sum(1 for r in fake.requests if "SCORE" in r.prompt or "score" in r.prompt.lower())


def batches(status: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((status or {}).get("batches") or [])


async def test_a_thousand_evaluations_in_batches_survive_kill_9_and_are_each_submitted_once(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """kill -9 while batches are being polled: after the restart every batch is found where it
    stood (none formed again, none submitted again), and every evaluation ends done, with its files,
    its attempt at the batch price, and no online call."""
    async with FakeLlm(api_key=API_KEY, batch_delay_s=2.0) as fake:
        daemon = batch_daemon(daemons, tmp_path, fake)
        await daemon.start()
        await essays_done(daemon)
        online_before = len(fake.requests)
        approved = await daemon.approve("evaluation", batch=True)
        assert (approved["matched"], approved["batch_models"]) == (EVALUATIONS, ["sonnet_4"])

        def polling(status: dict[str, Any] | None) -> bool:
            return any(b["state"] == "submitted" for b in batches(status))

        await daemon.wait_for(polling, what="a batch submitted and being polled")
        daemon.kill()
        assert fake.batch_api.batches, "the provider has batches"
        await daemon.start()
        status = await daemon.wait_stage("evaluation", done=EVALUATIONS, deadline_s=90)
        submitted = fake.batch_api.submissions
        assert len(submitted) == EVALUATIONS
        assert set(submitted.values()) == {1}, "an evaluation was submitted twice"
        assert len(fake.requests) == online_before, "evaluations went online"
        assert [b["state"] for b in batches(status)] == ["closed"] * len(fake.batch_api.batches)
        assert sum(b["requests"] for b in batches(status)) == EVALUATIONS
        evaluations = list((daemon.data / "gens" / "evaluation").iterdir())
        assert len(evaluations) == EVALUATIONS
        assert all(
            (folder / "parsed.txt").is_file() and (folder / "raw.txt").is_file() for folder in evaluations
        )
        detail = await daemon.get(f"/v1/generations/{evaluations[0].name}")
        attempt = detail["attempt_log"][-1]
        expected = (attempt["prompt_tokens"] * 3.0 + attempt["completion_tokens"] * 15.0) / 1e6 * 0.5
        assert abs(attempt["cost"] - expected) < 1e-12
        # everything paid since the restart was the batches': status counts it at the batch price
        assert status["spent_usd"] > 0 and status["models"]["sonnet_4"]["cost_usd"] == status["spent_usd"]
        assert status["pool"]["outcomes"] == {"done": EVALUATIONS}
        kept = sorted(p.name for p in (daemon.data / "batches").iterdir())
        assert len(kept) == len(fake.batch_api.batches)
        assert all((daemon.data / "batches" / k / "output.jsonl").is_file() for k in kept)
        assert await daemon.stop() == 0


async def test_a_creation_that_timed_out_is_found_by_its_tag_not_submitted_again(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The provider creates the batch but answers after the client gave up (timeout): the next
    try finds it by its tag and follows it; nothing is submitted twice."""
    async with FakeLlm(api_key=API_KEY, batch_delay_s=0.5) as fake:
        fake.batch_api.create_delay_s = 3.0
        daemon = batch_daemon(daemons, tmp_path, fake)
        daemon.config.write_text(
            daemon.config.read_text().replace("batch = true\n", "batch = true\ntimeout_s = 1.0\n", 1)
        )
        await daemon.start()
        await essays_done(daemon)
        await daemon.approve("evaluation", batch=True, limit=100)
        await daemon.wait_stage("evaluation", done=100, deadline_s=60)
        assert len(fake.batch_api.batches) == 1
        assert set(fake.batch_api.submissions.values()) == {1}
        assert "batch_found_by_tag" in daemon.log_tail(400)
        assert await daemon.stop() == 0


async def test_an_expired_batch_fails_its_unanswered_members_and_retry_sends_only_those(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The provider lets the batch expire with half its requests answered: those are done, the
    rest fail as batch_expired (not paid, no files but the prompt); a retry in batch mode sends
    exactly them again. Batch mode here is the evaluation stage's default in the config: the
    approval does not ask for it."""
    async with FakeLlm(api_key=API_KEY, batch_delay_s=0.3, batch_expire=True) as fake:
        daemon = batch_daemon(daemons, tmp_path, fake, extra="[stages.evaluation]\nbatch = true\n")
        await daemon.start()
        await essays_done(daemon)
        approved = await daemon.approve("evaluation", limit=40)
        assert approved["batch_models"] == ["sonnet_4"]
        status = await daemon.wait_stage("evaluation", done=20, failed=20, deadline_s=30)
        assert status["failures"]["evaluation"] == {"batch_expired": 20}
        first = set(fake.batch_api.submissions)
        fake.batch_api.expire = False
        retried = await daemon.post(
            "/v1/retries", {"kind": "batch_expired", "batch": True, "requested_by": "t"}
        )
        assert retried["retried"] == 20
        await daemon.wait_stage("evaluation", done=40, deadline_s=30)
        twice = {gen_id for gen_id, n in fake.batch_api.submissions.items() if n == 2}
        assert len(twice) == 20 and twice <= first
        assert await daemon.stop() == 0


async def test_failed_lines_are_retried_in_a_later_batch_and_approvals_are_checked(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Every 7th request of a batch gets a 500: those go back to the queue and into a later batch
    (transient, as an online call would be tried again). --batch on a model without a batch
    endpoint, or with a budget, is refused naming why; plan shows the batch price."""
    async with FakeLlm(api_key=API_KEY, batch_delay_s=0.2, batch_fail_every=7) as fake:
        daemon = batch_daemon(daemons, tmp_path, fake)
        await daemon.start()
        refused = await anyio.to_thread.run_sync(ctl, daemon, "approve", "draft", "--batch")
        assert (
            refused.returncode != 0
            and "gemini_25_flash" in refused.stderr
            and "batch = true" in refused.stderr
        )
        await essays_done(daemon)
        budget = await anyio.to_thread.run_sync(
            ctl, daemon, "approve", "evaluation", "--batch", "--budget-usd", "5"
        )
        assert budget.returncode != 0 and "budget" in budget.stderr
        plan = await daemon.post("/v1/plans", {"stage": "evaluation", "limit": 70})
        assert (
            plan["total_batch_usd"] is not None
            and abs(plan["total_batch_usd"] * 2 - plan["total_usd"]) < 1e-3
        )
        shown = await anyio.to_thread.run_sync(ctl, daemon, "plan", "evaluation", "--limit", "70")
        assert shown.returncode == 0, shown.stderr
        assert "in batches" in shown.stdout.splitlines()[1]
        assert "with batches (approve --batch)" in shown.stdout
        await daemon.approve("evaluation", batch=True, limit=70)
        await daemon.wait_stage("evaluation", done=70, deadline_s=30)
        # 70 -> 10 fail (every 7th) -> a batch of 10, 1 fails -> a batch of 1: three tries at most
        assert len(fake.batch_api.batches) == 3
        assert sorted(fake.batch_api.submissions.values()).count(3) == 1
        assert await daemon.stop() == 0


async def test_a_refused_poll_never_gives_up_a_batch_and_a_failed_one_says_why(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Polls answered 401, 404 and 500 (a rotated key, a hiccup): the batch is shown as retrying and
    then followed to its end, nothing failed or sent again. A batch the provider fails as a whole
    fails its members as batch_failed with the provider's reason, in status and in each member."""
    async with FakeLlm(api_key=API_KEY, batch_delay_s=0.3) as fake:
        daemon = batch_daemon(daemons, tmp_path, fake)
        await daemon.start()
        await essays_done(daemon)
        fake.batch_api.poll_refusals = [401, 404, 500]
        await daemon.approve("evaluation", batch=True, limit=30)

        def retrying(status: dict[str, Any] | None) -> bool:
            return any(b["problem"] and "HTTP 40" in b["problem"] for b in batches(status))

        await daemon.wait_for(retrying, what="the batch retrying its poll")
        status = await daemon.wait_stage("evaluation", done=30, deadline_s=30)
        assert set(fake.batch_api.submissions.values()) == {1} and len(fake.batch_api.batches) == 1
        assert [b["problem"] for b in batches(status)] == [None]
        fake.batch_api.invalid = True
        await daemon.approve("evaluation", batch=True, limit=10)
        status = await daemon.wait_stage("evaluation", done=30, failed=10, deadline_s=30)
        assert status["failures"]["evaluation"] == {"batch_failed": 10}
        assert "model not found" in batches(status)[-1]["problem"]
        failed = await daemon.get("/v1/generations", state="failed", stage="evaluation", limit=1)
        assert "model not found" in failed["generations"][0]["error_message"]
        assert await daemon.stop() == 0
