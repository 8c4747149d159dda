"""``acquire_all`` under many concurrent tasks, against simulated servers, on virtual time.

No test sleeps for real. :func:`virtual_time` turns the running event loop's clock into a fake
one that jumps straight to the next timer whenever every task is waiting (trio's "autojump"
clock): ``anyio.sleep(60)`` returns at once, and the clock reads 60 s later. A naive fake whose
``sleep`` just adds to a counter is not enough here, because two tasks sleeping 60 s *at the
same time* must both wake at +60 s, not one at +60 and one at +120.

The servers are modelled exactly (``Fraction`` arithmetic), so "would never send 429" is checked
without tolerances.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from unittest.mock import patch

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daydreamd.daemon.ratelimit import SlidingWindow, acquire_all

START = 10_000.0


class VirtualClock:
    """The event loop's clock while :func:`virtual_time` is active; also a ratelimit ``Clock``."""

    def __init__(self, start: float) -> None:
        self.t = start

    def now(self) -> float:
        return self.t


@contextmanager
def virtual_time(start: float = START) -> Iterator[VirtualClock]:
    """Run the current asyncio loop on virtual time until the block ends.

    The loop asks its selector to wait ``timeout`` seconds for I/O when nothing is ready; we
    advance the clock by ``timeout`` instead and poll without blocking. Timers (``sleep``,
    cancel-scope deadlines) are scheduled on ``loop.time()``, which now reads the virtual clock.
    """
    clock = VirtualClock(start)
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    real_select = selector.select

    def select(timeout: float | None = None) -> object:
        if timeout is None:
            return real_select(None)
        clock.t += max(0.0, timeout)
        return real_select(0)

    with patch.object(loop, "time", clock.now), patch.object(selector, "select", select):
        yield clock


def run_virtual(main: object) -> None:
    """Run ``main(clock)`` on a fresh loop under virtual time (for hypothesis, which is sync)."""

    async def wrapper() -> None:
        with virtual_time() as clock:
            await main(clock)  # type: ignore[operator]

    anyio.run(wrapper, backend="asyncio")


# ---- exact models of how servers count ---------------------------------------------------------


def sliding_rejections(stamps: list[float], limit: int, window_s: float) -> int:
    """Requests a server counting by sliding window would refuse (more than `limit` in (t-W, t])."""
    exact = sorted(Fraction(s) for s in stamps)
    width, lo, refused = Fraction(window_s), 0, 0
    for hi, t in enumerate(exact):
        while t - exact[lo] >= width:
            lo += 1
        refused += hi - lo + 1 > limit
    return refused


def fixed_window_rejections(stamps: list[float], limit: int, window_s: float, phase: float) -> int:
    """Requests a server counting per calendar window (``floor((t - phase) / W)``) would refuse."""
    counts: dict[int, int] = defaultdict(int)
    refused = 0
    for t in sorted(Fraction(s) for s in stamps):
        slot = math.floor((t - Fraction(phase)) / Fraction(window_s))
        if counts[slot] >= limit:
            refused += 1
        else:
            counts[slot] += 1
    return refused


def token_bucket_rejections(stamps: list[float], limit: int, window_s: float) -> int:
    """Requests a token bucket (capacity `limit`, refill `limit / W` per second, full at first,
    one token per request) would refuse."""
    rate = Fraction(limit) / Fraction(window_s)
    tokens, last, refused = Fraction(limit), None, 0
    for t in sorted(Fraction(s) for s in stamps):
        if last is not None:
            tokens = min(Fraction(limit), tokens + (t - last) * rate)
        last = t
        if tokens < 1:
            refused += 1
        else:
            tokens -= 1
    return refused


def test_server_models_do_refuse_what_they_should() -> None:
    """The models are not vacuous: a leaky-bucket-style double burst is refused by all three."""
    stamps = [0.0] * 10 + [30.0] * 10  # 20 requests in 30 s against 10/min
    assert sliding_rejections(stamps, 10, 60.0) == 10
    assert fixed_window_rejections(stamps, 10, 60.0, 0.0) == 10
    assert token_bucket_rejections(stamps, 10, 60.0) == 5  # 5 tokens came back in 30 s


# ---- acquire_all: traffic against the servers --------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    model_limits=st.lists(st.integers(min_value=1, max_value=15), min_size=1, max_size=3),
    provider_limit=st.integers(min_value=1, max_value=25),
    requests=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2), st.floats(min_value=0.0, max_value=150.0)),
        max_size=80,
    ),
    phase=st.floats(min_value=0.0, max_value=59.0),
)
def test_no_server_would_ever_send_429(
    model_limits: list[int], provider_limit: int, requests: list[tuple[int, float]], phase: float
) -> None:
    """Tasks for several models share one provider budget; each calls ``acquire_all`` with its
    model's window and the provider's. Whatever the arrival pattern, a server counting by sliding
    window, by calendar minute or by token bucket accepts everything, per model and per provider."""
    stamps: dict[str, list[float]] = defaultdict(list)

    async def main(clock: VirtualClock) -> None:
        models = [SlidingWindow(limit, clock=clock) for limit in model_limits]
        provider = SlidingWindow(provider_limit, clock=clock)

        async def client(model: int, arrival: float) -> None:
            await anyio.sleep(arrival)
            await acquire_all([models[model], provider])
            stamps[f"model{model}"].append(clock.now())
            stamps["provider"].append(clock.now())

        async with anyio.create_task_group() as tg:
            for model, arrival in requests:
                tg.start_soon(client, model % len(model_limits), arrival)

    run_virtual(main)
    assert len(stamps["provider"]) == len(requests)
    limits = {f"model{n}": limit for n, limit in enumerate(model_limits)} | {"provider": provider_limit}
    for key, recorded in stamps.items():
        limit = limits[key]
        assert sliding_rejections(recorded, limit, 60.0) == 0, key
        assert fixed_window_rejections(recorded, limit, 60.0, START + phase) == 0, key
        assert token_bucket_rejections(recorded, limit, 60.0) == 0, key


# ---- acquire_all: atomicity, cancellation, edge cases ------------------------------------------


async def test_nothing_is_charged_while_waiting_for_another_window() -> None:
    with virtual_time() as clock:
        model = SlidingWindow(5, clock=clock)
        provider = SlidingWindow(1, clock=clock)
        provider.try_acquire()
        waited: list[float] = []

        async def waiter() -> None:
            waited.append(await acquire_all([model, provider]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(10.0)
            assert model.in_window() == 0, "the model window is untouched while the provider is full"
        assert waited == [60.0]
        assert clock.now() == START + 60.0
        assert (model.in_window(), provider.in_window()) == (1, 1)


async def test_a_window_that_fills_while_waiting_is_waited_for_too() -> None:
    with virtual_time() as clock:
        model = SlidingWindow(5, clock=clock)
        provider = SlidingWindow(1, clock=clock)
        provider.try_acquire()
        waited: list[float] = []

        async def waiter() -> None:
            waited.append(await acquire_all([model, provider]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(30.0)
            for _ in range(5):  # others fill the model window while the waiter sleeps
                assert await acquire_all([model]) == 0.0
        assert waited == [90.0], "freed provider at +60, model full until +90"
        assert clock.now() == START + 90.0
        assert (model.in_window(), provider.in_window()) == (1, 1)


async def test_a_cancelled_waiter_records_nothing() -> None:
    with virtual_time() as clock:
        model = SlidingWindow(5, clock=clock)
        provider = SlidingWindow(1, clock=clock)
        provider.try_acquire()
        with anyio.move_on_after(10.0) as scope:
            await acquire_all([model, provider])
        assert scope.cancelled_caught
        assert (model.in_window(), provider.in_window()) == (0, 1)
        await anyio.sleep(50.0)
        assert await acquire_all([model, provider]) == 0.0, "the slot was not leaked"


async def test_an_already_cancelled_caller_spends_no_budget() -> None:
    with virtual_time() as clock:
        window = SlidingWindow(5, clock=clock)
        with anyio.CancelScope() as scope:
            scope.cancel()
            await acquire_all([window])
        assert window.in_window() == 0


async def test_the_same_window_twice_is_charged_once() -> None:
    with virtual_time() as clock:
        window = SlidingWindow(2, clock=clock)
        assert await acquire_all([window, window]) == 0.0
        assert window.in_window() == 1


async def test_no_windows_means_no_wait() -> None:
    assert await acquire_all([]) == 0.0


async def test_the_sleep_is_injectable() -> None:
    clock = VirtualClock(START)
    window = SlidingWindow(1, clock=clock)
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)
        clock.t += seconds

    await acquire_all([window], sleep=fake_sleep)
    assert await acquire_all([window], sleep=fake_sleep) == 60.0
    assert delays == [60.0]
    assert window.in_window() == 1


# ---- throughput --------------------------------------------------------------------------------


@pytest.mark.parametrize(("requests", "ideal"), [(1000, 60.0), (6000, 540.0)])
async def test_concurrent_throughput_spends_the_whole_budget(requests: int, ideal: float) -> None:
    """600/min shared by 25 tasks. The sliding log may spend each window's budget at once: the
    k-th request (0-based) can go at ``floor(k / 600) * 60`` s, so 1,000 requests finish at +60 s
    and 6,000 at +540 s. The brief's pacing estimate for 1,000 (100 s) is an upper bound; we must
    not be more than a few percent slower than the ideal, and can never be faster."""
    with virtual_time() as clock:
        window = SlidingWindow(600, clock=clock)
        stamps: list[float] = []

        async def worker(count: int) -> None:
            for _ in range(count):
                await acquire_all([window])
                stamps.append(clock.now())

        async with anyio.create_task_group() as tg:
            for _ in range(25):
                tg.start_soon(worker, requests // 25)
        elapsed = clock.now() - START
    assert len(stamps) == requests
    assert ideal <= elapsed <= ideal * 1.03
    assert elapsed <= requests / 10.0, "never slower than pacing at 10/s"
    assert sliding_rejections(stamps, 600, 60.0) == 0


async def test_virtual_time_wakes_concurrent_sleepers_together() -> None:
    with virtual_time() as clock:
        woke: list[float] = []

        async def sleeper(seconds: float) -> None:
            await anyio.sleep(seconds)
            woke.append(clock.now() - START)

        async with anyio.create_task_group() as tg:
            for seconds in (60.0, 60.0, 1.0):
                tg.start_soon(sleeper, seconds)
        assert woke == [1.0, 60.0, 60.0]
