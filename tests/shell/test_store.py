"""The SQLite run state on real files: membership sync, approvals, claim/complete, reads, concurrency.

Cohorts come from the shipped example (``data/1_raw``: 9 drafts, 18 essays of which 9 are
``copy``, 36 evaluations) and from an edited copy of it in memory ("the shrunk cohort": the
``contrast-map`` draft template made inactive and essays given 2 replicates, so 21 generations
vanish and 36 appear). Every test opens its own database file under ``tmp_path``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import pytest_asyncio

from daydreamd.core.build import build_from_raw
from daydreamd.core.cohort import Cohort, Generation
from daydreamd.core.config import Settings
from daydreamd.core.snapshot import RawFiles, read_raw_dir
from daydreamd.core.stages import STAGES, Stage, State
from daydreamd.daemon.budgets import Budgets
from daydreamd.storage.ready import ReadyWork
from daydreamd.storage.restart_memory import RestartMemory
from daydreamd.storage.store import (
    BULK_CHECKPOINT_PAGES,
    CHECKPOINT_PAGES,
    GENERATION_COLUMNS,
    AttemptRow,
    Claim,
    Completion,
    Store,
    SyncResult,
)
from tests.shell.test_counts import assert_counts_exact

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_RAW = REPO_ROOT / "data" / "1_raw"
GEN_MODEL = "gemini_25_flash"
JUDGE_MODEL = "sonnet_4"
ALL = 10**6

Modes = dict[tuple[Stage, str], str]
T = TypeVar("T")


# -- cohorts ---------------------------------------------------------------------------------------


def _deactivate(csv: bytes, template_id: str) -> bytes:
    lines = csv.decode().split("\n")
    out = []
    for line in lines:
        if line.startswith(f"{template_id},"):
            assert line.endswith(",True"), line
            line = line[: -len("True")] + "False"
        out.append(line)
    return "\n".join(out).encode()


def _build(files: dict[str, bytes]) -> tuple[Cohort, Modes]:
    build = build_from_raw(RawFiles.of(files), Settings())
    assert build.cohort is not None, [str(p) for p in build.problems]
    modes = {(t.stage, t.template_id): str(t.generator) for t in build.experiment.templates}
    return build.cohort, modes


@cache
def example() -> tuple[Cohort, Modes]:
    """The shipped example's cohort and template modes (as the rebuilder computes them)."""
    return _build(dict(read_raw_dir(EXAMPLE_RAW).files))


@cache
def shrunk() -> tuple[Cohort, Modes]:
    """The example without contrast-map drafts (and their descendants), with 2 essay replicates."""
    files = dict(read_raw_dir(EXAMPLE_RAW).files)
    files["draft_templates.csv"] = _deactivate(files["draft_templates.csv"], "contrast-map")
    replication = files["replication_config.csv"].decode()
    assert "essay,1" in replication
    files["replication_config.csv"] = replication.replace("essay,1", "essay,2").encode()
    return _build(files)


def ids_of(cohort: Cohort, **match: Any) -> list[str]:
    """gen_ids of the cohort's generations whose attributes equal ``match``, in cohort order."""
    return [g.gen_id for g in cohort.generations if all(getattr(g, k) == v for k, v in match.items())]


def test_fixture_cohorts_have_the_shapes_the_tests_rely_on() -> None:
    """The example is 9/18/36 with copy essays; the shrunk cohort drops 21 and adds 36 generations."""
    c1, modes = example()
    c2, _ = shrunk()
    assert c1.counts() == {"draft": 9, "essay": 18, "evaluation": 36}
    assert c2.counts() == {"draft": 6, "essay": 24, "evaluation": 48}
    assert modes[(Stage.ESSAY, "idea-as-essay")] == "copy"
    assert sum(modes.get((g.stage, g.template_id)) == "copy" for g in c1.generations) == 9
    a, b = set(ids_of(c1)), set(ids_of(c2))
    assert (len(a - b), len(b - a), len(a & b)) == (21, 36, 42)
    assert c1.cohort_id != c2.cohort_id


# -- helpers ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store.open(tmp_path / "state" / "run.sqlite") as s:
        yield s


async def synced(store: Store, which: tuple[Cohort, Modes] | None = None, fp: str = "fp") -> Cohort:
    cohort, modes = which or example()
    await store.sync_membership(cohort, modes, fp)
    return cohort


async def approve(
    store: Store,
    stage: str,
    *,
    template: str | None = None,
    model: str | None = None,
    limit: int | None = None,
    cohort_id: str | None = None,
) -> tuple[int, int]:
    return await store.approve(
        stage=stage,
        template_id=template,
        llm_model_id=model,
        limit=limit,
        requested_by="tester",
        cohort_id=cohort_id,
    )


async def claim(store: Store, mode: str = "llm", model: str | None = None, limit: int = ALL) -> list[Claim]:
    return await ReadyWork(store).claim((mode, model), limit=limit, lease_s=60.0)


def ok(c: Claim, *, score: float | None = None, token: int | None = None) -> Completion:
    now = time.time()
    return Completion(
        gen_id=c.generation.gen_id,
        token=c.token if token is None else token,
        llm_model_id=c.generation.llm_model_id,
        ok=True,
        attempts=(AttemptRow(attempt=1, started_at=now - 1, finished_at=now, outcome="ok"),),
        score=score,
    )


async def finish(store: Store, claims: Sequence[Claim]) -> None:
    assert await store.complete([ok(c) for c in claims]) == len(claims)


async def rows(store: Store) -> dict[str, dict[str, Any]]:
    return {r["gen_id"]: r for r in await store.generations(stage=None, state=None, limit=ALL)}


async def query(store: Store, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    async with store.db.execute(sql, params) as cursor:
        return [tuple(r) for r in await cursor.fetchall()]


def states(table: dict[str, dict[str, Any]], gen_ids: Sequence[str]) -> Counter[str]:
    return Counter(table[g]["state"] for g in gen_ids)


# -- membership ------------------------------------------------------------------------------------


class TestSyncMembership:
    async def test_first_sync_inserts_every_generation_pending(self, store: Store) -> None:
        """A blank store gets every generation as a pending, unretired row with its attributes and mode."""
        cohort, modes = example()
        result = await store.sync_membership(cohort, modes, "fp-1")
        assert result == SyncResult(added=63, retired=0, revived=0, total=63)
        table = await rows(store)
        assert list(table) == ids_of(cohort)
        for g in cohort.generations:
            row = table[g.gen_id]
            assert (row["stage"], row["parent_gen_id"], row["combo_id"], row["template_id"]) == (
                g.stage.value,
                g.parent_gen_id,
                g.combo_id,
                g.template_id,
            )
            assert (row["llm_model_id"], row["replicate"]) == (g.llm_model_id, g.replicate)
            assert row["mode"] == ("copy" if g.template_id == "idea-as-essay" else "llm")
            assert (row["state"], row["retired"], row["attempts"], row["lease_token"]) == ("pending", 0, 0, 0)
            assert row["approval_id"] is None and row["score"] is None and row["started_at"] is None
            assert row["created_at"] == row["updated_at"]
        [(cohort_id, fingerprint, counts)] = await query(
            store, "SELECT cohort_id, fingerprint, counts FROM cohorts"
        )
        assert (cohort_id, fingerprint, json.loads(counts)) == (cohort.cohort_id, "fp-1", cohort.counts())

    async def test_unknown_template_mode_defaults_to_llm(self, store: Store) -> None:
        """With no mode for a (stage, template), sync records 'llm'."""
        cohort, _ = example()
        await store.sync_membership(cohort, {}, "fp")
        assert {r["mode"] for r in (await rows(store)).values()} == {"llm"}

    async def test_second_sync_of_the_same_cohort_is_idempotent(self, store: Store) -> None:
        """Syncing the same cohort again adds, retires and revives nothing and leaves every row as it was."""
        cohort = await synced(store, fp="fp-1")
        await approve(store, "draft", limit=2)
        before = await rows(store)
        [(first_seen, applied_1)] = await query(store, "SELECT first_seen, last_applied FROM cohorts")
        result = await store.sync_membership(*example(), "fp-2")
        assert result == SyncResult(added=0, retired=0, revived=0, total=len(cohort.generations))
        assert await rows(store) == before
        [(cid, first_seen_2, applied_2, fp)] = await query(
            store, "SELECT cohort_id, first_seen, last_applied, fingerprint FROM cohorts"
        )
        assert (cid, first_seen_2, fp) == (cohort.cohort_id, first_seen, "fp-2")
        assert applied_2 >= applied_1

    async def test_vanished_generations_are_retired_with_their_state_and_new_ones_pending(
        self, store: Store
    ) -> None:
        """A shrunk cohort retires what left (done stays done, queued stays queued), adds new ones pending."""
        c1 = await synced(store)
        c2, modes2 = shrunk()
        gone = [g for g in ids_of(c1) if g not in set(ids_of(c2))]
        new = [g for g in ids_of(c2) if g not in set(ids_of(c1))]
        contrast = ids_of(c1, template_id="contrast-map")
        # Make the first contrast-map draft done (with a score) and the other two queued.
        await approve(store, "draft", template="contrast-map")
        [first] = await claim(store, limit=1)
        assert first.generation.gen_id == contrast[0]
        assert await store.complete([ok(first, score=3.0)]) == 1
        before = await rows(store)

        result = await store.sync_membership(c2, modes2, "fp-2")

        assert result == SyncResult(added=36, retired=21, revived=0, total=78)
        table = await rows(store)
        assert len(table) == 63 + 36
        for gen_id in gone:
            assert table[gen_id]["retired"] == 1
            kept = {k: v for k, v in table[gen_id].items() if k not in ("retired", "updated_at")}
            assert kept == {k: v for k, v in before[gen_id].items() if k not in ("retired", "updated_at")}
        assert (table[contrast[0]]["state"], table[contrast[0]]["score"]) == ("done", 3.0)
        assert states(table, contrast[1:]) == {"queued": 2}
        for gen_id in new:
            assert (table[gen_id]["state"], table[gen_id]["retired"]) == ("pending", 0)
        for gen_id in set(ids_of(c1)) - set(gone):
            assert table[gen_id] == before[gen_id]
        assert {r[0] for r in await query(store, "SELECT cohort_id FROM cohorts")} == {
            c1.cohort_id,
            c2.cohort_id,
        }

    async def test_returning_cohort_revives_rows_with_their_state(self, store: Store) -> None:
        """Going back to the first cohort revives retired rows (done still done) and retires the extras."""
        c1 = await synced(store)
        c2, modes2 = shrunk()
        contrast = ids_of(c1, template_id="contrast-map")
        await approve(store, "draft", template="contrast-map")
        await finish(store, await claim(store, limit=1))
        await store.sync_membership(c2, modes2, "fp-2")
        new = [g for g in ids_of(c2) if g not in set(ids_of(c1))]

        result = await store.sync_membership(*example(), "fp-3")

        assert result == SyncResult(added=0, retired=36, revived=21, total=63)
        table = await rows(store)
        assert all(table[g]["retired"] == 0 for g in ids_of(c1))
        assert all(table[g]["retired"] == 1 for g in new)
        assert table[contrast[0]]["state"] == "done"
        assert table[contrast[0]]["attempts"] == 1
        assert states(table, contrast[1:]) == {"queued": 2}
        # Once revived, the queued drafts and the done draft's children are claimable again.
        await approve(store, "essay")
        claims = await claim(store)
        assert {c.generation.gen_id for c in claims[:2]} == set(contrast[1:])
        [essay] = claims[2:]
        assert (essay.generation.parent_gen_id, essay.generation.template_id) == (
            contrast[0],
            "polished-essay",
        )


# -- approvals -------------------------------------------------------------------------------------


class TestApprove:
    async def test_approve_queues_the_first_pending_rows_up_to_the_limit(self, store: Store) -> None:
        """approve with a limit queues that many pending rows of the stage in cohort order and records it."""
        cohort = await synced(store)
        drafts = ids_of(cohort, stage=Stage.DRAFT)
        approval_id, matched = await approve(store, "draft", limit=4, cohort_id=cohort.cohort_id)
        assert matched == 4
        table = await rows(store)
        queued = [g for g, r in table.items() if r["state"] == "queued"]
        assert queued == drafts[:4]
        assert {table[g]["approval_id"] for g in queued} == {approval_id}
        assert all(
            r["state"] == "pending" and r["approval_id"] is None for g, r in table.items() if g not in queued
        )
        [record] = await query(
            store,
            "SELECT id, requested_by, action, cohort_id, stage, template_id, llm_model_id, limit_n, matched "
            "FROM approvals",
        )
        assert record == (approval_id, "tester", "approve", cohort.cohort_id, "draft", None, None, 4, 4)

        second_id, second = await approve(store, "draft")
        assert (second_id, second) == (approval_id + 1, 5)
        table = await rows(store)
        assert [table[g]["approval_id"] for g in drafts] == [approval_id] * 4 + [second_id] * 5
        third_id, third = await approve(store, "draft")
        assert third == 0
        matched_col = await query(store, "SELECT id, limit_n, matched FROM approvals ORDER BY id")
        assert matched_col == [(approval_id, 4, 4), (second_id, None, 5), (third_id, None, 0)]
        # Nothing outside the stage moved.
        assert states(table, ids_of(cohort, stage=Stage.ESSAY)) == {"pending": 18}

    async def test_approve_filters_by_template_and_model(self, store: Store) -> None:
        """Template and model filters narrow what is queued; a non-matching model queues nothing."""
        cohort = await synced(store)
        _, copy = await approve(store, "essay", template="idea-as-essay")
        assert copy == 9
        _, wrong_model = await approve(store, "evaluation", model=GEN_MODEL)
        assert wrong_model == 0
        _, judged = await approve(store, "evaluation", template="novelty-judge", model=JUDGE_MODEL, limit=5)
        assert judged == 5
        table = await rows(store)
        queued = [g for g, r in table.items() if r["state"] == "queued"]
        assert (
            queued
            == ids_of(cohort, template_id="idea-as-essay") + ids_of(cohort, template_id="novelty-judge")[:5]
        )
        [(tpl, model, limit)] = await query(
            store, "SELECT template_id, llm_model_id, limit_n FROM approvals WHERE matched = 5"
        )
        assert (tpl, model, limit) == ("novelty-judge", JUDGE_MODEL, 5)

    async def test_approve_skips_retired_and_non_pending_rows(self, store: Store) -> None:
        """Only pending, unretired rows match: queued, running, done and retired rows are left alone."""
        c1 = await synced(store)
        c2, modes2 = shrunk()
        first_three = ids_of(c1, stage=Stage.DRAFT)[:3]  # bridge, rolling, contrast of the first combo
        await approve(store, "draft", limit=3)
        [running] = await claim(store, limit=1)
        assert running.generation.gen_id == first_three[0]
        await store.sync_membership(c2, modes2, "fp-2")  # retires every contrast-map draft
        _, matched = await approve(store, "draft")
        table = await rows(store)
        assert matched == 6 - 2  # six unretired drafts, two of them already running/queued
        assert table[first_three[0]]["state"] == "running"
        assert (table[first_three[2]]["state"], table[first_three[2]]["retired"]) == ("queued", 1)
        assert states(table, ids_of(c1, template_id="contrast-map")[1:]) == {"pending": 2}


class TestRevoke:
    async def test_revoke_sends_only_queued_rows_back_to_pending(self, store: Store) -> None:
        """revoke returns queued rows to pending and clears their approval; running and done rows stay."""
        cohort = await synced(store)
        approval_id, _ = await approve(store, "draft")
        first, second = await claim(store, limit=2)
        await finish(store, [first])
        revoked = await store.revoke(stage="draft", template_id=None, llm_model_id=None, requested_by="ops")
        assert revoked == 7
        table = await rows(store)
        assert (table[first.generation.gen_id]["state"], table[second.generation.gen_id]["state"]) == (
            "done",
            "running",
        )
        assert table[second.generation.gen_id]["approval_id"] == approval_id
        others = [
            g
            for g in ids_of(cohort, stage=Stage.DRAFT)
            if g not in (first.generation.gen_id, second.generation.gen_id)
        ]
        assert all((table[g]["state"], table[g]["approval_id"]) == ("pending", None) for g in others)
        [record] = await query(
            store,
            "SELECT requested_by, action, stage, limit_n, matched FROM approvals WHERE action = 'revoke'",
        )
        assert record == ("ops", "revoke", "draft", None, 7)
        # The running claim can still commit.
        await finish(store, [second])

    async def test_revoke_respects_template_filter(self, store: Store) -> None:
        """revoke with a template only touches that template's queued rows."""
        cohort = await synced(store)
        await approve(store, "essay")
        revoked = await store.revoke(
            stage="essay", template_id="idea-as-essay", llm_model_id=None, requested_by="ops"
        )
        assert revoked == 9
        table = await rows(store)
        assert states(table, ids_of(cohort, template_id="idea-as-essay")) == {"pending": 9}
        assert states(table, ids_of(cohort, template_id="polished-essay")) == {"queued": 9}


# -- the pool --------------------------------------------------------------------------------------


class TestClaim:
    async def test_claim_returns_only_ready_rows(self, store: Store) -> None:
        """Drafts are always ready; an essay only once its draft is done, an evaluation once its essay is."""
        cohort = await synced(store)
        for stage in STAGES:
            await approve(store, stage)
        t0 = time.time()
        drafts = await claim(store)
        assert {c.generation for c in drafts} == {g for g in cohort.generations if g.stage is Stage.DRAFT}
        assert await claim(store) == [] and await claim(store, mode="copy") == []

        await finish(store, drafts[:1])
        parent = drafts[0].generation.gen_id
        [essay] = await claim(store)
        [copied] = await claim(store, mode="copy")
        assert (essay.generation.parent_gen_id, essay.generation.template_id) == (parent, "polished-essay")
        assert (copied.generation.parent_gen_id, copied.generation.template_id) == (parent, "idea-as-essay")
        assert await claim(store, model=JUDGE_MODEL) == []

        await finish(store, [essay])
        evaluations = await claim(store, model=JUDGE_MODEL)
        assert sorted(c.generation.template_id for c in evaluations) == ["novelty-judge", "rigor-judge"]
        assert {c.generation.parent_gen_id for c in evaluations} == {essay.generation.gen_id}
        table = await rows(store)
        for c in [*drafts[1:], copied, *evaluations]:
            row = table[c.generation.gen_id]
            assert (row["state"], row["lease_token"], c.token, c.attempts) == ("running", 1, 1, 0)
            assert row["started_at"] is not None
        [(lease_expires,)] = await query(
            store, "SELECT lease_expires FROM generations WHERE gen_id = ?", (copied.generation.gen_id,)
        )
        assert t0 + 59 <= lease_expires <= time.time() + 61

    async def test_claim_takes_parents_first_even_when_they_were_added_later(self, store: Store) -> None:
        """Drafts added by a later sync (higher rowid) are claimed before essays that are already ready."""
        c2 = await synced(store, shrunk())
        c1 = await synced(store, example())  # adds the contrast-map drafts at the end of the table
        await approve(store, "draft", template="bridge-sketch")
        await approve(store, "draft", template="rolling-idea")
        await finish(store, await claim(store))
        await approve(store, "essay", template="polished-essay")
        await approve(store, "draft", template="contrast-map")
        claims = await claim(store, limit=4)
        stages = [c.generation.stage for c in claims]
        assert stages == [Stage.DRAFT] * 3 + [Stage.ESSAY]
        assert {c.generation.gen_id for c in claims[:3]} == set(ids_of(c1, template_id="contrast-map"))
        ready_essays = [
            g
            for g in ids_of(c1, template_id="polished-essay")
            if g in set(ids_of(c2))  # the essays of done drafts, in table order
        ]
        assert claims[3].generation.gen_id == ready_essays[0]

    async def test_claim_respects_mode_model_and_limit(self, store: Store) -> None:
        """Mode picks llm or copy rows, the model filter and the limit bound what is handed out."""
        cohort = await synced(store)
        await approve(store, "draft")
        await approve(store, "essay")
        await finish(store, await claim(store, limit=9))
        assert await claim(store, mode="copy", limit=0) == []
        copies = await claim(store, mode="copy", limit=4)
        assert {c.generation.gen_id for c in copies} == set(ids_of(cohort, template_id="idea-as-essay")[:4])
        assert {c.mode for c in copies} == {"copy"}
        assert await claim(store, model=JUDGE_MODEL) == []
        llm = await claim(store, model=GEN_MODEL)
        assert {c.generation for c in llm} == {
            g for g in cohort.generations if g.template_id == "polished-essay"
        }
        assert {c.mode for c in llm} == {"llm"}
        rest = await claim(store, mode="copy")
        assert {c.generation.gen_id for c in rest} == set(ids_of(cohort, template_id="idea-as-essay")[4:])
        assert (await store.counts())["essay"]["running"] == 18

    async def test_claim_ignores_retired_queued_rows(self, store: Store) -> None:
        """A queued row whose generation left the cohort is not handed out."""
        c1 = await synced(store)
        await approve(store, "draft")
        await store.sync_membership(*shrunk(), "fp-2")
        claims = await claim(store)
        assert {c.generation.template_id for c in claims} == {"bridge-sketch", "rolling-idea"}
        assert len(claims) == 6
        table = await rows(store)
        assert states(table, ids_of(c1, template_id="contrast-map")) == {"queued": 3}


class TestComplete:
    async def test_complete_commits_done_and_failed_with_attempt_rows(self, store: Store) -> None:
        """complete writes state, attempt count, error, score (only if ok) and an attempts row per attempt."""
        await synced(store)
        await approve(store, "draft")
        good, bad = await claim(store, limit=2)
        now = time.time()
        good_attempts = (
            AttemptRow(
                attempt=1,
                started_at=now - 5,
                finished_at=now - 4,
                outcome="rate_limited",
                status=429,
                message="slow down",
            ),
            AttemptRow(
                attempt=2,
                started_at=now - 3,
                finished_at=now - 1,
                outcome="ok",
                status=200,
                prompt_tokens=10,
                completion_tokens=20,
                total_tokens=30,
                reasoning_tokens=5,
                cost=0.25,
            ),
        )
        bad_attempts = tuple(
            AttemptRow(attempt=i, started_at=now - 2, finished_at=now, outcome="timeout") for i in (1, 2, 3)
        )
        committed = await store.complete(
            [
                Completion(
                    gen_id=good.generation.gen_id,
                    token=good.token,
                    llm_model_id=GEN_MODEL,
                    ok=True,
                    attempts=good_attempts,
                    score=8.0,
                ),
                Completion(
                    gen_id=bad.generation.gen_id,
                    token=bad.token,
                    llm_model_id=GEN_MODEL,
                    ok=False,
                    error_kind="timeout",
                    error_message="gave up after 3",
                    attempts=bad_attempts,
                    score=4.0,
                ),
            ]
        )
        assert committed == 2
        g = await store.generation(good.generation.gen_id)
        b = await store.generation(bad.generation.gen_id)
        assert g is not None and b is not None
        assert (g["state"], g["attempts"], g["score"], g["error_kind"], g["error_message"]) == (
            "done",
            2,
            8.0,
            None,
            None,
        )
        assert (b["state"], b["attempts"], b["score"], b["error_kind"], b["error_message"]) == (
            "failed",
            3,
            None,
            "timeout",
            "gave up after 3",
        )
        assert g["finished_at"] is not None and b["finished_at"] is not None
        assert g["attempt_log"] == [
            {
                "attempt": a.attempt,
                "started_at": a.started_at,
                "finished_at": a.finished_at,
                "outcome": a.outcome,
                "status": a.status,
                "message": a.message,
                "prompt_tokens": a.prompt_tokens,
                "completion_tokens": a.completion_tokens,
                "total_tokens": a.total_tokens,
                "reasoning_tokens": a.reasoning_tokens,
                "cost": a.cost,
            }
            for a in good_attempts
        ]
        assert [a["outcome"] for a in b["attempt_log"]] == ["timeout"] * 3
        assert await query(store, "SELECT DISTINCT llm_model_id FROM attempts") == [(GEN_MODEL,)]
        assert await store.complete([]) == 0

    async def test_complete_twice_commits_once(self, store: Store) -> None:
        """A second completion of an already finished claim commits nothing and leaves the row as it was."""
        await synced(store)
        await approve(store, "draft")
        [c] = await claim(store, limit=1)
        assert await store.complete([ok(c, score=1.0)]) == 1
        before = await store.generation(c.generation.gen_id)
        failed = Completion(
            gen_id=c.generation.gen_id, token=c.token, llm_model_id=GEN_MODEL, ok=False, error_kind="x"
        )
        assert await store.complete([failed]) == 0
        after = await store.generation(c.generation.gen_id)
        assert after == before

    async def test_stale_token_commits_nothing(self, store: Store) -> None:
        """After recover() and a new claim, completing with the old token returns 0; the new lease holds."""
        await synced(store)
        await approve(store, "draft")
        [old] = await claim(store, limit=1)
        assert await store.recover() == 1
        [new] = await claim(store, limit=1)
        assert new.generation == old.generation
        assert (old.token, new.token) == (1, 2)
        before = await store.generation(old.generation.gen_id)
        assert await store.complete([ok(old, score=9.0)]) == 0
        row = await store.generation(old.generation.gen_id)
        assert row is not None and before is not None
        assert {k: v for k, v in row.items() if k != "attempt_log"} == {
            k: v for k, v in before.items() if k != "attempt_log"
        }
        assert (row["state"], row["lease_token"], row["attempts"], row["score"]) == ("running", 2, 0, None)
        assert await store.release([old]) == 0
        assert await store.complete([ok(new, score=9.0)]) == 1
        done = await store.generation(new.generation.gen_id)
        assert done is not None and (done["state"], done["score"]) == ("done", 9.0)

    async def test_stale_token_records_no_attempts(self, store: Store) -> None:
        """A completion rejected for its stale token leaves the attempts table (and attempt_log) untouched."""
        await synced(store)
        await approve(store, "draft")
        [old] = await claim(store, limit=1)
        await store.recover()
        [new] = await claim(store, limit=1)
        now = time.time()
        stale = Completion(
            gen_id=old.generation.gen_id,
            token=old.token,
            llm_model_id=GEN_MODEL,
            ok=False,
            error_kind="timeout",
            attempts=(AttemptRow(attempt=1, started_at=now - 1, finished_at=now, outcome="timeout"),),
        )
        assert await store.complete([stale]) == 0
        row = await store.generation(new.generation.gen_id)
        assert row is not None
        assert row["attempt_log"] == []
        assert await store.recent_errors() == {}


class TestReleaseRecover:
    async def test_release_gives_running_claims_back_to_queued(self, store: Store) -> None:
        """release moves the given running claims to queued under their token, once."""
        await synced(store)
        await approve(store, "draft")
        claims = await claim(store, limit=3)
        assert await store.release([]) == 0
        assert await store.release(claims) == 3
        table = await rows(store)
        for c in claims:
            assert (table[c.generation.gen_id]["state"], table[c.generation.gen_id]["lease_token"]) == (
                "queued",
                1,
            )
        [(expires,)] = await query(store, "SELECT count(*) FROM generations WHERE lease_expires IS NOT NULL")
        assert expires == 0
        assert await store.release(claims) == 0
        again = await claim(store, limit=3)
        assert {c.generation for c in again} == {c.generation for c in claims}
        assert {c.token for c in again} == {2}
        await finish(store, again[:1])
        assert await store.release(again) == 2  # the finished one is not running any more
        assert (await store.counts())["draft"] == {
            "pending": 0,
            "queued": 8,
            "running": 0,
            "done": 1,
            "failed": 0,
            "retired": 0,
        }

    async def test_recover_moves_every_running_row_to_queued(self, store: Store) -> None:
        """recover() sends all running rows back to queued (done rows stay) and is then a no-op."""
        await synced(store)
        await approve(store, "draft")
        claims = await claim(store, limit=5)
        await finish(store, claims[:1])
        assert await store.recover() == 4
        counts = (await store.counts())["draft"]
        assert (counts["running"], counts["queued"], counts["done"]) == (0, 8, 1)
        assert await store.recover() == 0
        assert len(await claim(store)) == 8


# -- reading ---------------------------------------------------------------------------------------


def zero_counts() -> dict[str, dict[str, int]]:
    return {str(s): {str(state): 0 for state in State} for s in STAGES}


class TestReading:
    async def test_counts_shape_with_retired_counted_apart(self, store: Store) -> None:
        """counts() has every stage and state plus 'retired', and a retired row counts only as retired."""
        assert await store.counts() == zero_counts()
        await synced(store)
        await approve(store, "draft", limit=3)  # bridge, rolling, contrast of the first combo
        [done] = await claim(store, limit=1)
        await finish(store, [done])
        await claim(store, limit=1)
        await store.sync_membership(*shrunk(), "fp-2")
        expected = zero_counts()
        expected["draft"].update(pending=4, running=1, done=1, retired=3)
        expected["essay"].update(pending=24, retired=6)
        expected["evaluation"].update(pending=48, retired=12)
        assert await store.counts() == expected

    async def test_generations_filters_by_stage_state_and_retired(self, store: Store) -> None:
        """generations() filters by stage and state, 'retired' selects only retired rows, limit bounds it."""
        c1 = await synced(store)
        await approve(store, "draft", template="contrast-map", limit=1)
        await store.sync_membership(*shrunk(), "fp-2")
        everything = await store.generations(stage=None, state=None, limit=ALL)
        assert len(everything) == 99
        assert set(everything[0]) == {c.strip() for c in GENERATION_COLUMNS.split(",")}
        ranks = [STAGES.index(Stage(r["stage"])) for r in everything]
        assert ranks == sorted(ranks)

        retired = await store.generations(stage=None, state="retired", limit=ALL)
        assert len(retired) == 21 and all(r["retired"] == 1 for r in retired)
        assert Counter(r["state"] for r in retired) == {"pending": 20, "queued": 1}
        retired_drafts = await store.generations(stage="draft", state="retired", limit=ALL)
        assert [r["gen_id"] for r in retired_drafts] == ids_of(c1, template_id="contrast-map")

        pending_drafts = await store.generations(stage="draft", state="pending", limit=ALL)
        assert len(pending_drafts) == 6
        assert all(r["retired"] == 0 and r["state"] == "pending" for r in pending_drafts)
        assert await store.generations(stage="draft", state="queued", limit=ALL) == []
        essays = await store.generations(stage="essay", state=None, limit=ALL)
        assert len(essays) == 30 and {r["stage"] for r in essays} == {"essay"}
        assert len(await store.generations(stage="evaluation", state="pending", limit=7)) == 7

    async def test_generation_returns_none_for_unknown_id(self, store: Store) -> None:
        """generation() of an id that is not in the table is None; a known one has an empty attempt_log."""
        cohort = await synced(store)
        assert await store.generation("d_nope") is None
        row = await store.generation(cohort.generations[0].gen_id)
        assert row is not None and row["attempt_log"] == [] and row["gen_id"] == cohort.generations[0].gen_id

    async def test_recent_errors_counts_non_ok_outcomes_in_the_window(self, store: Store) -> None:
        """recent_errors counts failed attempts by outcome, ignoring ok ones and ones before the window."""
        await synced(store)
        await approve(store, "draft")
        a, b, c = await claim(store, limit=3)
        now = time.time()

        def attempt(n: int, outcome: str, age: float) -> AttemptRow:
            return AttemptRow(attempt=n, started_at=now - age - 1, finished_at=now - age, outcome=outcome)

        await store.complete(
            [
                Completion(
                    gen_id=a.generation.gen_id,
                    token=a.token,
                    llm_model_id=GEN_MODEL,
                    ok=True,
                    attempts=(attempt(1, "rate_limited", 0), attempt(2, "ok", 0)),
                ),
                Completion(
                    gen_id=b.generation.gen_id,
                    token=b.token,
                    llm_model_id=GEN_MODEL,
                    ok=False,
                    error_kind="timeout",
                    attempts=(attempt(1, "timeout", 5), attempt(2, "timeout", 1)),
                ),
                Completion(
                    gen_id=c.generation.gen_id,
                    token=c.token,
                    llm_model_id=GEN_MODEL,
                    ok=False,
                    error_kind="server_error",
                    attempts=(attempt(1, "server_error", 7200),),
                ),
            ]
        )
        assert await store.recent_errors() == {"rate_limited": 1, "timeout": 2}
        assert await store.recent_errors(since_s=3) == {"rate_limited": 1, "timeout": 1}
        assert await store.recent_errors(since_s=10_000) == {
            "rate_limited": 1,
            "timeout": 2,
            "server_error": 1,
        }

    async def test_facts_get_and_set(self, tmp_path: Path) -> None:
        """Facts read None until set, are overwritten by set and survive a reopen."""
        path = tmp_path / "run.sqlite"
        async with Store.open(path) as store:
            assert await store.get_fact("fingerprint.applied") is None
            await store.set_fact("fingerprint.applied", "aaa")
            await store.set_fact("fingerprint.pending", "bbb")
            await store.set_fact("fingerprint.applied", "ccc")
            assert await store.get_fact("fingerprint.applied") == "ccc"
        async with Store.open(path) as store:
            assert await store.get_fact("fingerprint.applied") == "ccc"
            assert await store.get_fact("fingerprint.pending") == "bbb"
            assert await store.get_fact("other") is None

    async def test_limits_round_trip(self, tmp_path: Path) -> None:
        """save_limits/load_limits round-trip floats, update per model and survive a reopen."""
        path = tmp_path / "run.sqlite"
        async with Store.open(path) as store:
            assert await RestartMemory(store).load_limits() == {}
            await RestartMemory(store).save_limits({GEN_MODEL: 2.5, JUDGE_MODEL: 1.0})
            assert await RestartMemory(store).load_limits() == {GEN_MODEL: 2.5, JUDGE_MODEL: 1.0}
            await RestartMemory(store).save_limits({GEN_MODEL: 3.75})
            await RestartMemory(store).save_limits({})
        async with Store.open(path) as store:
            assert await RestartMemory(store).load_limits() == {GEN_MODEL: 3.75, JUDGE_MODEL: 1.0}


# -- concurrency -----------------------------------------------------------------------------------


async def test_concurrent_claims_completions_and_approvals(store: Store) -> None:
    """50 tasks claiming, completing and approving on one Store never collide and account for every row."""
    cohort = await synced(store)
    total = len(cohort.generations)
    held: set[str] = set()
    duplicates: list[str] = []
    claimed: list[str] = []
    committed = 0
    approvals: list[int] = []
    in_flight = peak = 0

    async def tracked(call: Awaitable[T]) -> T:
        """Await a Store call, counting how many are outstanding at once."""
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await call
        finally:
            in_flight -= 1

    async def approver(i: int) -> None:
        await anyio.sleep(0.001 * i)
        stage = STAGES[i % 3]
        limit = None if i >= 7 else 4
        _, matched = await tracked(approve(store, stage.value, limit=limit))
        approvals.append(matched)
        await store.counts()

    async def worker(i: int) -> None:
        nonlocal committed
        mode = "copy" if i % 8 == 0 else "llm"
        model = (None, GEN_MODEL, JUDGE_MODEL)[i % 3] if mode == "llm" else None
        while committed < total:
            claims = await tracked(ReadyWork(store).claim((mode, model), limit=1 + i % 3, lease_s=30))
            if not claims:
                await anyio.sleep(0.001)
                continue
            for c in claims:
                if c.generation.gen_id in held:
                    duplicates.append(c.generation.gen_id)
                held.add(c.generation.gen_id)
                claimed.append(c.generation.gen_id)
            await anyio.lowlevel.checkpoint()
            completions = [
                ok(c)
                if c.generation.template_id != "rigor-judge"
                else Completion(
                    gen_id=c.generation.gen_id,
                    token=c.token,
                    llm_model_id=c.generation.llm_model_id,
                    ok=False,
                    error_kind="refused",
                    attempts=(AttemptRow(attempt=1, started_at=1.0, finished_at=2.0, outcome="refused"),),
                )
                for c in claims
            ]
            n = await tracked(store.complete(completions))
            assert n == len(claims)
            for c in claims:
                held.discard(c.generation.gen_id)
            committed += n

    with anyio.fail_after(8):
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(approver, i)
            for i in range(40):
                tg.start_soon(worker, i)

    assert peak >= 40, "the calls did not overlap"
    assert duplicates == []
    assert sorted(claimed) == sorted(ids_of(cohort))
    assert committed == total
    assert sum(approvals) == total and len(approvals) == 10
    expected = zero_counts()
    expected["draft"]["done"] = 9
    expected["essay"]["done"] = 18
    expected["evaluation"].update(done=18, failed=18)
    assert await store.counts() == expected
    assert await query(store, "SELECT DISTINCT lease_token FROM generations") == [(1,)]
    assert await query(store, "SELECT count(*), sum(matched) FROM approvals") == [(10, total)]
    assert await query(store, "SELECT count(*) FROM attempts") == [(total,)]
    assert not store.db.in_transaction


# -- cancellation ----------------------------------------------------------------------------------

SLOW_READ = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1500000) SELECT count(*) FROM c"
)
"""A read that keeps aiosqlite's single worker thread busy for a while (~0.2 s), so later calls queue."""


async def test_cancelled_write_rolls_back_and_leaves_the_store_usable(store: Store) -> None:
    """A sync cancelled inside its transaction is rolled back entirely and the next write works."""
    big = synthetic_cohort("cohort_cancelled", range(12_000))
    with anyio.move_on_after(0.02) as scope:
        await store.sync_membership(big, {}, "fp")
    assert scope.cancelled_caught, "the sync finished before the cancellation; make the cohort bigger"
    assert await store.counts() == zero_counts()  # queued behind the rollback
    assert not store.db.in_transaction
    assert await query(store, "SELECT count(*) FROM cohorts") == [(0,)]
    cohort = await synced(store)
    assert sum(sum(v.values()) for v in (await store.counts()).values()) == len(cohort.generations)


async def test_write_cancelled_while_waiting_for_begin_leaves_no_open_transaction(store: Store) -> None:
    """A write cancelled while its BEGIN is queued on the connection must not leave a transaction open."""

    async def slow_read() -> None:
        async with store.db.execute(SLOW_READ) as cursor:
            await cursor.fetchone()

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_read)
        await anyio.sleep(0.01)  # the slow read now holds the connection's thread
        with anyio.move_on_after(0.02) as scope:
            await store.set_fact("k", "v")  # cancelled while awaiting BEGIN IMMEDIATE
        assert scope.cancelled_caught
    # The slow read is done; whatever the cancelled call queued has run by now.
    assert await store.get_fact("k") is None
    assert not store.db.in_transaction
    await store.set_fact("k", "w")
    assert await store.get_fact("k") == "w"


# -- scale -----------------------------------------------------------------------------------------


def synthetic_cohort(name: str, drafts: range) -> Cohort:
    """A cohort of 4 generations per draft index (1 draft, 1 essay, 2 evaluations), ids from the index."""
    generations: list[Generation] = []
    for i in drafts:
        generations.append(Generation(Stage.DRAFT, f"d_{i:07d}", "", f"c{i % 97}", "t", "m", 1))
    for i in drafts:
        generations.append(Generation(Stage.ESSAY, f"e_{i:07d}", f"d_{i:07d}", f"c{i % 97}", "t", "m", 1))
    for i in drafts:
        for j in (1, 2):
            generations.append(
                Generation(Stage.EVALUATION, f"v_{i:07d}_{j}", f"e_{i:07d}", f"c{i % 97}", "j", "n", j)
            )
    counts = {"draft": len(drafts), "essay": len(drafts), "evaluation": 2 * len(drafts)}
    return Cohort(cohort_id=name, manifest={"counts": counts}, combos=(), generations=tuple(generations))


async def test_sync_membership_of_a_100k_cohort(store: Store) -> None:
    """A 100k-generation cohort syncs, resyncs idempotently and shrinks/grows correctly."""
    big = synthetic_cohort("cohort_big", range(25_000))
    assert len(big.generations) == 100_000
    modes: Modes = {(Stage.ESSAY, "t"): "copy"}

    t0 = time.perf_counter()
    assert await store.sync_membership(big, modes, "fp-1") == SyncResult(100_000, 0, 0, 100_000)
    t1 = time.perf_counter()
    assert await store.sync_membership(big, modes, "fp-1") == SyncResult(0, 0, 0, 100_000)
    t2 = time.perf_counter()
    moved = synthetic_cohort("cohort_moved", range(2_500, 26_000))  # drops 2.5k draft lines, adds 1k
    assert await store.sync_membership(moved, modes, "fp-2") == SyncResult(4_000, 10_000, 0, 94_000)
    t3 = time.perf_counter()
    assert await store.sync_membership(big, modes, "fp-3") == SyncResult(0, 4_000, 10_000, 100_000)
    t4 = time.perf_counter()
    print(
        f"\nsync 100k: insert {t1 - t0:.2f}s, resync {t2 - t1:.2f}s, "
        f"shrink/grow {t3 - t2:.2f}s, revive {t4 - t3:.2f}s"
    )

    counts = await store.counts()
    assert counts["draft"] == {**zero_counts()["draft"], "pending": 25_000, "retired": 1_000}
    assert counts["essay"] == {**zero_counts()["essay"], "pending": 25_000, "retired": 1_000}
    assert counts["evaluation"] == {**zero_counts()["evaluation"], "pending": 50_000, "retired": 2_000}
    assert await query(store, "SELECT mode, count(*) FROM generations GROUP BY mode ORDER BY mode") == [
        ("copy", 26_000),
        ("llm", 78_000),
    ]
    assert await query(
        store,
        "SELECT stage, state, retired, llm_model_id, mode, n FROM generation_counts WHERE n != 0 "
        "ORDER BY 1, 2, 3, 4, 5",
    ) == await query(
        store,
        "SELECT stage, state, retired, llm_model_id, mode, count(*) FROM generations "
        "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
    )


async def pragma(store: Store, name: str) -> int:
    [(value,)] = await query(store, f"PRAGMA {name}")
    return int(value)


async def test_bulk_writes_leave_the_wal_unchecked_until_the_last_one_leaves(tmp_path: Path) -> None:
    """Inside bulk writes (a sync's chunks) the WAL takes many commits before a checkpoint copies them
    into the file; the last one to leave (nested, or another task's) checkpoints it and restores the
    usual interval."""
    path = tmp_path / "run.sqlite"
    async with Store.open(path) as store:
        assert await pragma(store, "wal_autocheckpoint") == CHECKPOINT_PAGES
        assert await pragma(store, "journal_size_limit") == 64 * 2**20  # the WAL cut back after a sync
        store.sync_chunk = 1_000
        store.sync_checkpoint_rows = 10**9  # no checkpoint of the sync's own (see the next test)
        before = path.stat().st_size
        async with store.bulk_writes():
            async with store.bulk_writes():
                assert await pragma(store, "wal_autocheckpoint") == BULK_CHECKPOINT_PAGES
            assert await pragma(store, "wal_autocheckpoint") == BULK_CHECKPOINT_PAGES  # the outer one holds
            big = synthetic_cohort("cohort_big", range(10_000))  # a sync of its own inside: 40 commits
            assert await store.sync_membership(big, {}, "fp") == SyncResult(40_000, 0, 0, 40_000)
            assert await pragma(store, "wal_autocheckpoint") == BULK_CHECKPOINT_PAGES
            wal = path.with_name(path.name + "-wal").stat().st_size
            assert wal > 2 * CHECKPOINT_PAGES * 4096  # more than a checkpoint at every 1,000 pages lets grow
            assert path.stat().st_size == before  # nothing copied into the file yet
        assert await pragma(store, "wal_autocheckpoint") == CHECKPOINT_PAGES
        assert path.stat().st_size > before + wal // 2  # checkpointed on leaving
        assert (await store.counts())["evaluation"]["pending"] == 20_000


async def test_a_long_sync_checkpoints_the_wal_aside_every_so_many_rows(tmp_path: Path) -> None:
    """Every :attr:`Store.sync_checkpoint_rows` rows a sync copies the WAL into the file from a connection
    of its own (the store's thread stays free for status): the file grows while the sync writes, and
    what it copied is written over, not appended to, so the WAL stays small; no commit checkpoints."""
    path = tmp_path / "run.sqlite"
    async with Store.open(path) as store:
        store.sync_chunk, store.sync_checkpoint_rows = 1_000, 4_000
        sizes: list[tuple[int, int]] = []
        wal = path.with_name(path.name + "-wal")
        big = synthetic_cohort("cohort_big", range(10_000))
        before = path.stat().st_size
        result = await store.sync_membership(
            big,
            {},
            "fp",
            progress=lambda done, total: sizes.append((path.stat().st_size, wal.stat().st_size)),
        )
        assert result == SyncResult(40_000, 0, 0, 40_000)
        assert await pragma(store, "wal_autocheckpoint") == CHECKPOINT_PAGES
        assert sizes[-1][0] > before  # copied into the file during the sync, before it ended
        largest_wal = max(w for _, w in sizes)
        assert largest_wal < 4 * 2**20  # some 1 MiB; without these checkpoints the 40 chunks leave 11
        await assert_counts_exact(store)


async def test_budgets_come_with_the_newest_approval_id_read_at_the_same_time(store: Store) -> None:
    """The pool holds work of approvals newer than its last read of budgets: an approval's rows
    are queued before its budget is read back, and a pool that started them in that gap ran a
    first burst of calls past the budget (seen once in a full run: 4 calls against $0.35)."""
    assert await store.budgets() == (0, {})
    cohort = await synced(store)
    first, _ = await approve(store, "draft", cohort_id=cohort.cohort_id)
    budgeted, _ = await store.approve(
        stage="essay",
        template_id=None,
        llm_model_id=None,
        limit=None,
        requested_by="tester",
        cohort_id=cohort.cohort_id,
        budget_usd=0.35,
    )
    newest, budgets = await store.budgets()
    assert (newest, budgets) == (budgeted, {budgeted: 0.35})

    known = Budgets()
    await known.refresh(store, lambda _model: None)
    assert not known.unknown(first) and not known.unknown(budgeted)
    later, _ = await approve(store, "evaluation", cohort_id=cohort.cohort_id)
    assert known.unknown(later)
