"""Rate limits for LLM calls: request budgets per sliding window and adaptive concurrency.

Two independent pieces, composed by the worker pool:

- :class:`SlidingWindow` and :func:`acquire_all` keep a requests-per-minute budget (per model,
  per provider, ...). This is a *sliding-window log*, not a leaky or token bucket, because the
  guarantee we need is "never more than ``limit`` requests in *any* window of ``window_s``
  seconds". A leaky bucket such as ``aiolimiter`` admits a full burst and then keeps leaking, so a
  single 60 s window can see almost twice the budget, and a server that counts by sliding window
  answers 429. The log gives the exact bound, and that bound also satisfies the other two ways
  servers count:

  * fixed (calendar-minute) windows: each such minute lies inside one sliding window, so it
    holds at most ``limit`` requests;
  * a token bucket of capacity ``limit`` refilled at ``limit / window_s`` per second: any interval
    of length ``d`` is covered by ``floor(d / window_s) + 1`` sliding windows, so it holds at most
    ``limit * (1 + d / window_s)`` requests, which is exactly what such a bucket admits.

  The bound holds for the instants at which requests are *recorded* here. The server sees them
  after a varying network delay, so two requests that are exactly ``window_s`` apart here may
  look closer there; callers that fear this pass a slightly longer ``window_s`` (61 s for a
  60 s server costs under 2 % of throughput). A window outlives its process through
  :meth:`SlidingWindow.stamps` and :meth:`SlidingWindow.seed`: a restart starts from the
  requests the previous process made, not from an empty window.

- :class:`AdaptiveLimit` learns how many calls a model takes at once: multiplicative decrease on
  a 429 (once per episode, honouring ``Retry-After``), slow additive increase on success, never
  below its minimum. Its float :attr:`~AdaptiveLimit.value` is what the pool saves and restores.

Everything takes its clock (and :func:`acquire_all` its sleep) as a parameter and keeps no module
state, so tests run on a fake clock and no sleep is ever real. Only anyio is used, no
asyncio-specific API.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import anyio
import anyio.lowlevel

Sleep = Callable[[float], Awaitable[object]]
"""How :func:`acquire_all` waits; ``anyio.sleep`` in production, an instant fake in tests."""

_MIN_WAIT_S = 1e-6
"""Smallest wait ever reported. Float rounding in ``now + wait`` (or a timer that fires a hair
early) can leave the oldest request a few ulps inside the window; a tiny positive wait keeps the
retry loop making progress instead of spinning on a zero-length sleep."""


class Clock(Protocol):
    """A source of monotonic time in seconds (only differences matter)."""

    def now(self) -> float:
        """Current time in seconds; never decreases."""
        ...


class MonotonicClock:
    """The real clock: :func:`time.monotonic`, immune to wall-clock jumps (NTP, DST)."""

    def now(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()


# ---- requests per window ------------------------------------------------------------------------


def _check_limit(limit: int | None) -> int | None:
    """Normalise a request budget: ``None`` and ``0`` mean unlimited, negatives are errors.

    ``0`` is accepted as unlimited because that is how ``config.toml`` spells "no limit"
    (``requests_per_minute = 0``). There is deliberately no way to say "zero requests": holding a
    model back is the pool's job (pause, :attr:`AdaptiveLimit.resume_at`), not a budget's.
    """
    if limit is None or limit == 0:
        return None
    if limit < 0:
        raise ValueError(f"a request limit must be positive, 0 or None (unlimited), not {limit}")
    return int(limit)


class SlidingWindow:
    """At most ``limit`` recorded requests in any window of ``window_s`` seconds.

    Guarantee: for every instant ``t``, the number of recorded timestamps in ``(t - window_s, t]``
    is at most the limit in force when each of them was recorded. Timestamps live in a deque,
    oldest first, and are pruned lazily when the window is consulted, so memory is bounded by the
    largest limit used (or, when unlimited, by the traffic of the last ``window_s`` seconds, which
    is still recorded so that a later :meth:`set_limit` starts from the true history).

    ``limit`` ``None`` or ``0`` means unlimited (see :func:`_check_limit`).
    """

    def __init__(self, limit: int | None, window_s: float = 60.0, *, clock: Clock | None = None) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be a positive number of seconds, not {window_s}")
        self._limit = _check_limit(limit)
        self._window_s = float(window_s)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._stamps: deque[float] = deque()

    @property
    def limit(self) -> int | None:
        """The current budget per window; ``None`` when unlimited."""
        return self._limit

    @property
    def window_s(self) -> float:
        """The window length in seconds."""
        return self._window_s

    def set_limit(self, limit: int | None) -> None:
        """Change the budget (config reload). Lowering it below :meth:`in_window` admits nothing
        until enough old requests have left the window; nothing already recorded is forgotten."""
        self._limit = _check_limit(limit)

    def in_window(self) -> int:
        """Requests recorded in the window that ends now."""
        self._prune(self._clock.now())
        return len(self._stamps)

    def room(self) -> int | None:
        """How many more requests fit now; None when unlimited."""
        if self._limit is None:
            return None
        return max(0, self._limit - self.in_window())

    def wait_time(self) -> float:
        """Seconds until one more request fits: 0.0 if it fits now. Records nothing."""
        now = self._clock.now()
        self._prune(now)
        if self._limit is None or len(self._stamps) < self._limit:
            return 0.0
        # With n >= limit stamps inside, the (n - limit + 1) oldest must leave; the last of them
        # is at index n - limit, and it leaves once now - stamp >= window_s.
        blocking = self._stamps[len(self._stamps) - self._limit]
        return max(_MIN_WAIT_S, self._window_s - (now - blocking))

    def stamps(self) -> list[float]:
        """The clock times of the requests in the window that ends now, oldest first (to save)."""
        self._prune(self._clock.now())
        return list(self._stamps)

    def seed(self, stamps: Iterable[float]) -> None:
        """Count requests made before this window existed (a previous process's, as clock times):
        they hold their share of the budget until they leave the window. A time later than now
        counts as now, so a seed can delay requests but never admit one early."""
        now = self._clock.now()
        merged = sorted([*self._stamps, *(min(float(t), now) for t in stamps if math.isfinite(t))])
        self._stamps = deque(merged)
        self._prune(now)

    def try_acquire(self) -> float:
        """Record one request if it fits now and return 0.0; otherwise record nothing and return
        the seconds to wait before it would fit (always > 0)."""
        wait = self.wait_time()
        if wait == 0.0:
            self._record()
        return wait

    def _record(self) -> None:
        """Append now. Only called right after :meth:`wait_time` returned 0.0 with no await in
        between, so the budget cannot have been taken by another task; ``max`` keeps the deque
        sorted even if a misbehaving clock steps back."""
        now = self._clock.now()
        if self._stamps and now < self._stamps[-1]:
            now = self._stamps[-1]
        self._stamps.append(now)

    def _prune(self, now: float) -> None:
        """Drop stamps that have left the window. A stamp ``s`` is inside while ``now - s <
        window_s``; the subtraction form is used everywhere so that the check, the wait and the
        tests agree to the last bit."""
        stamps = self._stamps
        while stamps and now - stamps[0] >= self._window_s:
            stamps.popleft()


def _distinct(windows: Sequence[SlidingWindow]) -> list[SlidingWindow]:
    """The windows without repeats (by identity), so one window passed twice is charged once."""
    seen: dict[int, SlidingWindow] = {}
    for window in windows:
        seen.setdefault(id(window), window)
    return list(seen.values())


async def acquire_all(windows: Sequence[SlidingWindow], *, sleep: Sleep = anyio.sleep) -> float:
    """Wait until every window has room, then record one request in all of them at once.

    Returns the total seconds slept (the sum of the waits this call asked for), 0.0 when every
    window had room straight away.

    Atomic: the windows are checked and, only if all have room, recorded in one synchronous step
    with no ``await`` in between, so no other task on the event loop can slip in, and a request
    is never charged to the model's window while it waits for the provider's. If any window is
    full, the call sleeps for the longest wait and checks again.

    Cancellation-safe: a waiter records only in that final synchronous step, so a call cancelled
    before or while it sleeps leaves every window untouched. (It checks for cancellation before
    its first look, so an already-cancelled caller does not spend budget either.)

    Fair enough, not strictly FIFO: a newcomer can only be admitted if there is room at the moment
    it asks, and waiters for the same slot all wake at the instant it frees, so none is starved
    systematically; a request never waits behind another that needs a *different* full window
    (no head-of-line blocking between models that share a provider window).
    """
    targets = _distinct(windows)
    await anyio.lowlevel.checkpoint_if_cancelled()
    waited = 0.0
    while True:
        wait = max((window.wait_time() for window in targets), default=0.0)
        if wait == 0.0:
            for window in targets:
                window._record()
            return waited
        await sleep(wait)
        waited += wait


# ---- tokens per window ---------------------------------------------------------------------------


class TokenWindow:
    """At most ``limit`` tokens in any window of ``window_s`` seconds (a provider's tokens per minute).

    Each call counts an estimate when it is sent (its prompt plus ``max_tokens``, an upper bound of
    what it can use) and :meth:`correct` replaces it with the usage its reply reports. A call larger
    than the whole budget may still go, alone in its window: it could never go otherwise.
    """

    def __init__(self, limit: int | None, window_s: float = 60.0, *, clock: Clock | None = None) -> None:
        self._limit = _check_limit(limit)
        self._window_s = float(window_s)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._entries: deque[list[float]] = deque()
        self._total = 0.0

    @property
    def limit(self) -> int | None:
        """Tokens per window; None when unlimited."""
        return self._limit

    def set_limit(self, limit: int | None) -> None:
        """Change the budget (a reload); what was counted stays counted."""
        self._limit = _check_limit(limit)

    def in_window(self) -> int:
        """Tokens counted in the window that ends now."""
        self._prune(self._clock.now())
        return round(self._total)

    def fits(self, tokens: int) -> bool:
        """Whether a call of ``tokens`` may go now."""
        if self._limit is None:
            return True
        self._prune(self._clock.now())
        return self._total + tokens <= self._limit or not self._entries

    def wait_time(self, tokens: int) -> float:
        """Seconds until a call of ``tokens`` fits: 0.0 if it fits now."""
        if self.fits(tokens):
            return 0.0
        assert self._limit is not None
        now, left = self._clock.now(), self._total
        for at, counted, _ in self._entries:
            left -= counted
            if left + tokens <= self._limit:
                return max(_MIN_WAIT_S, self._window_s - (now - at))
        return max(_MIN_WAIT_S, self._window_s - (now - self._entries[-1][0]))

    def take(self, tokens: int) -> list[float]:
        """Count a call of ``tokens`` now; the entry returned is what :meth:`correct` takes."""
        entry = [self._clock.now(), float(tokens), 1.0]  # time, tokens, still in the window
        self._entries.append(entry)
        self._total += tokens
        return entry

    def correct(self, entry: list[float], tokens: int) -> None:
        """The call counted as ``entry`` used ``tokens`` (its reply's usage)."""
        if entry[2]:
            self._total += tokens - entry[1]
        entry[1] = float(tokens)

    def _prune(self, now: float) -> None:
        while self._entries and now - self._entries[0][0] >= self._window_s:
            gone = self._entries.popleft()
            gone[2] = 0.0
            self._total -= gone[1]
        if not self._entries:
            self._total = 0.0


# ---- adaptive concurrency -----------------------------------------------------------------------


def _finite_non_negative(value: float | None) -> float | None:
    """``None`` for a missing or nonsensical delay (NaN, infinity), else the delay clamped at 0."""
    if value is None or not math.isfinite(value):
        return None
    return max(0.0, float(value))


class AdaptiveLimit:
    """How many calls one model takes at once, learned from its 429s (AIMD, as in TCP).

    - :meth:`on_rate_limited` cuts the value multiplicatively (``value * decrease``), at most once
      per *episode*. The episode starts at the cut and lasts ``max(retry_after, cooldown_s)``
      seconds (extended if a later 429 in it carries a longer ``Retry-After``): the calls in
      flight when the server started refusing all come back 429 at about the same time, and they
      are one signal, not many. A 429 after the episode is fresh evidence and cuts again.
    - :meth:`on_success` adds ``increase / value``, so the limit grows by about ``increase`` per
      ``limit`` successes: slow, linear probing back up. Successes inside an episode do not grow
      it: they are calls sent before the cut and say nothing about the new level.
    - :meth:`on_transient` does nothing: a 5xx or a timeout says nothing about our rate.
    - :attr:`limit` is ``floor(value)``, always within ``[minimum, maximum]``, so never below 1.
    - :attr:`resume_at` is the clock time before which the pool should not start new calls to
      this model, from ``Retry-After`` (capped at ``max_pause_s`` so a garbled header cannot park a
      model for hours); in the past when there is no pause.

    :attr:`value` (a float, so slow growth is not lost to rounding) is what the pool persists;
    :meth:`restore` puts it back after a restart, so the service resumes at the known-good level
    instead of rediscovering it with a burst of 429s.
    """

    def __init__(
        self,
        initial: float,
        *,
        maximum: int,
        minimum: int = 1,
        decrease: float = 0.5,
        increase: float = 1.0,
        cooldown_s: float = 5.0,
        max_pause_s: float = 300.0,
        clock: Clock | None = None,
    ) -> None:
        if minimum < 1:
            raise ValueError(f"minimum must be at least 1, not {minimum}")
        if maximum < minimum:
            raise ValueError(f"maximum ({maximum}) must be at least minimum ({minimum})")
        if not 0.0 < decrease < 1.0:
            raise ValueError(f"decrease must be a factor between 0 and 1, not {decrease}")
        if not (math.isfinite(increase) and increase >= 0):
            raise ValueError(f"increase must be a non-negative number, not {increase}")
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0 and math.isfinite(max_pause_s)):
            raise ValueError("cooldown_s and max_pause_s must be finite and cooldown_s non-negative")
        self._minimum = int(minimum)
        self._maximum = int(maximum)
        self._decrease = float(decrease)
        self._increase = float(increase)
        self._cooldown_s = float(cooldown_s)
        self._max_pause_s = max(0.0, float(max_pause_s))
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._value = self._clamp(self._finite(initial))
        self._episode_end = -math.inf
        self._resume_at = -math.inf

    # -- reading --

    @property
    def limit(self) -> int:
        """Calls allowed in flight now: ``floor(value)``, never below ``minimum``."""
        return max(self._minimum, min(self._maximum, math.floor(self._value)))

    @property
    def value(self) -> float:
        """The exact learned level, for saving; feed it back with :meth:`restore`."""
        return self._value

    @property
    def maximum(self) -> int:
        """The configured ceiling."""
        return self._maximum

    @property
    def minimum(self) -> int:
        """The floor (at least 1)."""
        return self._minimum

    @property
    def resume_at(self) -> float:
        """Clock time before which no new call to this model should start (``-inf``: none)."""
        return self._resume_at

    def pause_remaining(self) -> float:
        """Seconds until :attr:`resume_at`; 0.0 when the model is not paused."""
        return max(0.0, self._resume_at - self._clock.now())

    def in_episode(self) -> bool:
        """Whether a 429 now would be ignored as part of the episode of the last cut."""
        return self._clock.now() < self._episode_end

    # -- events --

    def on_success(self) -> None:
        """A call succeeded: grow by ``increase / value`` unless a 429 episode is under way."""
        if self.in_episode():
            return
        self._value = min(float(self._maximum), self._value + self._increase / self._value)

    def on_transient(self) -> None:
        """A transient failure (5xx, timeout, connection reset): deliberately no change. It exists
        so the pool reports every outcome, and so "transient errors do not cut" is written down."""

    def on_rate_limited(self, retry_after: float | None = None, *, in_flight: int | None = None) -> bool:
        """A call got 429. Cut and return True, unless an episode is already under way.

        ``retry_after`` (seconds, from the server) sets :attr:`resume_at` and stretches the
        episode; inside an episode it can only push :attr:`resume_at` later, never cut again.
        ``in_flight``, if given, is how many calls to this model were running: the cut starts from
        ``min(value, in_flight)``, because halving a limit far above what was actually in use
        would not reduce the load at all.
        """
        now = self._clock.now()
        pause = _finite_non_negative(retry_after)
        if pause is not None:
            pause = min(pause, self._max_pause_s)
            self._resume_at = max(self._resume_at, now + pause)
        if now < self._episode_end:
            self._episode_end = max(self._episode_end, self._resume_at)
            return False
        base = self._value if in_flight is None else min(self._value, float(max(in_flight, 0)))
        self._value = self._clamp(base * self._decrease)
        self._episode_end = now + max(pause or 0.0, self._cooldown_s)
        return True

    # -- configuration and persistence --

    def set_maximum(self, maximum: int) -> None:
        """A config change: new ceiling, and the learned value clamped under it."""
        if maximum < self._minimum:
            raise ValueError(f"maximum ({maximum}) must be at least minimum ({self._minimum})")
        self._maximum = int(maximum)
        self._value = self._clamp(self._value)

    def restore(self, value: float) -> None:
        """Resume at a saved :attr:`value`, clamped into ``[minimum, maximum]`` (the config may
        have changed since it was saved). A non-finite value raises ValueError: a corrupt record
        should be noticed, and the caller can fall back to the configured start."""
        self._value = self._clamp(self._finite(value))

    def _clamp(self, value: float) -> float:
        return min(float(self._maximum), max(float(self._minimum), value))

    @staticmethod
    def _finite(value: float) -> float:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"a concurrency level must be a finite number, not {value!r}")
        return number
