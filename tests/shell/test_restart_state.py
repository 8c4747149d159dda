"""What a restart keeps from the run state: the rate windows, the pauses, and a state file that
is unreadable is refused (or, asked to, set aside), never silently replaced.

The service-level checks (a real process restarted mid-run) are in
``tests/integration/test_startup.py``; here each piece is driven directly on real SQLite files.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from daydreamd.core.config import PoolSettings, Settings
from daydreamd.daemon.limits import RPM_WINDOW_S, PoolLimits
from daydreamd.daemon.ratelimit import SlidingWindow
from daydreamd.daemon.settings import LiveSettings
from daydreamd.storage.restart_memory import PAUSES_FACT, RECENT_REQUESTS_FACT, RestartMemory
from daydreamd.storage.statefile import UnreadableStateError
from daydreamd.storage.store import AttemptRow, Completion, Store
from tests.core.test_ratelimit import FakeClock

NOW = 1_700_000_000.0


# -- the window ----------------------------------------------------------------------------------


def test_a_seeded_window_holds_the_budget_until_the_seeds_leave_it() -> None:
    clock = FakeClock()
    window = SlidingWindow(3, 60.0, clock=clock)
    window.seed([clock.t - 50.0, clock.t - 10.0, clock.t + 30.0, float("nan"), clock.t - 60.0])
    # the one 60 s old has left; the future one counts as now; NaN is dropped
    assert window.stamps() == [clock.t - 50.0, clock.t - 10.0, clock.t]
    assert window.wait_time() == pytest.approx(10.0)
    clock.advance(10.0)
    assert window.try_acquire() == 0.0
    assert window.try_acquire() > 0.0


def test_seeds_merge_in_time_order_with_what_the_window_holds() -> None:
    clock = FakeClock()
    window = SlidingWindow(None, 60.0, clock=clock)
    window.try_acquire()
    clock.advance(5.0)
    window.seed([clock.t - 20.0, clock.t - 1.0])
    assert window.stamps() == [clock.t - 20.0, clock.t - 5.0, clock.t - 1.0]


def _limits(rpm: int = 3, provider_rpm: int = 0) -> PoolLimits:
    pool = PoolSettings(requests_per_minute=rpm, provider_requests_per_minute=provider_rpm)
    providers = {"a1": "p", "a2": "p", "b1": "q"}
    return PoolLimits(LiveSettings(Settings(pool=pool)), lambda model: providers.get(model, ""))


def test_pool_limits_seed_model_and_provider_windows_from_unix_times() -> None:
    limits = _limits(rpm=3, provider_rpm=4)
    now = time.time()
    limits.seed({"a1": [now - 30.0, now - 30.0, now - 30.0], "a2": [now - 20.0], "b1": [now - 70.0]})
    a1, p = limits.windows("a1")
    assert a1.in_window() == 3 and p.in_window() == 4  # the provider's holds both of its models'
    assert 30.0 < a1.wait_time() <= RPM_WINDOW_S - 29.0  # the oldest leaves 61 s after it was sent
    assert limits.windows("a2")[0].in_window() == 1
    b1, q = limits.windows("b1")
    assert b1.in_window() == 0 and q.in_window() == 0  # 70 s old: out of every window


def test_recent_requests_keep_seeds_of_models_never_used_and_round_trip() -> None:
    limits = _limits()
    now = time.time()
    limits.seed({"a1": [now - 10.0], "b1": [now - 5.0, now - 100.0]})
    limits.windows("a1")[0].try_acquire()
    saved = limits.recent_requests()
    assert sorted(saved) == ["a1", "b1"]
    assert saved["a1"][0] == pytest.approx(now - 10.0, abs=0.05)
    assert saved["a1"][1] == pytest.approx(time.time(), abs=0.5)
    assert saved["b1"] == [pytest.approx(now - 5.0, abs=0.05)]  # never used here, still saved

    again = _limits()
    again.seed(saved)
    assert again.windows("a1")[0].in_window() == 2
    assert again.windows("b1")[0].in_window() == 1


# -- recent requests in the run state ------------------------------------------------------------


async def _row(store: Store, gen_id: str, model: str, *, state: str, mode: str = "llm") -> None:
    async with store.transaction() as db:
        await db.execute(
            "INSERT INTO generations (gen_id, stage, stage_rank, parent_gen_id, combo_id, template_id, "
            "llm_model_id, replicate, mode, state, created_at, updated_at) "
            "VALUES (?, 'draft', 0, '', 'c', 't', ?, 0, ?, ?, 'x', 'x')",
            (gen_id, model, mode, state),
        )


async def _attempts(store: Store, gen_id: str, model: str, finished: list[float]) -> None:
    async with store.transaction() as db:
        await db.executemany(
            "INSERT INTO attempts (gen_id, llm_model_id, attempt, started_at, finished_at, outcome) "
            "VALUES (?, ?, 1, ?, ?, 'ok')",
            [(gen_id, model, t - 1.0, t) for t in finished],
        )


async def test_recent_requests_come_from_attempts_and_dead_claims(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "s.sqlite") as store:
        await _attempts(store, "g1", "m", [NOW - 100.0, NOW - 59.0, NOW - 1.0])
        await _attempts(store, "g2", "n", [NOW - 0.5])
        await _row(store, "r1", "m", state="running")
        await _row(store, "r2", "m", state="running", mode="copy")  # a copy calls nothing
        await _row(store, "q1", "m", state="queued")
        await _row(store, "b1", "m", state="done", mode="batch")
        await _attempts(store, "b1", "m", [NOW - 2.0])  # a batch's call: not the online windows'
        recent = await RestartMemory(store).recent_requests(61.0, now=NOW)
        assert recent == {"m": [NOW - 59.0, NOW - 1.0, NOW], "n": [NOW - 0.5]}
        async with store.db.execute(
            "EXPLAIN QUERY PLAN SELECT llm_model_id, finished_at FROM attempts WHERE finished_at > ?", (NOW,)
        ) as cursor:
            assert "attempts_finished" in " ".join(str(row[3]) for row in await cursor.fetchall())


async def test_saved_windows_replace_the_attempts_they_already_hold(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "s.sqlite") as store:
        await _attempts(store, "g1", "m", [NOW - 30.0, NOW - 20.0])
        # a clean stop at NOW - 15 saved its windows: exact send times, one request unanswered
        await RestartMemory(store).save_recent_requests(
            {"m": [NOW - 31.0, NOW - 21.0, NOW - 16.0], "old": [NOW - 99.0]}
        )
        await store.set_fact(
            RECENT_REQUESTS_FACT,
            json.dumps(
                {**json.loads(await store.get_fact(RECENT_REQUESTS_FACT) or ""), "saved_at": NOW - 15.0}
            ),
        )
        await _attempts(store, "g2", "m", [NOW - 5.0])  # a later process, killed before it could save
        assert await RestartMemory(store).recent_requests(61.0, now=NOW) == {
            "m": [NOW - 31.0, NOW - 21.0, NOW - 16.0, NOW - 5.0]
        }

        await store.set_fact(RECENT_REQUESTS_FACT, "not json")  # a damaged record: the attempts count
        assert await RestartMemory(store).recent_requests(61.0, now=NOW) == {
            "m": [NOW - 30.0, NOW - 20.0, NOW - 5.0]
        }


async def test_pauses_are_kept_in_the_run_state(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    async with Store.open(path) as store:
        assert await RestartMemory(store).pauses() == (False, [])
        await RestartMemory(store).save_pauses(False, {"b", "a"})
    async with Store.open(path) as store:
        assert await RestartMemory(store).pauses() == (False, ["a", "b"])
        await RestartMemory(store).save_pauses(True, [])
        assert await RestartMemory(store).pauses() == (True, [])
        await store.set_fact(PAUSES_FACT, "[")  # unreadable: paused rather than running
        assert await RestartMemory(store).pauses() == (True, [])


# -- an unreadable state file --------------------------------------------------------------------


async def _real_state(path: Path) -> None:
    """A state with some rows in it, closed cleanly (its WAL checkpointed away)."""
    async with Store.open(path) as store:
        for i in range(300):
            await _row(store, f"g{i:04d}", "m", state="done")
        attempt = AttemptRow(attempt=1, started_at=NOW, finished_at=NOW + 1, outcome="ok")
        await store.complete(
            [Completion(gen_id="g0000", token=0, llm_model_id="m", ok=True, attempts=(attempt,))]
        )
    assert not path.with_name(path.name + "-wal").exists()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _truncate(path: Path) -> None:
    size = path.stat().st_size
    assert size > 8192
    os.truncate(path, size // 2)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
        (lambda p: p.write_bytes(os.urandom(8192)), "not an SQLite database"),
        (_truncate, "malformed"),
        (lambda p: p.write_bytes(b"SQLite format 3\x00" + os.urandom(4000)), "SQLite says"),
    ],
    ids=["empty", "random", "truncated", "random-after-header"],
)
async def test_an_unreadable_state_is_refused_untouched_or_set_aside(
    tmp_path: Path, damage: Callable[[Path], object], reason: str
) -> None:
    path = tmp_path / "state" / "s.sqlite"
    await _real_state(path)
    damage(path)
    before = path.read_bytes()

    with pytest.raises(UnreadableStateError, match=re.escape(reason)) as caught:
        async with Store.open(path):
            pass  # pragma: no cover - open must fail
    assert caught.value.path == path and str(path) in str(caught.value)
    assert path.read_bytes() == before
    assert _names(path.parent) == ["s.sqlite"]

    async with Store.open(path, set_aside_unreadable=True) as store:
        assert store.set_aside is not None and reason in store.set_aside.reason
        assert sum(n for states in (await store.counts()).values() for n in states.values()) == 0
        aside = store.set_aside.path
    assert aside.parent == path.parent and aside.name.startswith("s.sqlite.unreadable-")
    assert aside.read_bytes() == before


async def test_a_readable_state_is_used_as_it_is_even_when_setting_aside_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    await _real_state(path)
    async with Store.open(path, set_aside_unreadable=True) as store:
        assert store.set_aside is None
        assert len(await store.generations(stage="draft", state="done", limit=1000)) == 300


async def test_a_new_state_appears_whole_and_a_half_built_one_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    (tmp_path / ".s.sqlite.new").write_bytes(b"left by a crash")
    async with Store.open(path) as store:
        assert await RestartMemory(store).pauses() == (False, [])
    assert _names(tmp_path) == ["s.sqlite"]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
