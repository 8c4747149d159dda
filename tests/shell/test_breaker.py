"""The provider's circuit breaker: when it opens, how it probes, what closes it (no network)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from daydreamd.core.config import PoolSettings
from daydreamd.core.retry import FailureKind
from daydreamd.daemon.breaker import Breaker, BreakerState, is_outage

DOWN = (str(FailureKind.TRANSIENT), 503)
DROPPED = (str(FailureKind.TRANSIENT), None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, threshold: int = 3) -> Breaker:
    made = Breaker(clock=clock)
    made.configure(PoolSettings(outage_failures=threshold, outage_probe_s=2.0, outage_probe_cap_s=8.0))
    return made


@pytest.mark.parametrize(
    ("outcome", "status", "expected"),
    [
        ("transient", None, True),
        ("transient", 502, True),
        ("transient", 200, False),
        ("rate_limit", 429, False),
    ],
)
def test_what_counts_as_an_outage(outcome: str, status: int | None, expected: bool) -> None:
    assert is_outage(outcome, status) is expected


def test_one_generation_failing_alone_does_not_open_it_until_its_last_try() -> None:
    clock = Clock()
    b = breaker(clock)
    assert b.record("g1", *DOWN, last_try=False) is None
    assert b.record("g1", *DOWN, last_try=False) is None
    assert b.record("g1", *DROPPED, last_try=False) is None  # three in a row, but one generation
    change = b.record("g1", *DOWN, last_try=True)
    assert change is not None and change.state is BreakerState.OPEN and b.opened_count == 1


def test_failures_of_two_generations_open_it_and_an_answer_resets_the_count() -> None:
    clock = Clock()
    b = breaker(clock)
    b.record("g1", *DOWN, last_try=False)
    b.record("g2", *DOWN, last_try=False)
    assert b.record("g3", "ok", None, last_try=False) is None  # an answer: the provider is up
    assert b.failures == 0
    b.record("g1", *DOWN, last_try=False)
    b.record("g2", *DOWN, last_try=False)
    change = b.record("g1", *DROPPED, last_try=False)
    assert change is not None and change.state is BreakerState.OPEN
    trouble = b.trouble()
    assert trouble is not None and trouble.what == "provider_down" and trouble.next_try_in_s == 2.0


async def test_open_holds_calls_until_the_probe_time_then_lets_one_through() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1)
    b.record("g1", *DOWN, last_try=True)
    assert b.state is BreakerState.OPEN and not b.closed
    clock.now += 2.0
    await b.permit()  # the probe
    assert b.state is BreakerState.HALF_OPEN
    released: list[str] = []

    async def waiter() -> None:
        await b.permit()
        released.append("second")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.lowlevel.checkpoint()
        assert released == []  # the probe is out: others wait for its answer
        change = b.record("g1", "ok", 200, last_try=False)
        assert change is not None and change.state is BreakerState.CLOSED
    assert released == ["second"] and b.trouble() is None


def test_a_failed_probe_reopens_it_for_twice_as_long_up_to_the_cap() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1)
    b.record("g1", *DOWN, last_try=True)
    delays = []
    for _ in range(4):
        b.state = BreakerState.HALF_OPEN
        change = b.record("g1", *DOWN, last_try=False)
        assert change is not None
        delays.append(change.next_probe_in_s)
    assert delays == [4.0, 8.0, 8.0, 8.0]
    assert b.opened_count == 1  # one outage, however many probes


def test_a_transient_failure_is_the_outage_s_doing_only_if_the_breaker_opened() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1)
    before = b.opened_count
    assert not b.caused(FailureKind.TRANSIENT, before)
    b.record("g1", *DOWN, last_try=True)
    assert b.caused(FailureKind.TRANSIENT, before)
    assert not b.caused(FailureKind.RATE_LIMIT, before)
    b.record("g2", "ok", 200, last_try=False)
    assert b.caused(FailureKind.TRANSIENT, before)  # it opened during that run
    assert not b.caused(FailureKind.TRANSIENT, b.opened_count)
