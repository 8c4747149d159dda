"""Counters, not scans: the counts table stays exact, membership syncs in chunks and by difference.

* ``generation_counts`` (state changes counted by a trigger, membership changes by the sync)
  equals a ``GROUP BY`` over ``generations`` after any sequence of writes: syncs (including
  revivals), approvals, revocations, claims, completions, releases, requeues, retries, recovery,
  and raw SQL that changes states;
* a sync in chunks of a few rows gives the same membership and the same result as in one piece,
  also from a diff computed in memory, and a sync cut short is completed by the next one;
* a sync writes only the rows that change;
* ``status`` answers, with the progress of the sync, while a cohort is being synced.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daydreamd.core.cohort import Cohort, Generation
from daydreamd.core.config import Settings
from daydreamd.core.stages import Stage
from daydreamd.daemon.runner import Runner
from daydreamd.daemon.service import Service
from daydreamd.llm.registry import make_provider
from daydreamd.storage.batches import BatchStore
from daydreamd.storage.gens import GensStore
from daydreamd.storage.ready import ReadyWork
from daydreamd.storage.store import Completion, Store, SyncResult, membership_diff

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("m1", "m2")
TEMPLATES = ("t1", "t2")


def cohort_of(name: str, keys: set[int]) -> Cohort:
    """A cohort of up to 3 generations per key (draft, essay, evaluation), on two models and templates."""
    generations: list[Generation] = []
    for stage, prefix, parent in (
        (Stage.DRAFT, "d", ""),
        (Stage.ESSAY, "e", "d"),
        (Stage.EVALUATION, "v", "e"),
    ):
        for k in sorted(keys):
            generations.append(
                Generation(
                    stage,
                    f"{prefix}_{k:05d}",
                    f"{parent}_{k:05d}" if parent else "",
                    f"c{k % 7}",
                    TEMPLATES[k % 2],
                    MODELS[k // 2 % 2],
                    1,
                )
            )
    counts = {str(s): len(keys) for s in (Stage.DRAFT, Stage.ESSAY, Stage.EVALUATION)}
    return Cohort(cohort_id=name, manifest={"counts": counts}, combos=(), generations=tuple(generations))


MODES = {(Stage.ESSAY, "t2"): "copy"}


async def rows(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with store.db.execute(sql, params) as cursor:
        return [tuple(row) for row in await cursor.fetchall()]


async def assert_counts_exact(store: Store) -> None:
    kept = await rows(
        store,
        "SELECT stage, state, retired, llm_model_id, mode, n FROM generation_counts WHERE n != 0 "
        "ORDER BY 1, 2, 3, 4, 5",
    )
    scanned = await rows(
        store,
        "SELECT stage, state, retired, llm_model_id, mode, count(*) FROM generations "
        "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5",
    )
    assert kept == scanned
    assert not await rows(store, "SELECT * FROM generation_counts WHERE n < 0")
    counts = await store.counts()
    for stage, state, retired, n in await rows(
        store, "SELECT stage, state, retired, count(*) FROM generations GROUP BY 1, 2, 3"
    ):
        assert counts[stage]["retired" if retired else state] >= n


OPS = st.one_of(
    st.tuples(st.just("sync"), st.sets(st.integers(0, 11), max_size=12)),
    st.tuples(
        st.just("approve"), st.sampled_from(["draft", "essay", "evaluation"]), st.none() | st.integers(0, 5)
    ),
    st.tuples(st.just("approve_batch"), st.sampled_from(["draft", "essay", "evaluation"])),
    st.tuples(st.just("revoke"), st.sampled_from(["draft", "essay", "evaluation"])),
    st.tuples(st.just("claim"), st.sampled_from(["llm", "copy", "batch"]), st.integers(1, 6)),
    st.tuples(st.just("batch"), st.integers(1, 6)),
    st.tuples(st.just("complete"), st.sampled_from(["ok", "failed", "requeue"])),
    st.tuples(st.just("release")),
    st.tuples(st.just("requeue")),
    st.tuples(st.just("recover")),
    st.tuples(st.just("retry"), st.booleans()),
    st.tuples(
        st.just("sql"),
        st.sampled_from(
            [
                "UPDATE generations SET state = 'done' WHERE rowid % 3 = 0",
                "UPDATE generations SET state = 'failed' WHERE rowid % 4 = 1 AND state = 'queued'",
                "UPDATE generations SET state = state, retired = retired",
            ]
        ),
    ),
)


async def _apply(store: Store, op: tuple[Any, ...], claims: list[Any], n: int) -> None:
    kind = op[0]
    if kind == "sync":
        await store.sync_membership(cohort_of(f"c{n}", op[1]), MODES, f"fp{n}")
    elif kind == "approve":
        await store.approve(
            stage=op[1], template_id=None, llm_model_id=None, limit=op[2], requested_by="t", cohort_id=None
        )
    elif kind == "approve_batch":
        await store.approve(
            stage=op[1],
            template_id=None,
            llm_model_id=None,
            limit=None,
            requested_by="t",
            cohort_id=None,
            batch_keys=[(s, "m1") for s in ("draft", "essay", "evaluation")],
        )
    elif kind == "batch":
        items = await ReadyWork(store).ready(("batch", "m1"), limit=op[1])
        formed = await BatchStore(store).open_batch(
            items, endpoint="e", llm_model_id="m1", stage="draft", price_factor=0.5, lease_s=60, now=0.0
        )
        claims.extend(formed[1] if formed else [])
    elif kind == "revoke":
        await store.revoke(stage=op[1], template_id=None, llm_model_id=None, requested_by="t")
    elif kind == "claim":
        claims.extend(await ReadyWork(store).claim((op[1], None), limit=op[2], lease_s=60))
    elif kind == "complete" and claims:
        claim = claims.pop(0)
        await store.complete(
            [
                Completion(
                    gen_id=claim.generation.gen_id,
                    token=claim.token,
                    llm_model_id=claim.generation.llm_model_id,
                    ok=op[1] == "ok",
                    error_kind=None if op[1] == "ok" else "transient",
                    requeue=op[1] == "requeue",
                )
            ]
        )
    elif kind == "release":
        await store.release(claims)
        claims.clear()
    elif kind == "requeue":
        await store.requeue([c.generation.gen_id for c in claims])
        claims.clear()
    elif kind == "recover":
        await store.recover()
        claims.clear()
    elif kind == "retry":
        await store.retry(
            stage=None,
            kind=None,
            template_id=None,
            llm_model_id=None,
            fresh=op[1],
            requested_by="t",
            batch_keys=[(s, "m2") for s in ("draft", "essay", "evaluation")],
        )
    elif kind == "sql":
        async with store.transaction() as db:
            await db.execute(op[1])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=25))
def test_counts_stay_exact_after_any_sequence_of_writes(ops: list[tuple[Any, ...]]) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with Store.open(Path(tmp) / "run.sqlite") as store:
                store.sync_chunk = 5
                store.approve_chunk = 3
                claims: list[Any] = []
                for n, op in enumerate(ops):
                    await _apply(store, op, claims, n)
                    await assert_counts_exact(store)

    anyio.run(scenario)


async def test_the_migration_fills_the_counts_from_existing_rows(tmp_path: Path) -> None:
    from daydreamd.storage import migrations

    path = tmp_path / "run.sqlite"
    async with Store.open(path) as store:
        await store.sync_membership(cohort_of("a", set(range(9))), MODES, "fp")
        await store.approve(
            stage="draft", template_id=None, llm_model_id=None, limit=4, requested_by="t", cohort_id=None
        )
        async with store.transaction() as db:  # as if the counts had never existed
            await db.execute("DROP TABLE generation_counts")
            await db.execute("DROP TRIGGER generation_counts_state")
            for name in ("listing", "rank", "retired", "failed"):
                await db.execute(f"DROP INDEX generations_{name}")
            await db.execute("DELETE FROM _daydream_migrations WHERE name = 'm008_counts'")
    assert ("m008_counts", migrations.M008_COUNTS) in migrations.MIGRATIONS
    async with Store.open(path) as store:
        await assert_counts_exact(store)
        counts = await store.counts()
        assert counts["draft"]["queued"] == 4 and counts["draft"]["pending"] == 5


async def _membership(store: Store) -> list[tuple[Any, ...]]:
    return await rows(
        store,
        "SELECT gen_id, stage, stage_rank, parent_gen_id, combo_id, template_id, llm_model_id, replicate, "
        "mode, state, retired FROM generations ORDER BY gen_id",
    )


async def test_a_chunked_sync_gives_the_same_membership_as_one_piece(tmp_path: Path) -> None:
    rng = random.Random(7)
    sequence = [cohort_of(f"c{i}", set(rng.sample(range(40), rng.randint(0, 40)))) for i in range(8)]
    results: dict[str, list[SyncResult]] = {}
    memberships = {}
    for how in ("whole", "chunks", "chunks_in_memory"):
        async with Store.open(tmp_path / f"{how}.sqlite") as store:
            if how != "whole":
                store.sync_chunk = 3
                store.read_chunk = 7
            previous: Cohort | None = None
            results[how] = []
            for n, cohort in enumerate(sequence):
                diff = None
                if how == "chunks_in_memory" and previous is not None:
                    diff = membership_diff(cohort.generations, [g.gen_id for g in previous.generations])
                results[how].append(await store.sync_membership(cohort, MODES, f"fp{n}", diff=diff))
                previous = cohort
                await assert_counts_exact(store)
            memberships[how] = await _membership(store)
    assert results["whole"] == results["chunks"] == results["chunks_in_memory"]
    assert memberships["whole"] == memberships["chunks"] == memberships["chunks_in_memory"]
    live = {row[0] for row in memberships["whole"] if not row[-1]}
    assert live == {g.gen_id for g in sequence[-1].generations}


async def test_a_sync_cut_short_is_completed_by_the_next_one(tmp_path: Path) -> None:
    old, new = cohort_of("old", set(range(0, 30))), cohort_of("new", set(range(15, 45)))
    async with Store.open(tmp_path / "cut.sqlite") as store:
        await store.sync_membership(old, MODES, "fp-old")
        store.sync_chunk = 4

        class Crash(Exception):
            pass

        def crash_after_three_chunks(done: int, total: int) -> None:
            if done >= 12:
                raise Crash

        with pytest.raises(Crash):
            await store.sync_membership(new, MODES, "fp-new", progress=crash_after_three_chunks)
        await assert_counts_exact(store)
        live = {row[0] for row in await rows(store, "SELECT gen_id FROM generations WHERE retired = 0")}
        assert live != {g.gen_id for g in new.generations}  # half way
        result = await store.sync_membership(new, MODES, "fp-new")  # the restart redoes it, against SQLite
        live = {row[0] for row in await rows(store, "SELECT gen_id FROM generations WHERE retired = 0")}
        assert live == {g.gen_id for g in new.generations}
        assert result.added + 12 == 45 and result.retired == 45
        await assert_counts_exact(store)


async def test_a_sync_writes_only_the_rows_that_change(tmp_path: Path) -> None:
    before, after = cohort_of("a", set(range(100))), cohort_of("b", set(range(3, 100)) | {200, 201})
    async with Store.open(tmp_path / "diff.sqlite") as store:
        await store.sync_membership(before, MODES, "fp-a")
        async with store.transaction() as db:
            await db.execute("UPDATE generations SET updated_at = 'untouched'")
        changes = store.db.total_changes
        result = await store.sync_membership(after, MODES, "fp-b")
        assert result == SyncResult(added=6, retired=9, revived=0, total=len(after.generations))
        touched = await rows(
            store, "SELECT gen_id FROM generations WHERE updated_at != 'untouched' ORDER BY 1"
        )
        assert len(touched) == 15
        # each changed row, its counts (2 writes for a retire, 1 for an insert) and the cohort row
        assert store.db.total_changes - changes <= 15 + 9 * 2 + 6 + 1 + 9 * 0
        result = await store.sync_membership(before, MODES, "fp-a")  # back: 9 revived, 6 retired
        assert result == SyncResult(added=0, retired=6, revived=9, total=len(before.generations))


async def test_status_answers_with_the_progress_while_a_cohort_syncs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(ROOT / "data" / "1_raw", data / "1_raw")
    base = Settings()
    settings_ = replace(base, paths=replace(base.paths, data_dir=data, state_db=tmp_path / "s.sqlite"))
    async with Store.open(settings_.paths.state_db) as store:
        store.sync_chunk = 5
        provider = make_provider(
            replace(settings_.llm, provider="mock"), env={}, config_dir=None, session=None
        )
        runner = Runner(
            store=GensStore(data), provider=provider, policy=settings_.retry, rng=random.Random(1)
        )
        service = Service(settings_, store, runner)
        gate, reached = anyio.Event(), anyio.Event()
        original = store.transaction

        def building_done() -> int:
            building = service.current.building
            return building.done if building is not None else 0

        @asynccontextmanager
        async def gated() -> AsyncIterator[
            Any
        ]:  # the sync stops after its second chunk until status was read
            if building_done() >= 10 and not gate.is_set():
                reached.set()
                await gate.wait()
            async with original() as db:
                yield db

        store.transaction = gated  # type: ignore[method-assign]

        async def held_progress() -> None:
            with anyio.fail_after(30):
                await reached.wait()
            status = await service.status()
            assert status.cohort_progress is not None
            assert status.cohort_progress.phase == "syncing"
            assert 10 <= status.cohort_progress.done < status.cohort_progress.total == 63
            assert status.cohort_id is None  # nothing in force yet at a first start
            assert "building cohort: syncing" in status.cohort_progress.describe()
            gate.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(held_progress)
            await service.rebuild("startup")
        assert gate.is_set()
        status = await service.status()
        assert status.cohort_progress is None and status.cohort_id is not None
        assert sum(c.pending for c in status.stages.values()) == 63


def test_membership_diff_matches_plain_set_arithmetic_for_any_ids() -> None:
    rng = random.Random(11)
    cohort = cohort_of("now", set(rng.sample(range(60), 35)))
    before = [g.gen_id for g in cohort_of("before", set(rng.sample(range(60), 35))).generations]
    odd = ["", "x", "é9", "ab", "zab", "00", *[f"legacy-{n}" for n in range(30)]]  # short and shared endings
    live = before + odd
    diff = membership_diff(cohort.generations, live)
    new_ids = {g.gen_id for g in cohort.generations}
    assert [g.gen_id for g in diff.add] == [g.gen_id for g in cohort.generations if g.gen_id not in set(live)]
    assert list(diff.retire) == [gen_id for gen_id in live if gen_id not in new_ids]
    assert set(odd) <= set(diff.retire) and 0 < len(diff.add) < len(cohort.generations)
    assert len(odd) < len(diff.retire) < len(live)
