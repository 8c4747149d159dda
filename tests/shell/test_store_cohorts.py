"""One run state for many cohorts: the default cohort and named ones share the generations table.

On real SQLite files (no mocks):

* a generation is retired only when no cohort holds it (the default nor any named one), and a
  cohort that takes in a generation another one holds shares its row (done work stays done);
* counts, listings, approvals, revocations and retries take a ``scope`` (None: the default cohort,
  a name: that cohort) and touch nothing outside it;
* dropping a named cohort retires only what no other cohort holds;
* the migration makes every live row of an existing database a member of the default cohort;
* after every operation ``generation_counts`` equals a ``GROUP BY`` over ``generations``, every
  scope's counts equal a scan of its rows, and ``retired = 1`` exactly where no cohort holds a row.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daydreamd.core.cohort import Cohort, Generation
from daydreamd.core.stages import STAGES, Stage, State
from daydreamd.storage import migrations
from daydreamd.storage.ready import ReadyWork
from daydreamd.storage.store import Completion, NamedCohortRecord, Store, SyncResult

MODES = {(Stage.ESSAY, "t2"): "copy"}


def gens(keys: Iterable[int]) -> list[Generation]:
    """Three generations per key (draft, essay, evaluation), drafts first, on two templates and models."""
    out: list[Generation] = []
    for stage, prefix, parent in (
        (Stage.DRAFT, "d", ""),
        (Stage.ESSAY, "e", "d"),
        (Stage.EVALUATION, "v", "e"),
    ):
        for k in sorted(keys):
            out.append(
                Generation(
                    stage,
                    f"{prefix}_{k:05d}",
                    f"{parent}_{k:05d}" if parent else "",
                    f"c{k % 7}",
                    ("t1", "t2")[k % 2],
                    ("m1", "m2")[k // 2 % 2],
                    1,
                )
            )
    return out


def default(keys: Iterable[int], cohort_id: str = "default") -> Cohort:
    keys = set(keys)
    counts = {str(s): len(keys) for s in STAGES}
    return Cohort(cohort_id=cohort_id, manifest={"counts": counts}, combos=(), generations=tuple(gens(keys)))


async def named(store: Store, name: str, keys: Iterable[int]) -> SyncResult:
    keys = set(keys)
    return await store.sync_named(
        name, gens(keys), MODES, key=f"key-{sorted(keys)}", counts={str(s): len(keys) for s in STAGES}
    )


async def rows(store: Store, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with store.db.execute(sql, params) as cursor:
        return [tuple(row) for row in await cursor.fetchall()]


async def ids(store: Store, where: str, params: tuple[Any, ...] = ()) -> set[str]:
    return {row[0] for row in await rows(store, f"SELECT gen_id FROM generations WHERE {where}", params)}


def empty_counts() -> dict[str, dict[str, int]]:
    return {str(s): {str(state): 0 for state in State} for s in STAGES}


async def assert_exact(store: Store) -> None:
    """The counts table, every scope's counts and the membership marks all agree with a scan."""
    kept = await rows(
        store,
        "SELECT stage, state, retired, llm_model_id, mode, n FROM generation_counts WHERE n != 0 "
        "ORDER BY 1, 2, 3, 4, 5",
    )
    scanned = await rows(
        store,
        "SELECT stage, state, retired, llm_model_id, mode, count(*) FROM generations GROUP BY 1, 2, 3, 4, 5 "
        "ORDER BY 1, 2, 3, 4, 5",
    )
    assert kept == scanned
    # retired = 1 exactly when no cohort holds the row; members always have a row
    assert not await rows(
        store,
        "SELECT gen_id FROM generations WHERE retired != (in_default = 0 AND NOT EXISTS "
        "(SELECT 1 FROM cohort_members m WHERE m.gen_id = generations.gen_id))",
    )
    assert not await rows(
        store,
        "SELECT m.gen_id FROM cohort_members m LEFT JOIN generations g USING (gen_id) WHERE g.gen_id IS NULL",
    )
    names = [row[0] for row in await rows(store, "SELECT DISTINCT cohort FROM cohort_members")]
    scopes: list[tuple[str | None, str, tuple[Any, ...]]] = [(None, "g.in_default = 1", ())]
    scopes += [
        (name, "g.gen_id IN (SELECT gen_id FROM cohort_members WHERE cohort = ?)", (name,)) for name in names
    ]
    for scope, member, params in scopes:
        expected = empty_counts()
        for stage, state, n in await rows(
            store, f"SELECT stage, state, count(*) FROM generations g WHERE {member} GROUP BY 1, 2", params
        ):
            expected[stage][state] = n
        if scope is None:
            for stage, n in await rows(
                store, "SELECT stage, count(*) FROM generations WHERE retired = 1 GROUP BY 1"
            ):
                expected[stage][State.RETIRED] = n
        assert await store.counts(scope=scope) == expected, scope
        by_model = await rows(
            store,
            f"SELECT stage, state, llm_model_id, mode, count(*) FROM generations g WHERE {member} "
            "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            params,
        )
        assert [tuple(r.values()) for r in await store.counts_by_model(scope=scope)] == by_model, scope
        failures: dict[str, dict[str, int]] = {}
        for stage, kind, n in await rows(
            store,
            f"SELECT stage, coalesce(error_kind, 'unknown'), count(*) FROM generations g WHERE {member} "
            "AND state = 'failed' GROUP BY 1, 2",
            params,
        ):
            failures.setdefault(stage, {})[kind] = n
        assert await store.failures_by_kind(scope=scope) == failures, scope


def live_total(counts: dict[str, dict[str, int]]) -> int:
    return sum(n for by_state in counts.values() for state, n in by_state.items() if state != State.RETIRED)


async def set_state(store: Store, state: str, gen_ids: Iterable[str], kind: str | None = None) -> None:
    async with store.transaction() as db:  # a state change, counted by the trigger as the pool's are
        await db.executemany(
            "UPDATE generations SET state = ?, error_kind = ? WHERE gen_id = ?",
            [(state, kind, gen_id) for gen_id in gen_ids],
        )


# -- sharing and retiring -------------------------------------------------------------------------


async def test_a_shared_generation_is_retired_only_when_no_cohort_holds_it(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "run.sqlite") as store:
        assert await store.sync_membership(default(range(6)), MODES, "fp1") == SyncResult(18, 0, 0, 18)
        result = await named(store, "top", range(3, 9))  # 3, 4, 5 shared; 6, 7, 8 new
        assert result == SyncResult(added=9, retired=0, revived=0, total=18, joined=9, kept=0)
        await assert_exact(store)

        # the default cohort lets 3 go: the named one still holds it, so it stays live
        result = await store.sync_membership(default({0, 1, 2, 4, 5}), MODES, "fp2")
        assert result == SyncResult(added=0, retired=0, revived=0, total=15, joined=0, kept=3)
        assert await ids(store, "gen_id LIKE '%_00003' AND retired = 0 AND in_default = 0") == {
            "d_00003",
            "e_00003",
            "v_00003",
        }
        assert "d_00003" not in await store.live_gen_ids()
        assert "d_00003" in await store.named_gen_ids("top")
        await assert_exact(store)

        # the named cohort lets 4 go: the default one still holds it
        result = await named(store, "top", {3, 5, 6, 7, 8})
        assert result == SyncResult(added=0, retired=0, revived=0, total=15, joined=0, kept=3)
        assert await ids(store, "gen_id LIKE '%_00004' AND retired = 0 AND in_default = 1") == {
            "d_00004",
            "e_00004",
            "v_00004",
        }
        await assert_exact(store)

        # then each lets the other one go too: now both are retired, and only they
        result = await named(store, "top", {5, 6, 7, 8})
        assert result == SyncResult(added=0, retired=3, revived=0, total=12, joined=0, kept=0)
        result = await store.sync_membership(default({0, 1, 2, 5}), MODES, "fp3")
        assert result == SyncResult(added=0, retired=3, revived=0, total=12, joined=0, kept=0)
        assert await ids(store, "retired = 1") == {f"{p}_0000{k}" for p in "dev" for k in (3, 4)}
        await assert_exact(store)

        # a retired row a named cohort takes back is revived outside the default cohort
        result = await named(store, "top", {3, 5, 6, 7, 8})
        assert result == SyncResult(added=0, retired=0, revived=3, total=15, joined=0, kept=0)
        assert await ids(store, "gen_id LIKE '%_00003' AND retired = 0 AND in_default = 0") == {
            "d_00003",
            "e_00003",
            "v_00003",
        }
        # ... and the default cohort taking in a row a named one holds only marks it
        result = await store.sync_membership(default({0, 1, 2, 3, 5}), MODES, "fp4")
        assert result == SyncResult(added=0, retired=0, revived=0, total=15, joined=3, kept=0)
        assert await ids(store, "gen_id LIKE '%_00003' AND in_default = 1") == {
            "d_00003",
            "e_00003",
            "v_00003",
        }
        assert await store.generations(
            stage=None, state="retired", limit=100, scope="top"
        ) == await store.generations(stage=None, state="retired", limit=100)
        await assert_exact(store)


async def test_a_named_cohort_of_finished_generations_is_finished_at_once(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "run.sqlite") as store:
        await store.sync_membership(default(range(10)), MODES, "fp")
        done = [g.gen_id for g in gens(range(5))]
        await set_state(store, "done", done)
        async with store.transaction() as db:
            await db.execute("UPDATE generations SET updated_at = 'untouched'")
        before = await rows(store, "SELECT count(*) FROM generations")

        result = await named(store, "rejudge-top5", range(5))
        assert result == SyncResult(added=0, retired=0, revived=0, total=15, joined=15, kept=0)
        assert await rows(store, "SELECT count(*) FROM generations") == before  # no row written
        assert not await ids(store, "updated_at != 'untouched'")
        counts = await store.counts(scope="rejudge-top5")
        assert {stage: counts[stage]["done"] for stage in counts} == {"draft": 5, "essay": 5, "evaluation": 5}
        assert live_total(counts) == 15
        await assert_exact(store)

        # only the missing ones are inserted, pending, outside the default cohort
        result = await named(store, "rejudge-top5", {0, 1, 2, 3, 4, 40, 41})
        assert result == SyncResult(added=6, retired=0, revived=0, total=21, joined=0, kept=0)
        assert await ids(store, "updated_at != 'untouched'") == {
            f"{p}_000{k}" for p in "dev" for k in (40, 41)
        }
        assert await ids(store, "in_default = 0 AND retired = 0 AND state = 'pending'") == {
            f"{p}_000{k}" for p in "dev" for k in (40, 41)
        }
        counts = await store.counts(scope="rejudge-top5")
        assert counts["draft"] == {**empty_counts()["draft"], "done": 5, "pending": 2}
        assert await store.named_cohorts() == {
            "rejudge-top5": NamedCohortRecord(
                "rejudge-top5",
                "key-[0, 1, 2, 3, 4, 40, 41]",
                (await store.named_cohorts())["rejudge-top5"].first_seen,
                (await store.named_cohorts())["rejudge-top5"].last_applied,
                {"draft": 7, "essay": 7, "evaluation": 7},
            )
        }
        await assert_exact(store)


async def test_the_named_cohorts_record_keeps_its_first_sighting(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "run.sqlite") as store:
        assert await store.named_cohorts() == {}
        await named(store, "a", {1})
        first = (await store.named_cohorts())["a"]
        await anyio.sleep(0.002)
        await named(store, "a", {1, 2})
        second = (await store.named_cohorts())["a"]
        assert second.first_seen == first.first_seen and second.last_applied > first.last_applied
        assert (second.key, second.counts) == ("key-[1, 2]", {"draft": 2, "essay": 2, "evaluation": 2})


async def test_default_scope_reads_leave_out_rows_only_named_cohorts_hold(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "run.sqlite") as store:
        await store.sync_membership(default(range(4)), MODES, "fp")
        await named(store, "extra", {2, 3, 10, 11})  # 2, 3 shared; 10, 11 only named
        await set_state(store, "failed", ["d_00000", "d_00002", "d_00010"], kind="timeout")
        await store.sync_membership(default({0, 1, 2, 3, 5}), MODES, "fp2")  # 4 was never there
        await assert_exact(store)

        counts = await store.counts()
        assert counts["draft"] == {**empty_counts()["draft"], "pending": 3, "failed": 2}
        assert live_total(counts) == 15
        extra = await store.counts(scope="extra")
        assert extra["draft"] == {**empty_counts()["draft"], "pending": 2, "failed": 2}
        assert await store.failures_by_kind() == {"draft": {"timeout": 2}}
        assert await store.failures_by_kind(scope="extra") == {"draft": {"timeout": 2}}
        assert sum(r["n"] for r in await store.counts_by_model()) == 15
        assert sum(r["n"] for r in await store.counts_by_model(scope="extra")) == 12

        listed = {r["gen_id"] for r in await store.generations(stage="draft", state=None, limit=100)}
        assert listed == {"d_00000", "d_00001", "d_00002", "d_00003", "d_00005"}
        listed = {r["gen_id"] for r in await store.generations(stage="draft", state="pending", limit=100)}
        assert listed == {"d_00001", "d_00003", "d_00005"}
        failed = [
            r["gen_id"] for r in await store.generations(stage=None, state="failed", limit=100, scope="extra")
        ]
        assert failed == ["d_00002", "d_00010"]
        every = [
            r["gen_id"] for r in await store.generations(stage=None, state=None, limit=100, scope="extra")
        ]
        assert every[:4] == ["d_00002", "d_00003", "d_00010", "d_00011"] and len(every) == 12  # parents first


# -- approvals, revocations, retries ---------------------------------------------------------------


async def _approvals(store: Store) -> list[tuple[Any, ...]]:
    return await rows(store, "SELECT action, cohort_id, matched FROM approvals ORDER BY id")


async def test_an_approval_queues_only_its_cohorts_pending_rows(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "run.sqlite") as store:
        store.approve_chunk = 2
        await store.sync_membership(default(range(6)), MODES, "fp")
        await named(store, "n", {4, 5, 20, 21, 22})  # 4, 5 shared
        await set_state(store, "done", ["d_00005"])
        scope = {"stage": "draft", "template_id": None, "llm_model_id": None}

        assert await store.pending_ids(**scope, limit=None, scope="n") == [
            "d_00004",
            "d_00020",
            "d_00021",
            "d_00022",
        ]
        _, matched = await store.approve(**scope, limit=3, requested_by="t", cohort_id="n", scope="n")
        assert matched == 3
        assert await ids(store, "state = 'queued'") == {"d_00004", "d_00020", "d_00021"}
        await assert_exact(store)

        assert await store.pending_ids(**scope, limit=None) == ["d_00000", "d_00001", "d_00002", "d_00003"]
        _, matched = await store.approve(**scope, limit=None, requested_by="t", cohort_id="default")
        assert matched == 4  # d_00022 (only the named cohort's) stays pending
        assert await ids(store, "state = 'pending' AND stage = 'draft'") == {"d_00022"}
        assert await _approvals(store) == [("approve", "n", 3), ("approve", "default", 4)]
        await assert_exact(store)

        # the pool runs named work like any other (it runs every live row)
        claimed = await ReadyWork(store).claim(("llm", None), limit=100, lease_s=60)
        assert {c.generation.gen_id for c in claimed} >= {"d_00020", "d_00021"}
        for claim in claimed:
            await store.complete(
                [
                    Completion(
                        gen_id=claim.generation.gen_id,
                        token=claim.token,
                        llm_model_id=claim.generation.llm_model_id,
                        ok=False,
                        error_kind="timeout",
                    )
                ]
            )
        await assert_exact(store)
        assert (await store.counts(scope="n"))["draft"]["failed"] == 3


async def test_revoke_and_retry_touch_only_their_cohort(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "run.sqlite") as store:
        await store.sync_membership(default(range(4)), MODES, "fp")
        await named(store, "n", {3, 10, 11})  # 3 shared
        scope = {"stage": "draft", "template_id": None, "llm_model_id": None}
        await store.approve(**scope, limit=None, requested_by="t", cohort_id=None)
        await store.approve(**scope, limit=None, requested_by="t", cohort_id="n", scope="n")
        assert await ids(store, "state = 'queued'") == {f"d_000{k:02d}" for k in (0, 1, 2, 3, 10, 11)}

        assert await store.revoke(**scope, requested_by="t", cohort_id="n", scope="n") == 3
        assert await ids(store, "state = 'queued'") == {"d_00000", "d_00001", "d_00002"}
        await assert_exact(store)
        await store.approve(**scope, limit=None, requested_by="t", cohort_id="n", scope="n")
        assert await store.revoke(**scope, requested_by="t") == 4  # the default's: 0..3, not 10 or 11
        assert await ids(store, "state = 'queued'") == {"d_00010", "d_00011"}
        await assert_exact(store)

        failed = ["d_00000", "d_00003", "d_00010", "e_00011"]
        await set_state(store, "failed", failed, kind="timeout")
        retry = {"stage": None, "kind": None, "template_id": None, "llm_model_id": None, "fresh": True}
        assert await store.retry(**retry, requested_by="t", cohort_id="n", scope="n") == 3
        assert await ids(store, "state = 'failed'") == {"d_00000"}
        await assert_exact(store)
        await set_state(store, "failed", failed, kind="timeout")
        assert await store.retry(**retry, requested_by="t") == 2  # the default's: 0 and 3
        assert await ids(store, "state = 'failed'") == {"d_00010", "e_00011"}
        await assert_exact(store)

        assert [a[:2] for a in await _approvals(store)] == [
            ("approve", None),
            ("approve", "n"),
            ("revoke", "n"),
            ("approve", "n"),
            ("revoke", None),
            ("retry", "n"),
            ("retry", None),
        ]


async def test_dropping_a_named_cohort_retires_only_what_no_other_cohort_holds(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "run.sqlite") as store:
        store.sync_chunk = 2  # the drop goes in chunks
        await store.sync_membership(default(range(3)), MODES, "fp")
        await named(store, "a", {1, 2, 20, 21})
        await named(store, "b", {2, 21, 30})
        await store.sync_membership(default({0, 1}), MODES, "fp2")  # 2 now only named
        await assert_exact(store)

        assert await store.drop_named("a") == 3  # 20; 1 (default) 2 and 21 (b) stay live
        assert await ids(store, "retired = 1") == {"d_00020", "e_00020", "v_00020"}
        assert set(await store.named_cohorts()) == {"b"}
        assert await store.named_gen_ids("a") == []
        assert await store.counts(scope="a") == empty_counts()
        await assert_exact(store)

        assert await store.drop_named("b") == 9  # 2, 21, 30
        assert await store.drop_named("b") == 0
        assert await store.named_cohorts() == {}
        assert await ids(store, "retired = 0") == {g.gen_id for g in gens({0, 1})}
        assert not await rows(store, "SELECT * FROM cohort_members")
        await assert_exact(store)


async def test_a_named_sync_cut_short_is_completed_by_the_next_one(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "run.sqlite") as store:
        await store.sync_membership(default(range(10)), MODES, "fp")
        await named(store, "n", range(0, 10))
        store.sync_chunk = 4

        class Crash(Exception):
            pass

        def crash(done: int, total: int) -> None:
            if done >= 8:
                raise Crash

        with pytest.raises(Crash):
            keys = set(range(5, 20))
            await store.sync_named("n", gens(keys), MODES, key="k2", counts={}, progress=crash)
        await assert_exact(store)
        assert (await store.named_cohorts())["n"].key != "k2"  # recorded only when whole
        result = await named(store, "n", range(5, 20))
        assert result.added + 8 == 30 and result.retired == 0 and result.kept == 15
        assert set(await store.named_gen_ids("n")) == {g.gen_id for g in gens(range(5, 20))}
        await assert_exact(store)


# -- the migration ---------------------------------------------------------------------------------


async def test_the_migration_makes_every_live_row_a_default_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.sqlite"
    names = [name for name, _ in migrations.MIGRATIONS]
    old = migrations.MIGRATIONS[: names.index("m009_named_cohorts")]
    monkeypatch.setattr(migrations, "MIGRATIONS", old)
    async with Store.open(path):
        pass
    with closing(sqlite3.connect(path)) as conn:  # rows as the old schema's sync left them
        conn.executemany(
            "INSERT INTO generations (gen_id, stage, stage_rank, parent_gen_id, combo_id, template_id, "
            "llm_model_id, replicate, mode, state, retired, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'llm', ?, ?, 'x', 'x')",
            [
                (
                    g.gen_id,
                    g.stage.value,
                    STAGES.index(g.stage),
                    g.parent_gen_id,
                    g.combo_id,
                    g.template_id,
                    g.llm_model_id,
                    g.replicate,
                    "done" if g.stage is Stage.DRAFT else "pending",
                    int(g.gen_id.endswith(("4", "5"))),
                )
                for g in gens(range(6))
            ],
        )
        conn.execute("DELETE FROM generation_counts")
        conn.execute(
            "INSERT INTO generation_counts SELECT stage, state, retired, llm_model_id, mode, count(*) "
            "FROM generations GROUP BY 1, 2, 3, 4, 5"
        )
        conn.commit()
    monkeypatch.undo()

    async with Store.open(path) as store:
        assert await rows(store, "SELECT name FROM _daydream_migrations WHERE name = 'm009_named_cohorts'")
        assert await ids(store, "in_default = 1") == {g.gen_id for g in gens(range(4))}
        assert await ids(store, "in_default = 0") == {g.gen_id for g in gens({4, 5})}
        assert sorted(await store.live_gen_ids()) == sorted(g.gen_id for g in gens(range(4)))
        await assert_exact(store)
        counts = await store.counts()
        assert counts["draft"] == {**empty_counts()["draft"], "done": 4, "retired": 2}
        # the same cohort again changes nothing; a named one over it shares its rows
        assert await store.sync_membership(default(range(4)), MODES, "fp") == SyncResult(0, 0, 0, 12)
        assert await named(store, "n", {3, 4}) == SyncResult(0, 0, 3, 6, joined=3)
        assert (await store.counts(scope="n"))["draft"]["done"] == 2
        await assert_exact(store)


async def test_a_row_inserted_with_the_defaults_is_a_live_default_member(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "run.sqlite") as store:
        async with store.transaction() as db:
            await db.execute(
                "INSERT INTO generations (gen_id, stage, stage_rank, parent_gen_id, combo_id, template_id, "
                "llm_model_id, replicate, mode, state, created_at, updated_at) "
                "VALUES ('g1', 'draft', 0, '', 'c', 't', 'm', 0, 'llm', 'pending', 'x', 'x')"
            )
        assert await store.live_gen_ids() == ["g1"]
        listed = await store.generations(
            stage="draft", state="pending", limit=10
        )  # (inserts are not counted)
        assert [r["gen_id"] for r in listed] == ["g1"]


# -- any sequence of operations -------------------------------------------------------------------

KEYS = st.sets(st.integers(0, 9), max_size=8)
SCOPES = st.sampled_from([None, "a", "b"])
OPS = st.one_of(
    st.tuples(st.just("default"), KEYS),
    st.tuples(st.just("named"), st.sampled_from(["a", "b"]), KEYS),
    st.tuples(st.just("drop"), st.sampled_from(["a", "b"])),
    st.tuples(st.just("approve"), SCOPES, st.sampled_from(["draft", "essay"]), st.none() | st.integers(0, 3)),
    st.tuples(st.just("revoke"), SCOPES, st.sampled_from(["draft", "essay"])),
    st.tuples(st.just("fail"), st.integers(0, 9)),
    st.tuples(st.just("retry"), SCOPES),
    st.tuples(st.just("done"), st.integers(0, 9)),
)


async def _apply(store: Store, op: tuple[Any, ...], n: int) -> None:
    kind = op[0]
    if kind == "default":
        await store.sync_membership(default(op[1], f"c{n}"), MODES, f"fp{n}")
    elif kind == "named":
        await named(store, op[1], op[2])
    elif kind == "drop":
        await store.drop_named(op[1])
    elif kind == "approve":
        before = await store.pending_ids(
            stage=op[2], template_id=None, llm_model_id=None, limit=op[3], scope=op[1]
        )
        await store.approve(
            stage=op[2],
            template_id=None,
            llm_model_id=None,
            limit=op[3],
            requested_by="t",
            cohort_id=op[1],
            scope=op[1],
        )
        if before:
            queued = await ids(
                store,
                "state = 'queued' AND gen_id IN (SELECT value FROM json_each(?))",
                (json.dumps(before),),
            )
            assert queued == set(before)
    elif kind == "revoke":
        await store.revoke(stage=op[2], template_id=None, llm_model_id=None, requested_by="t", scope=op[1])
    elif kind == "fail":
        await set_state(store, "failed", [f"d_{op[1]:05d}"], kind="timeout")
    elif kind == "retry":
        await store.retry(
            stage=None,
            kind=None,
            template_id=None,
            llm_model_id=None,
            fresh=False,
            requested_by="t",
            scope=op[1],
        )
    elif kind == "done":
        await set_state(store, "done", [f"e_{op[1]:05d}"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=20), chunk=st.sampled_from([2, 5, 1000]))
def test_counts_and_marks_stay_exact_after_any_sequence_of_writes(
    ops: list[tuple[Any, ...]], chunk: int
) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            async with Store.open(Path(tmp) / "run.sqlite") as store:
                store.sync_chunk = chunk
                store.approve_chunk = chunk
                store.read_chunk = chunk
                for n, op in enumerate(ops):
                    await _apply(store, op, n)
                    await assert_exact(store)

    anyio.run(scenario)


async def test_queued_work_does_not_follow_a_row_into_a_cohort_that_did_not_approve_it(
    tmp_path: Path,
) -> None:
    scope = {"stage": "draft", "template_id": None, "llm_model_id": None, "limit": None, "requested_by": "t"}
    async with Store.open(tmp_path / "run.sqlite") as store:
        # revived: queued by the default cohort, retired by an edit, then named by a spec
        await store.sync_membership(default(range(4)), MODES, "fp1")
        await store.approve(**scope, cohort_id="cohort_aaaa")
        await store.sync_membership(default(range(2)), MODES, "fp2")  # d_00002, d_00003 retired, queued
        await named(store, "n", {2, 3})
        assert await ids(store, "state = 'queued' AND stage = 'draft'") == {"d_00000", "d_00001"}
        assert (await store.counts(scope="n"))["draft"]["pending"] == 2
        await assert_exact(store)

        # kept: approved by the default cohort, which then drops them while the named cohort holds them
        await named(store, "n", {0, 2, 3})
        await store.sync_membership(default(range(1)), MODES, "fp3")  # d_00001 retired; d_00000 stays
        assert await ids(store, "state = 'queued' AND retired = 0") == {"d_00000"}  # still the default's
        await store.sync_membership(default(()), MODES, "fp4")  # d_00000 kept by n only
        assert await ids(store, "state = 'queued' AND retired = 0") == set()
        await assert_exact(store)

        # a named cohort's approval does not follow rows it leaves into the default cohort
        await store.sync_membership(default({0, 2}), MODES, "fp5")
        await store.approve(**scope, cohort_id="n", scope="n")
        assert await ids(store, "state = 'queued'") >= {"d_00000", "d_00002", "d_00003"}
        await named(store, "n", {3})
        assert "d_00000" not in await ids(store, "state = 'queued' AND retired = 0")
        assert "d_00003" in await ids(store, "state = 'queued' AND retired = 0")  # still n's
        await assert_exact(store)


async def test_a_sync_cut_short_is_never_taken_for_done(tmp_path: Path) -> None:
    class Crash(Exception):
        pass

    def crash(done: int, total: int) -> None:
        raise Crash

    async with Store.open(tmp_path / "run.sqlite") as store:
        store.sync_chunk = 2
        with pytest.raises(Crash):  # the first sync of a new cohort, cut short
            await store.sync_named("n", gens(range(5)), MODES, key="k1", counts={}, progress=crash)
        record = (await store.named_cohorts())["n"]
        assert record.key == ""  # listed (a removed spec drops it), not synced
        await named(store, "n", range(5))
        assert (await store.named_cohorts())["n"].key != ""


async def test_armed_work_given_back_after_a_sync_does_not_follow_its_row_into_another_cohort(
    tmp_path: Path,
) -> None:
    """A row armed (running, not yet sent) while a sync moves it out of the cohort that approved it
    (a named cohort still holds it) is given back as pending, not queued under that approval."""
    scope: dict[str, Any] = {
        "stage": "draft",
        "template_id": None,
        "llm_model_id": None,
        "limit": None,
        "requested_by": "t",
    }
    async with Store.open(tmp_path / "run.sqlite") as store:
        await store.sync_membership(default({0, 2}), MODES, "fp1")
        await named(store, "n", {0})  # n holds d_00000 too, never approved it
        await store.approve(**scope, cohort_id="cohort_aaaa")  # the default cohort approves its drafts
        work = ReadyWork(store)
        rows = await work.ready(("llm", "m1"), limit=10)
        armed = [r for r in rows if r.gen_id == "d_00000"]
        assert armed
        (claim,) = await work.start(armed, lease_s=3600, now=0.0)  # armed: running, not sent yet
        # the default cohort drops d_00000 (kept by n): its unqueue must send it back to pending ...
        await store.sync_membership(default({2}), MODES, "fp2")
        # ... the pool then calls the armed work off (wake after the rebuild) and gives it back
        await store.release([claim])
        ready_now = {r.gen_id for r in await work.ready(("llm", "m1"), limit=10)}
        # control: without arming, the same sequence leaves d_00000 pending (see
        # test_queued_work_does_not_follow_a_row_into_a_cohort_that_did_not_approve_it)
        assert "d_00000" not in ready_now, (
            "d_00000 is ready again, under the default cohort's approval, for n"
        )
