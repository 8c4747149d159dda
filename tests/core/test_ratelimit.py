"""Pins the rate-limit bookkeeping: the sliding-window bound, adaptive concurrency, in-flight counts.

Everything here is synchronous and runs on a :class:`FakeClock` that only moves when told to, so
each test states exactly when every request happens. The async side (``acquire_all`` with many
tasks, cancellation, simulated servers) is in ``tests/shell/test_ratelimit_async.py``.

Clocks start at 1000 s, like a real monotonic clock that has been up for a while: differences of
timestamps that are within a factor of two of each other are exact in floating point, so the
exact (``Fraction``) checks below test the limiter's logic, not rounding.
"""

from __future__ import annotations

import heapq
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daydreamd.daemon.ratelimit import AdaptiveLimit, MonotonicClock, SlidingWindow, TokenWindow

START = 1000.0


class FakeClock:
    """A clock that moves only when the test advances it."""

    def __init__(self, start: float = START) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def set(self, t: float) -> None:
        assert t >= self.t, "the fake clock never goes back"
        self.t = t


def max_in_any_window(stamps: list[float], window_s: float) -> int:
    """The most stamps in any half-open window ``(t - window_s, t]``, in exact arithmetic.

    The maximum is reached with ``t`` on a stamp, so a two-pointer scan over the sorted stamps
    sees every window position that matters.
    """
    exact = sorted(Fraction(s) for s in stamps)
    width = Fraction(window_s)
    best, lo = 0, 0
    for hi, t in enumerate(exact):
        while t - exact[lo] >= width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def simulate(arrivals: list[float], limit: int, window_s: float) -> tuple[list[float], list[float]]:
    """Clients arriving at ``arrivals`` (offsets) each retry after the wait they are told until they
    get in. Returns (recorded stamps, instants at which some client was refused)."""
    clock = FakeClock()
    window = SlidingWindow(limit, window_s, clock=clock)
    pending = [(START + offset, n) for n, offset in enumerate(arrivals)]
    heapq.heapify(pending)
    recorded: list[float] = []
    refused: list[float] = []
    while pending:
        t, n = heapq.heappop(pending)
        clock.set(t)
        wait = window.try_acquire()
        if wait == 0.0:
            recorded.append(t)
        else:
            assert wait > 0
            refused.append(t)
            heapq.heappush(pending, (t + wait, n))
    return recorded, refused


# ---- SlidingWindow: the invariant --------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    arrivals=st.lists(st.floats(min_value=0.0, max_value=240.0), max_size=120),
    limit=st.integers(min_value=1, max_value=12),
    window_s=st.sampled_from([0.5, 1.0, 7.25, 60.0]),
)
def test_no_window_position_ever_holds_more_than_the_limit(
    arrivals: list[float], limit: int, window_s: float
) -> None:
    recorded, refused = simulate(arrivals, limit, window_s)
    assert len(recorded) == len(arrivals), "every client gets in eventually"
    assert max_in_any_window(recorded, window_s) <= limit
    # ...and the limiter never refuses while there is room: at each refusal, the window ending at
    # that instant really held `limit` requests.
    for t in refused:
        inside = [s for s in recorded if s <= t and Fraction(t) - Fraction(s) < Fraction(window_s)]
        assert len(inside) >= limit


@settings(max_examples=100, deadline=None)
@given(
    bursts=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=12),
    gap=st.floats(min_value=0.0, max_value=90.0),
    limit=st.integers(min_value=1, max_value=25),
)
def test_bursts_never_exceed_the_limit(bursts: list[int], gap: float, limit: int) -> None:
    arrivals = [i * gap for i, size in enumerate(bursts) for _ in range(size)]
    recorded, _ = simulate(arrivals, limit, 60.0)
    assert max_in_any_window(recorded, 60.0) <= limit


def test_max_in_any_window_counts_half_open_windows() -> None:
    assert max_in_any_window([0.0, 60.0], 60.0) == 1
    assert max_in_any_window([0.0, 59.5, 60.0], 60.0) == 2
    assert max_in_any_window([1.0, 1.0, 1.0], 60.0) == 3


# ---- SlidingWindow: behaviour ------------------------------------------------------------------


def test_full_window_waits_for_the_oldest_to_leave() -> None:
    clock = FakeClock()
    window = SlidingWindow(3, 60.0, clock=clock)
    for step in (0.0, 10.0, 10.0):
        clock.advance(step)
        assert window.try_acquire() == 0.0
    assert window.in_window() == 3
    assert window.try_acquire() == pytest.approx(40.0)  # the first left at +60; it is +20 now
    assert window.in_window() == 3, "a refused request is not recorded"
    clock.advance(39.5)
    assert window.try_acquire() == pytest.approx(0.5)
    clock.advance(0.5)
    assert window.try_acquire() == 0.0
    assert window.in_window() == 3


def test_the_boundary_instant_is_outside_the_window() -> None:
    clock = FakeClock()
    window = SlidingWindow(1, 60.0, clock=clock)
    assert window.try_acquire() == 0.0
    clock.advance(60.0)
    assert window.try_acquire() == 0.0


def test_wait_time_looks_without_recording() -> None:
    clock = FakeClock()
    window = SlidingWindow(1, 60.0, clock=clock)
    assert window.wait_time() == 0.0
    assert window.wait_time() == 0.0
    assert window.in_window() == 0
    window.try_acquire()
    assert window.wait_time() == pytest.approx(60.0)


def test_old_requests_are_pruned_lazily() -> None:
    clock = FakeClock()
    window = SlidingWindow(5, 60.0, clock=clock)
    for _ in range(4):
        window.try_acquire()
        clock.advance(20.0)
    assert window.in_window() == 2  # stamps at +0, +20, +40, +60; it is +80 now: +40 and +60 remain
    clock.advance(1000.0)
    assert window.in_window() == 0


def test_lowering_the_limit_admits_nothing_until_enough_have_left() -> None:
    clock = FakeClock()
    window = SlidingWindow(5, 60.0, clock=clock)
    for _ in range(5):
        window.try_acquire()
        clock.advance(1.0)
    window.set_limit(2)  # stamps at +0..+4, it is +5: the four oldest must go, the 4th leaves at +63
    assert window.try_acquire() == pytest.approx(58.0)
    clock.advance(58.0)
    assert window.try_acquire() == 0.0
    assert window.in_window() == 2


def test_raising_the_limit_admits_at_once() -> None:
    clock = FakeClock()
    window = SlidingWindow(1, 60.0, clock=clock)
    window.try_acquire()
    assert window.try_acquire() > 0
    window.set_limit(2)
    assert window.try_acquire() == 0.0


@pytest.mark.parametrize("unlimited", [None, 0])
def test_none_and_zero_mean_unlimited_but_still_count(unlimited: int | None) -> None:
    clock = FakeClock()
    window = SlidingWindow(unlimited, clock=clock)
    assert window.limit is None
    assert all(window.try_acquire() == 0.0 for _ in range(10_000))
    assert window.in_window() == 10_000
    window.set_limit(100)  # the history is kept, so a later limit starts from the truth
    assert window.try_acquire() == pytest.approx(60.0)


@pytest.mark.parametrize(
    ("limit", "window_s"), [(-1, 60.0), (5, 0.0), (5, -1.0), (5, math.inf), (5, math.nan)]
)
def test_nonsense_windows_are_rejected(limit: int, window_s: float) -> None:
    with pytest.raises(ValueError):
        SlidingWindow(limit, window_s, clock=FakeClock())


def test_the_default_clock_is_monotonic() -> None:
    clock = MonotonicClock()
    first = clock.now()
    assert clock.now() >= first
    assert SlidingWindow(5).try_acquire() == 0.0


def test_serial_throughput_spends_the_whole_budget() -> None:
    """1,000 requests at 600/min: the first 600 go at once and the other 400 as soon as the
    first window has passed, so the last one goes at +60 s. (A pacing limiter would need 100 s;
    both are legal for every server model, see the module docstring.)"""
    clock = FakeClock()
    window = SlidingWindow(600, 60.0, clock=clock)
    stamps = []
    for _ in range(1000):
        while (wait := window.try_acquire()) > 0:
            clock.advance(wait)
        stamps.append(clock.now())
    assert stamps[-1] - START == pytest.approx(60.0)
    assert max_in_any_window(stamps, 60.0) == 600


# ---- AdaptiveLimit -----------------------------------------------------------------------------


def adaptive(clock: FakeClock, initial: float = 16.0, **kwargs: float) -> AdaptiveLimit:
    options: dict[str, float] = {"maximum": 32, **kwargs}
    return AdaptiveLimit(initial, clock=clock, **options)  # type: ignore[arg-type]


def test_one_cut_per_episode() -> None:
    clock = FakeClock()
    limit = adaptive(clock)
    assert limit.on_rate_limited(None) is True
    assert limit.limit == 8
    for _ in range(8):  # the rest of the burst of 429s from calls sent before the cut
        clock.advance(0.5)
        assert limit.on_rate_limited(None) is False
    assert limit.limit == 8
    clock.advance(1.0)  # +5 s since the cut: the default cooldown is over
    assert limit.on_rate_limited(None) is True
    assert limit.limit == 4


def test_retry_after_sets_the_episode_length_and_the_pause() -> None:
    clock = FakeClock()
    limit = adaptive(clock)
    assert limit.on_rate_limited(30.0) is True
    assert limit.resume_at == START + 30.0
    assert limit.pause_remaining() == 30.0
    clock.advance(29.9)
    assert limit.in_episode()
    assert limit.on_rate_limited(None) is False
    assert limit.pause_remaining() == pytest.approx(0.1)
    clock.advance(0.1)
    assert limit.pause_remaining() == 0.0
    assert limit.on_rate_limited(None) is True
    assert limit.limit == 4


def test_a_short_retry_after_does_not_shorten_the_cooldown() -> None:
    clock = FakeClock()
    limit = adaptive(clock, cooldown_s=5.0)
    limit.on_rate_limited(1.0)
    clock.advance(2.0)
    assert limit.pause_remaining() == 0.0
    assert limit.on_rate_limited(1.0) is False


def test_a_longer_retry_after_inside_an_episode_extends_pause_and_episode() -> None:
    clock = FakeClock()
    limit = adaptive(clock)
    limit.on_rate_limited(2.0)
    clock.advance(1.0)
    assert limit.on_rate_limited(20.0) is False
    assert limit.resume_at == START + 21.0
    clock.advance(19.0)  # +20 s: past the cooldown, still inside the server's pause
    assert limit.on_rate_limited(None) is False
    clock.advance(1.0)
    assert limit.on_rate_limited(None) is True
    assert limit.limit == 4


def test_no_pause_without_retry_after() -> None:
    clock = FakeClock()
    limit = adaptive(clock)
    limit.on_rate_limited(None)
    assert limit.resume_at == -math.inf
    assert limit.pause_remaining() == 0.0


@pytest.mark.parametrize(
    ("retry_after", "pause"), [(math.inf, 0.0), (math.nan, 0.0), (-5.0, 0.0), (1e9, 300.0)]
)
def test_nonsense_retry_after_is_tamed(retry_after: float, pause: float) -> None:
    clock = FakeClock()
    limit = adaptive(clock)
    assert limit.on_rate_limited(retry_after) is True
    assert limit.pause_remaining() == pause


def test_never_below_one() -> None:
    clock = FakeClock()
    limit = adaptive(clock, initial=3.0)
    for _ in range(20):
        limit.on_rate_limited(None)
        clock.advance(10.0)
    assert limit.limit == 1
    assert limit.value == 1.0


def test_never_below_a_higher_minimum() -> None:
    clock = FakeClock()
    limit = adaptive(clock, minimum=3)
    for _ in range(20):
        limit.on_rate_limited(None)
        clock.advance(10.0)
    assert limit.limit == 3


def test_the_cut_starts_from_what_was_actually_in_flight() -> None:
    clock = FakeClock()
    limit = adaptive(clock, initial=32.0)
    limit.on_rate_limited(None, in_flight=6)
    assert limit.limit == 3


def test_growth_is_additive_one_per_limit_successes() -> None:
    clock = FakeClock()
    limit = adaptive(clock, initial=4.0)
    limit.on_success()
    assert limit.value == 4.25
    for _ in range(3):
        limit.on_success()
    assert limit.limit == 4, "four successes at 4 are not quite +1"
    limit.on_success()
    assert limit.limit == 5


def test_growth_climbs_back_to_the_maximum_and_stops_there() -> None:
    clock = FakeClock()
    limit = adaptive(clock, initial=1.0, maximum=8)
    successes = 0
    while limit.limit < 8:
        limit.on_success()
        successes += 1
    # Each success adds 1/value and value >= limit, so a step from k to k+1 takes a little more
    # than k successes (about k + 1/2): 1 + 2 + ... + 7 = 28 is the floor, 28 + 7 a generous roof.
    assert 28 <= successes <= 35
    for _ in range(1000):
        limit.on_success()
    assert limit.value == 8.0
    assert limit.limit == 8


def test_no_growth_inside_an_episode() -> None:
    clock = FakeClock()
    limit = adaptive(clock)
    limit.on_rate_limited(None)
    for _ in range(100):
        limit.on_success()
    assert limit.value == 8.0
    clock.advance(5.0)
    limit.on_success()
    assert limit.value == 8.125


def test_transient_errors_do_not_cut_or_start_an_episode() -> None:
    clock = FakeClock()
    limit = adaptive(clock)
    for _ in range(50):
        limit.on_transient()
    assert limit.value == 16.0
    assert not limit.in_episode()
    assert limit.on_rate_limited(None) is True


def test_value_and_restore_round_trip() -> None:
    clock = FakeClock()
    learned = adaptive(clock)
    learned.on_rate_limited(None)
    clock.advance(10.0)
    for _ in range(5):
        learned.on_success()
    saved = learned.value
    assert not saved.is_integer()
    fresh = adaptive(FakeClock())
    fresh.restore(saved)
    assert fresh.value == saved
    assert fresh.limit == learned.limit


def test_restore_clamps_into_the_current_bounds_and_rejects_garbage() -> None:
    limit = adaptive(FakeClock(), maximum=10)
    limit.restore(50.0)
    assert limit.value == 10.0
    limit.restore(0.2)
    assert limit.value == 1.0
    for garbage in (math.nan, math.inf):
        with pytest.raises(ValueError):
            limit.restore(garbage)
    assert limit.value == 1.0


def test_set_maximum_clamps_the_learned_value() -> None:
    limit = adaptive(FakeClock(), initial=20.0)
    limit.set_maximum(6)
    assert (limit.maximum, limit.limit) == (6, 6)
    limit.set_maximum(12)
    assert limit.limit == 6, "raising the ceiling does not jump; growth climbs to it"
    with pytest.raises(ValueError):
        limit.set_maximum(0)


def test_initial_is_clamped() -> None:
    assert AdaptiveLimit(100.0, maximum=8, clock=FakeClock()).limit == 8
    assert AdaptiveLimit(0.0, maximum=8, clock=FakeClock()).limit == 1
    assert AdaptiveLimit(4.0, maximum=8).minimum == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"maximum": 4, "minimum": 0},
        {"maximum": 2, "minimum": 3},
        {"maximum": 4, "decrease": 1.0},
        {"maximum": 4, "decrease": 0.0},
        {"maximum": 4, "increase": -1.0},
        {"maximum": 4, "cooldown_s": -1.0},
        {"maximum": 4, "max_pause_s": math.inf},
    ],
)
def test_nonsense_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(2.0, clock=FakeClock(), **kwargs)  # type: ignore[arg-type]


# ---- tokens per window ---------------------------------------------------------------------------


def test_token_window_counts_estimates_corrects_them_and_lets_them_leave() -> None:
    """1,000 tokens a minute: two 400-token estimates fit, a third does not until the first is
    corrected to its usage (150) or leaves the window; wait_time says when."""
    clock = FakeClock()
    window = TokenWindow(1000, 60.0, clock=clock)
    first = window.take(400)
    clock.advance(10)
    window.take(400)
    assert (window.in_window(), window.fits(400), window.fits(200)) == (800, False, True)
    assert window.wait_time(400) == pytest.approx(50.0)
    window.correct(first, 150)
    assert (window.in_window(), window.fits(400), window.wait_time(400)) == (550, True, 0.0)
    clock.advance(50)  # the first leaves the window (at 60 s); correcting it now changes nothing
    window.correct(first, 999)
    assert window.in_window() == 400


def test_a_call_larger_than_the_budget_goes_alone() -> None:
    clock = FakeClock()
    window = TokenWindow(1000, 60.0, clock=clock)
    assert window.fits(5000)
    window.take(5000)
    assert not window.fits(1)
    clock.advance(60)
    assert window.fits(5000) and window.in_window() == 0


@settings(max_examples=200, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.floats(0, 30), st.integers(1, 900), st.integers(0, 900)), min_size=1, max_size=40
    ),
)
def test_tokens_taken_through_fits_never_pass_the_limit_in_any_window(
    calls: list[tuple[float, int, int]],
) -> None:
    """Calls arrive (gap, estimate, usage <= estimate): each waits until wait_time says 0, then is
    taken and corrected; the counted tokens in the window never pass 1,000 (checked as each call is
    taken), unless one call alone is larger."""
    clock = FakeClock()
    window = TokenWindow(1000, 60.0, clock=clock)
    for gap, estimate, usage in calls:
        clock.advance(gap)
        while (wait := window.wait_time(estimate)) > 0:  # as the pool waits (float rounding: twice)
            clock.advance(wait)
        assert window.fits(estimate)
        entry = window.take(estimate)
        assert window.in_window() <= 1000 or window.in_window() == estimate
        window.correct(entry, min(usage, estimate))
