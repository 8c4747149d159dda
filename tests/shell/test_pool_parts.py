"""The pool's parts on their own: live settings, limits, budgets, counters, batched commits.

The pool composes these; an end-to-end run is in ``tests/integration``. Here each part is
driven directly with plain values (and a fake store for the batcher).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import cast

import anyio
import pytest

from daydreamd.core.config import LimitOverrides, LlmSettings, PathSettings, PoolSettings, Settings
from daydreamd.core.pricing import Price
from daydreamd.core.retry import RetryPolicy
from daydreamd.core.status import BudgetStatus
from daydreamd.daemon.budgets import Budgets
from daydreamd.daemon.commits import CommitBatcher
from daydreamd.daemon.counters import Counters
from daydreamd.daemon.limits import PoolLimits
from daydreamd.daemon.settings import LiveSettings, reloadable
from daydreamd.llm.calls import AttemptRecord
from daydreamd.llm.types import Usage
from daydreamd.storage.store import Completion, Store

POOL = PoolSettings(
    concurrency=3,
    model_concurrency=2,
    requests_per_minute=60,
    models=(("big", LimitOverrides(concurrency=5)),),
)


def live(pool: PoolSettings = POOL) -> LiveSettings:
    return LiveSettings(Settings(pool=pool))


def record(outcome: str = "ok", usage: Usage | None = None) -> AttemptRecord:
    return AttemptRecord(
        attempt=1,
        started_at=0.0,
        finished_at=1.0,
        duration_s=1.0,
        outcome=outcome,
        status=None,
        message=None,
        retry_after=None,
        usage=usage,
        delay_s=None,
    )


# -- settings ----------------------------------------------------------------------------------


def test_a_replacement_reaches_every_subscriber() -> None:
    settings = live()
    seen: list[int] = []
    settings.subscribe(lambda s: seen.append(s.pool.concurrency))
    settings.replace(replace(settings.current, pool=replace(POOL, concurrency=9)))
    assert settings.current.pool.concurrency == 9 and seen == [9]


def test_a_reload_keeps_paths_provider_and_prices() -> None:
    running = Settings(paths=PathSettings(data_dir=Path("/a")), llm=LlmSettings(provider="mock"))
    fresh = Settings(paths=PathSettings(data_dir=Path("/b")), retry=RetryPolicy(transient_tries=7), pool=POOL)
    merged = reloadable(running, fresh)
    assert merged.paths == running.paths and merged.llm == running.llm and merged.prices == running.prices
    assert merged.retry == fresh.retry and merged.pool == fresh.pool


def test_with_limits_overrides_one_model_or_the_pool() -> None:
    assert POOL.with_limits(None, 7, None).concurrency == 7
    assert POOL.with_limits(None, None, None) == POOL
    changed = POOL.with_limits("small", None, 30)
    assert changed.model_limits("small").requests_per_minute == 30
    assert changed.model_limits("small").concurrency == 2  # the default still applies
    assert changed.with_limits("big", 1, None).model_limits("big").concurrency == 1


# -- limits ------------------------------------------------------------------------------------


def test_slots_count_globally_and_per_model() -> None:
    limits = PoolLimits(live(), lambda model: "prov")
    now = time.monotonic()
    assert limits.free() == 3 and limits.model_free("m", 3, now) == 2
    limits.take("g1", "m")
    limits.take("g2", None)  # copy work: a global slot only
    assert limits.free() == 1 and limits.model_free("m", 1, now) == 1
    assert limits.release("g1", "m") and not limits.release("g1", "m")  # once
    assert limits.model("m").in_flight == 0 and limits.model("m").provider == "prov"


def test_pauses_and_parking_stop_a_model_from_claiming() -> None:
    limits = PoolLimits(live(), lambda model: "")
    now = time.monotonic()
    limits.set_paused("m", True)
    assert limits.model_free("m", 3, now) == 0 and limits.model_free("n", 3, now) == 2
    limits.set_paused(None, False)  # resuming everything clears the per-model pauses too
    assert limits.model_free("m", 3, now) == 2
    limits.park(60.0)
    parked = limits.parked_for(time.monotonic())
    assert parked is not None and 59 < parked <= 60
    assert limits.model_free("m", 3, time.monotonic()) == 0


def test_limits_follow_the_settings_and_start_at_learned_levels() -> None:
    settings = live()
    limits = PoolLimits(settings, lambda model: "")
    limits.restore({"big": 3.5})
    assert limits.model("big").limit.limit == 3 and limits.model("big").limit.maximum == 5
    windows = limits.windows("big")
    assert [w.limit for w in windows] == [60, None]  # the model's window, the provider's (unlimited)
    limits.apply(replace(settings.current, pool=POOL.with_limits("big", 2, 10)))
    assert limits.model("big").limit.maximum == 2 and limits.model("big").window.limit == 10
    assert limits.learned() == {"big": 2.0}


# -- budgets and counters ----------------------------------------------------------------------


def test_a_budget_is_exhausted_when_one_more_average_call_would_pass_it() -> None:
    budgets = Budgets()
    budgets.budgets = {1: 1.0, 2: 5.0}
    for _ in range(3):
        budgets.record(1, 0.25)
        budgets.record(2, 0.25)
    budgets.record(None, 9.0)  # no approval: nothing to count
    budgets.record(3, 9.0)  # an approval without a budget: not counted either
    assert budgets.exhausted({}) == []  # 0.75 spent + one more call at 0.25 reaches 1.0, not past it
    assert budgets.exhausted({1: 1}) == [1]  # with one in flight, the next would pass it
    assert budgets.exhausted({1: 1, 2: 17}) == [1, 2]  # 0.75 + 18 x 0.25 > 5.0
    assert budgets.statuses({1}) == {
        "1": BudgetStatus(budget_usd=1.0, spent_usd=0.75, exhausted=True),
        "2": BudgetStatus(budget_usd=5.0, spent_usd=0.75, exhausted=False),
    }


def test_a_budget_with_no_finished_call_runs_one_call_at_a_time() -> None:
    """No average cost yet: the first call may start, a second waits until it has finished."""
    budgets = Budgets()
    budgets.budgets = {1: 0.25}
    assert budgets.exhausted({}) == []
    assert budgets.exhausted({1: 1}) == [1]
    budgets.record(1, 0.10)
    assert budgets.exhausted({}) == []  # 0.10 spent + one more at 0.10 stays within 0.25
    assert budgets.exhausted({1: 1}) == [1]  # 0.10 + two at 0.10 would pass it


def test_counters_count_calls_tokens_and_dollars() -> None:
    counters = Counters()
    price = Price(1.0, 2.0)
    assert counters.attempt("m", record("rate_limit"), price) is None  # no usage reported
    cost = counters.attempt("m", record(usage=Usage(prompt_tokens=1000, completion_tokens=500)), price)
    assert cost == pytest.approx(0.002)
    assert counters.attempt("m", record(usage=Usage(prompt_tokens=10)), None) == 0.0  # unpriced
    assert counters.calls == {("m", "rate_limit"): 1, ("m", "ok"): 2}
    assert counters.tokens[("m", "prompt")] == 1010 and counters.tokens[("m", "completion")] == 500
    assert counters.unpriced_calls == {"m": 1} and counters.spent_usd() == 0.002


def test_rates_are_per_minute_over_the_recent_window() -> None:
    counters = Counters()
    for t in (0.0, 10.0, 20.0, 400.0, 430.0):
        counters.generation("draft", "done", t)
    assert counters.rates(now=460.0) == {"draft": 2.0}  # two in the last 300 s, over at least a minute
    assert counters.outcomes == {"done": 5}


# -- batched commits ---------------------------------------------------------------------------


class FakeStore:
    def __init__(self, error: Exception | None = None) -> None:
        self.batches: list[list[str]] = []
        self.error = error

    async def complete_each(self, completions: Sequence[Completion]) -> list[bool]:
        self.batches.append([c.gen_id for c in completions])
        await anyio.sleep(0.01)
        if self.error is not None:
            raise self.error
        return [c.token > 0 for c in completions]


def completion(gen_id: str, token: int = 1) -> Completion:
    return Completion(gen_id=gen_id, token=token, llm_model_id="m", ok=True)


async def test_commits_that_arrive_together_share_one_transaction() -> None:
    store = FakeStore()
    batcher = CommitBatcher(cast(Store, store))
    results: dict[str, bool] = {}

    async def commit(gen_id: str, token: int) -> None:
        results[gen_id] = await batcher.commit(completion(gen_id, token))

    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        async with anyio.create_task_group() as workers:
            for n in range(5):
                workers.start_soon(commit, f"g{n}", 0 if n == 3 else 1)
        tg.cancel_scope.cancel()
    assert sorted(g for batch in store.batches for g in batch) == [f"g{n}" for n in range(5)]
    assert len(store.batches) < 5
    assert results == {"g0": True, "g1": True, "g2": True, "g3": False, "g4": True}  # g3's token is stale


async def test_a_failed_transaction_fails_its_waiters_and_the_batcher_goes_on() -> None:
    store = FakeStore(RuntimeError("disk full"))
    batcher = CommitBatcher(cast(Store, store))
    async with anyio.create_task_group() as tg:
        tg.start_soon(batcher.run)
        with pytest.raises(RuntimeError, match="disk full"):
            await batcher.commit(completion("g1"))
        store.error = None
        assert await batcher.commit(completion("g2")) is True
        tg.cancel_scope.cancel()
