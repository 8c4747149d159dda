"""Batch work in the run state: its mode, its claims, and what a restart leaves alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from daydreamd.storage.batches import BatchState, BatchStore
from daydreamd.storage.ready import ReadyWork
from daydreamd.storage.store import Store
from tests.shell.test_counts import MODES, assert_counts_exact, cohort_of, rows


async def modes(store: Store, stage: str) -> dict[tuple[str, str, str], int]:
    found = await rows(
        store,
        "SELECT llm_model_id, mode, state, count(*) FROM generations WHERE stage = ? GROUP BY 1, 2, 3",
        (stage,),
    )
    return {(model, mode, state): n for model, mode, state, n in found}


@asynccontextmanager
async def approved(tmp_path: Path) -> AsyncIterator[Store]:
    """Drafts and essays approved, the llm ones of m1 in batch mode."""
    async with Store.open(tmp_path / "run.sqlite") as store:
        await prepared(store)
        yield store


async def prepared(store: Store) -> None:
    await store.sync_membership(cohort_of("c", set(range(8))), MODES, "fp")
    for stage in ("draft", "essay"):
        await store.approve(
            stage=stage,
            template_id=None,
            llm_model_id=None,
            limit=None,
            requested_by="t",
            cohort_id=None,
            batch_keys=[(s, "m1") for s in ("draft", "essay", "evaluation")],
        )


async def test_approved_llm_work_of_batch_models_waits_for_batches_and_the_pool_never_reads_it(
    tmp_path: Path,
) -> None:
    async with approved(tmp_path) as store:
        assert await modes(store, "draft") == {("m1", "batch", "queued"): 4, ("m2", "llm", "queued"): 4}
        essays = await modes(store, "essay")
        assert (
            essays[("m1", "batch", "queued")] == 2 and essays[("m1", "copy", "queued")] == 2
        )  # copies stay copies
        ready = ReadyWork(store)
        assert ("batch", "m1") in await ready.keys_with_work()
        drafts = [row[0] for row in await rows(store, "SELECT gen_id FROM generations WHERE stage = 'draft'")]
        await store.in_one_trip(
            lambda db: db.execute("UPDATE generations SET state = 'done' WHERE stage = 'draft'")
        )
        children = await ready.children(drafts)
        assert children and {c.mode for c in children} == {"llm", "copy"}  # the pool's: no batch work
        await store.revoke(stage="essay", template_id=None, llm_model_id=None, requested_by="t")
        assert set(await modes(store, "essay")) == {
            ("m1", "llm", "pending"),
            ("m1", "copy", "pending"),
            ("m2", "llm", "pending"),
            ("m2", "copy", "pending"),
        }
        await assert_counts_exact(store)


async def test_a_batch_keeps_its_members_across_a_restart_until_it_is_closed(tmp_path: Path) -> None:
    async with approved(tmp_path) as store:
        batches = BatchStore(store)
        items = await ReadyWork(store).ready(("batch", "m1"), limit=10)
        formed = await batches.open_batch(
            items, endpoint="oai", llm_model_id="m1", stage="draft", price_factor=0.5, lease_s=60, now=0.0
        )
        assert formed is not None
        record, claims = formed
        assert (record.state, record.requests, len(claims)) == (BatchState.PREPARING, 4, 4)
        assert [m.open for m in await batches.members(record.id)] == [True] * 4
        assert await store.running() == [] and len(await store.running(batches=True)) == 4
        assert await store.recover() == 0  # the batch holds them
        assert len(await store.running(batches=True)) == 4
        again = await batches.open_batch(
            items, endpoint="oai", llm_model_id="m1", stage="draft", price_factor=0.5, lease_s=60, now=0.0
        )
        assert again is None  # nothing queued to claim: no empty batch is recorded
        await batches.leave(record.id, [claims[0].generation.gen_id])
        assert (await batches.get(record.id)).requests == 3
        await batches.update(record.id, state=BatchState.CLOSED)
        assert await store.recover() == 4  # closed without committing them: the queue takes them back
        assert await ReadyWork(store).claim(("batch", "m1"), limit=10, lease_s=60) == []  # never the pool's
        items = await ReadyWork(store).ready(("batch", "m1"), limit=10)
        later = await batches.open_batch(
            items, endpoint="oai", llm_model_id="m1", stage="draft", price_factor=0.5, lease_s=60, now=0.0
        )
        assert later is not None and len(later[1]) == 4
        assert {m.state for m in await batches.members(record.id)} == {"claimed_again"}  # not this batch's
        await assert_counts_exact(store)


async def test_batch_claims_take_batch_work_only_and_llm_keys_narrow_as_the_request_does(
    tmp_path: Path,
) -> None:
    async with approved(tmp_path) as store:
        online = await ReadyWork(store).ready(("llm", "m2"), limit=10)
        assert online
        formed = await BatchStore(store).open_batch(
            online, endpoint="oai", llm_model_id="m2", stage="draft", price_factor=0.5, lease_s=60, now=0.0
        )
        assert formed is None  # a row the pool would run is never a batch's (revoked and re-approved since)
        await store.in_one_trip(
            lambda db: db.execute(
                "UPDATE generations SET state = 'failed', error_kind = CASE llm_model_id WHEN 'm1' "
                "THEN 'batch_expired' ELSE 'auth' END WHERE stage = 'draft'"
            )
        )
        keys = store.llm_keys
        assert await keys(state="failed", stage=None, template_id=None, llm_model_id=None) == {
            ("draft", "m1"),
            ("draft", "m2"),
        }
        expired = await keys(
            state="failed", stage=None, template_id=None, llm_model_id=None, kind="batch_expired"
        )
        assert expired == {("draft", "m1")}  # a retry of the expired ones asks nothing of m2
        assert await keys(state="pending", stage="evaluation", template_id="t1", llm_model_id=None) == {
            ("evaluation", "m1"),
            ("evaluation", "m2"),
        }
        await assert_counts_exact(store)
