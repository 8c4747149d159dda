"""The provider's circuit breaker: an outage parks the work instead of failing it.

When the endpoint stops answering (``pool.outage_failures`` attempts in a row end in a dropped
connection, a timeout or a 5xx, from at least two generations or from one that used all its
tries), the breaker *opens*: no attempt goes out, the pool claims no LLM work, and generations
whose calls failed during the outage go back to the queue with their retry budgets untouched.
After a delay (``pool.outage_probe_s``, doubling up to ``pool.outage_probe_cap_s``) one attempt
goes through as a probe (*half-open*): an answer of any kind closes the breaker and the work
resumes by itself; another outage failure opens it again for longer.

A generation fails ``transient`` only when its own calls keep failing while the provider is
otherwise healthy (the breaker stayed closed during its run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio

from daydreamd.core.config import PoolSettings
from daydreamd.core.retry import FailureKind
from daydreamd.core.status import Trouble
from daydreamd.core.timestamps import utc_now
from daydreamd.daemon.events import EventBus


class BreakerState(StrEnum):
    """Closed: calls go out. Open: none do until the next probe. Half-open: one probe is out."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def is_outage(outcome: str, status: int | None) -> bool:
    """An attempt that says the endpoint is down: no answer at all, or a 5xx."""
    return outcome == FailureKind.TRANSIENT and (status is None or status >= 500)


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of the breaker's state, to log and publish."""

    state: BreakerState
    failures: int
    next_probe_in_s: float | None


class Breaker:
    """One endpoint's breaker (see the module docstring)."""

    def __init__(
        self,
        *,
        threshold: int = 3,
        probe_s: float = 5.0,
        probe_cap_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.probe_s = probe_s
        self.probe_cap_s = probe_cap_s
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        """Outage failures in a row."""
        self._failing: set[str] = set()
        """Generations among those failures."""
        self.down_since: str | None = None
        """Wall-clock time the breaker opened (ISO-8601), while it is not closed."""
        self.opened_at: float | None = None
        self.opened_count = 0
        """Times the breaker has opened since the start: a run that saw it change saw an outage."""
        self._delay = probe_s
        self._next_probe = 0.0
        self._probe_started = 0.0
        self._changed = anyio.Event()

    def configure(self, pool: PoolSettings) -> None:
        """Follow the settings in force (``pool.outage_*``)."""
        self.threshold, self.probe_s, self.probe_cap_s = (
            pool.outage_failures,
            pool.outage_probe_s,
            pool.outage_probe_cap_s,
        )

    def caused(self, kind: FailureKind | None, opened_before: int) -> bool:
        """Whether a generation's failure of ``kind`` is the outage's doing rather than its own: a
        transient failure while the breaker is not closed, or after it opened during the run."""
        return kind is FailureKind.TRANSIENT and (not self.closed or self.opened_count != opened_before)

    def trouble(self) -> Trouble | None:
        """What ``status`` shows while the provider is down."""
        if self.closed or self.down_since is None:
            return None
        return Trouble(
            what="provider_down",
            since=self.down_since,
            message=f"{self.failures} failed call(s) in a row",
            next_try_in_s=self.next_probe_in(),
        )

    def announce(self, change: Transition, bound: Any, bus: EventBus) -> None:
        """Log and publish a change of state (``provider_down`` / ``provider_up``)."""
        if change.state is BreakerState.OPEN:
            fields = {"since": self.down_since, "next_probe_in_s": change.next_probe_in_s}
            bound.error("provider_down", failures=change.failures, **fields)
            bus.publish("provider_down", **fields)
        else:
            bound.info("provider_up")
            bus.publish("provider_up")

    @property
    def closed(self) -> bool:
        """Whether calls go out freely (the pool claims LLM work only then)."""
        return self.state is BreakerState.CLOSED

    def next_probe_in(self) -> float | None:
        """Seconds until the next probe while open; None otherwise."""
        if self.state is not BreakerState.OPEN:
            return None
        return max(0.0, self._next_probe - self._clock())

    def record(self, gen_id: str, outcome: str, status: int | None, *, last_try: bool) -> Transition | None:
        """Take one attempt's outcome into account; returns the state change it caused, if any."""
        if not is_outage(outcome, status):
            return self._answered()
        self.failures += 1
        self._failing.add(gen_id)
        if self.state is BreakerState.HALF_OPEN:
            return self._open(min(self._delay * 2, self.probe_cap_s))
        evidence = len(self._failing) >= 2 or last_try
        if self.state is BreakerState.CLOSED and self.failures >= self.threshold and evidence:
            return self._open(self.probe_s)
        return None

    def _answered(self) -> Transition | None:
        """The endpoint answered (whatever it said): it is up."""
        self.failures = 0
        self._failing.clear()
        if self.state is BreakerState.CLOSED:
            return None
        self.state = BreakerState.CLOSED
        self.down_since = self.opened_at = None
        self._delay = self.probe_s
        self._notify()
        return Transition(BreakerState.CLOSED, 0, None)

    def _open(self, delay: float) -> Transition:
        if self.state is BreakerState.CLOSED:
            self.down_since = utc_now()
            self.opened_at = self._clock()
            self.opened_count += 1
        self.state = BreakerState.OPEN
        self._delay = delay
        self._next_probe = self._clock() + delay
        self._notify()
        return Transition(BreakerState.OPEN, self.failures, delay)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def permit(self) -> None:
        """Wait until an attempt may go out: at once while closed; while open, until this caller
        is the probe, or the probe has closed the breaker."""
        while True:
            if self.state is BreakerState.CLOSED:
                return
            changed = self._changed
            if self.state is BreakerState.OPEN:
                wait = self._next_probe - self._clock()
                if wait <= 0:
                    self.state = BreakerState.HALF_OPEN
                    self._probe_started = self._clock()
                    self._notify()
                    return
                with anyio.move_on_after(wait):
                    await changed.wait()
                continue
            # Half-open: the probe is out and its answer decides. A probe that never reports
            # (its call was cancelled) must not hold every call forever: after the cap, probe again.
            with anyio.move_on_after(self.probe_cap_s):
                await changed.wait()
            if (
                self.state is BreakerState.HALF_OPEN
                and self._clock() - self._probe_started >= self.probe_cap_s
            ):
                self.state = BreakerState.OPEN
                self._next_probe = self._clock()
