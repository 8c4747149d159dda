"""The worker pool: start approved work within its limits, run it through the runner.

Ready work is read from SQLite ahead of need into per-model lanes (:mod:`~daydreamd.daemon.scheduler`,
:mod:`~daydreamd.storage.ready`). A few generations are *armed* ahead of free slots: started (the
row becomes ``running``, one transaction) and prepared without a slot (:mod:`~daydreamd.daemon.armed`);
one is *launched* (takes a slot, its places in the rate windows, and an endpoint) the moment
everything that limits it allows one more call, so no slot ever waits for a rate window or for
our own preparation, and one model's queue never blocks another's.

Limits, all enforced here and nowhere else (kept by :mod:`~daydreamd.daemon.limits` and
:mod:`~daydreamd.daemon.endpoints`): a global concurrency (calls at the provider); per-model
concurrency that adapts (halved once per episode of 429s, honouring Retry-After; grown back
slowly on success; never below 1); requests per minute per model and per provider, never
exceeded in any sliding 60-second window: a first attempt's place is taken as it is launched, a
retry waits for its own; and per endpoint (a server or API key) calls at once, requests and
tokens per minute. A quota failure parks all LLM work for ``pool.quota_park_s`` instead of
hammering the provider; an outage opens the provider's circuit breaker
(:mod:`~daydreamd.daemon.breaker`), which holds every call and start until a probe gets an
answer, and sends the generations whose calls failed meanwhile back to the queue. An approval
with a spent budget (:mod:`~daydreamd.daemon.budgets`) starts no more calls: its budget counts
armed work when more is armed, and is checked again as each call is launched.

Only work whose parent is done is ready, parents' stages first. Every start carries a fencing
token (see ``store``); completions are committed in batches (:mod:`~daydreamd.daemon.commits`).
On shutdown the pool starts nothing more, gives armed work back to the queue, lets in-flight
calls finish within the grace period, and gives back whatever is left. What it has done is
counted by :mod:`~daydreamd.daemon.counters` and read through :meth:`Pool.snapshot`.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio
import structlog

from daydreamd.core.config import DEFAULT_ENDPOINT, Settings
from daydreamd.core.jobs import Jobs
from daydreamd.core.pricing import Price, configured_prices, price_for
from daydreamd.core.retry import FailureKind
from daydreamd.core.stages import Stage, State
from daydreamd.core.status import EndpointStatus, ModelStatus, ParkedStatus, PoolStatus, Trouble
from daydreamd.core.timestamps import utc_now
from daydreamd.daemon.armed import ArmedWork, CalledOff
from daydreamd.daemon.breaker import Breaker, BreakerState, is_outage
from daydreamd.daemon.budgets import Budgets
from daydreamd.daemon.commits import CommitBatcher, completion_of
from daydreamd.daemon.counters import Counters
from daydreamd.daemon.endpoints import (
    AttemptResult,
    Endpoint,
    Endpoints,
    OutagePolicy,
    Place,
    estimate_tokens,
)
from daydreamd.daemon.events import EventBus
from daydreamd.daemon.health import Health, is_db_fault
from daydreamd.daemon.limits import PoolLimits
from daydreamd.daemon.ratelimit import SlidingWindow, acquire_all
from daydreamd.daemon.runner import NO_JOB, Outcome, Runner
from daydreamd.daemon.scheduler import Lanes
from daydreamd.daemon.settings import LiveSettings
from daydreamd.llm.calls import AttemptRecord
from daydreamd.llm.types import LlmRequest, Provider, Reply
from daydreamd.storage.ready import Key, Ready, ReadyWork
from daydreamd.storage.restart_memory import RestartMemory
from daydreamd.storage.store import AttemptRow, Claim, Completion, Store

log = structlog.get_logger("daydreamd.daemon.pool")
IDLE_POLL_S = 1.0
MIN_PAUSE_S = 0.005
"""The shortest the loop sleeps for a rate window to open: a window a few microseconds from
opening must not make the loop spin."""
CHILDREN_EVERY_S = 0.5
"""How long finished parents wait, at most, for the lookup of their children while slots are full."""
LANE_BATCH = 256
"""Ready generations read per (mode, model) at a time."""
RECONCILE_S = 30.0
"""How often running rows without an owner in this process are looked for."""


class JobSource(Protocol):
    """Where the pool finds the current cohort's jobs (``rebuild.Current``)."""

    @property
    def jobs(self) -> Jobs | None:
        """The jobs of the current cohort, or None before the first good build."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSnapshot:
    """The pool at one instant: what ``/v1/status``, ``/v1/limits`` and ``/metrics`` report."""

    in_flight: int
    """Generations holding a concurrency slot."""
    claimed: int
    """Generations claimed and not yet committed (in flight, or saving their reply)."""
    pool: PoolStatus
    models: Mapping[str, ModelStatus]
    endpoints: Mapping[str, EndpointStatus]
    spent_usd: float
    rates_per_minute: Mapping[str, float]
    calls: Mapping[tuple[str, str], int]
    """(model, attempt outcome) -> attempts since start."""
    tokens: Mapping[tuple[str, str], int]
    """(model, prompt|completion|reasoning) -> tokens since start."""
    cost_usd: Mapping[str, float]
    """Model -> dollars since start."""


class _GatedProvider:
    """Sends each attempt of one generation to an endpoint of its model, within its limits.

    The first attempt's places (in the model's, the vendor's and the endpoint's windows) were
    taken when the generation was launched; a retry waits for its own here, holding its slot,
    and goes to another endpoint of the model when the first one failed and another has room.
    """

    def __init__(
        self,
        place: Callable[[], Place],
        windows: list[SlidingWindow],
        pool: Pool,
        model_id: str,
    ) -> None:
        self._place = place
        self._windows = windows
        self._pool = pool
        self._model_id = model_id
        self._prepaid = True

    async def complete(self, request: LlmRequest) -> Reply:
        pool = self._pool
        await pool.breaker.permit()
        await pool.limits.wait_unparked()
        place = self._place()
        if self._prepaid:
            self._prepaid = False
        else:
            tokens = estimate_tokens(request)
            if place.endpoint.failures:
                other = pool.endpoints.pick(self._model_id, tokens, time.monotonic(), besides=place.endpoint)
                if other is not None and other is not place.endpoint:
                    pool.endpoints.move(place, other)
            endpoint = place.endpoint
            await acquire_all([*self._windows, endpoint.requests])
            while (wait := endpoint.tokens.wait_time(tokens)) > 0:  # noqa: ASYNC110 (time must pass)
                await anyio.sleep(wait)
            place.tokens = endpoint.tokens.take(tokens)
        return await place.endpoint.provider.complete(request)


class Pool:
    """Runs claimed generations; see the module docstring for the rules it keeps."""

    def __init__(
        self,
        *,
        settings: LiveSettings,
        store: Store,
        runner: Runner,
        current: JobSource,
        bus: EventBus | None = None,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        """``providers``: one per endpoint (``Settings.all_endpoints``); without them, every call
        goes to the runner's provider as the endpoint ``llm``."""
        self.settings = settings
        self.store = store
        self.runner = runner
        self.current = current
        self.bus = bus or EventBus()
        self.limits = PoolLimits(settings, self._provider_of)
        self.endpoints = Endpoints(providers or {DEFAULT_ENDPOINT: runner.provider}, settings.current)
        self._places: dict[str, Place] = {}
        """The endpoint each launched call went to (and its places there)."""
        self._unrouted_since: str | None = None
        """Since when some model's queued work has had no endpoint (see :meth:`_unrouted`)."""
        self._estimates: dict[str, int] = {}
        """Tokens each prepared call may use (its prompt plus max_tokens), for tokens per minute."""
        self.budgets = Budgets()
        self.counters = Counters()
        self.commits = CommitBatcher(store)
        self.breaker = Breaker()
        self.state_db = Health("state_db_unwritable")
        """Whether the run state takes writes (completions wait and retry while it does not)."""
        self._reconciled = time.monotonic()
        self._requeues: Counter[str] = Counter()
        """Generations sent back to the queue because of an outage, and how often."""
        self.in_flight: dict[str, Claim] = {}
        """Every claimed generation not yet committed."""
        self.ready = ReadyWork(store)
        self.lanes = Lanes(batch=LANE_BATCH)
        """Ready work read ahead, per (mode, model): still ``queued`` in SQLite until it starts."""
        self._forget = True
        """Set when work may have become ready (or stopped being ready) in ways no lane knows of."""
        self._exhausted: set[int] = set()
        self._budgets_stale = False
        """Set when ready work of an approval newer than the budgets' last refresh was seen."""
        self._parents: list[str] = []
        """Generations finished since the last look whose children may now be ready."""
        self._children_at = 0.0
        self._started: dict[str, Ready] = {}
        """The ready row each claim in flight came from (to put a requeued one back)."""
        self.armed = ArmedWork(on_waiting=lambda: self.wake(new_work=False))
        """Generations started and prepared ahead of a free slot (:mod:`~daydreamd.daemon.armed`)."""
        self._arm_lock = anyio.Lock()
        self._holds = 0
        """How many :meth:`held` blocks are open (nothing is armed meanwhile)."""
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._stopping = False
        self.breaker.configure(settings.current.pool)
        settings.subscribe(self._settings_changed)

    # -- control -------------------------------------------------------------------------------

    def wake(self, *, new_work: bool = True) -> None:
        """Look for work now: a slot freed, or (``new_work``) something may have become ready
        that the lanes cannot know of (an approval, a retry, a rebuild, a change of limits)."""
        if new_work:
            self._forget = True
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; ``run`` then drains in-flight work within the grace period (armed work
        that has not made its call goes back to the queue at once)."""
        self._stopping = True
        self.armed.call_off()
        self.wake()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        """Arm nothing while the body runs, and call off what is armed before it starts: every
        generation that has not made its call is then back in the queue (for a revoke, which
        must catch all of them)."""
        async with self._arm_lock:
            self._holds += 1
            self.armed.call_off()
        try:
            await self.armed.until_given_back()
            yield
        finally:
            self._holds -= 1
            self.wake()

    def _settings_changed(self, settings: Settings) -> None:
        """Apply reloaded limits without touching in-flight calls (SIGHUP, or a live change)."""
        self.limits.apply(settings)
        self.endpoints.apply(settings)
        self.breaker.configure(settings.pool)
        self.wake()

    def set_paused(self, model_id: str | None, paused: bool) -> None:
        """Pause or resume claiming for every model (None) or one; in-flight calls go on."""
        self.limits.set_paused(model_id, paused)
        self.wake()

    def set_limits(self, model_id: str | None, concurrency: int | None, rpm: int | None) -> None:
        """Change limits live (they last until the next reload of the config)."""
        settings = self.settings.current
        pool = settings.pool.with_limits(model_id, concurrency, rpm)
        self.settings.replace(replace(settings, pool=pool))

    async def restore_limits(self) -> None:
        """Resume learned per-model concurrency from the run state, and the spend of budgets."""
        self.limits.restore(await RestartMemory(self.store).load_limits())
        await self.refresh_budgets()

    async def refresh_budgets(self) -> None:
        """Reload budgeted approvals and what they have spent so far (after an approval)."""
        await self.budgets.refresh(self.store, self._price)

    def exhausted_approvals(self) -> list[int]:
        """Budgeted approvals where one more call would pass the budget (spent + calls in flight;
        armed work is not counted: it makes no call unless it passes this check when launched)."""
        return self.budgets.exhausted(self._calls_by_approval())

    def _calls_by_approval(self, *, armed: bool = False) -> Counter[int]:
        """Generations in flight per approval: those that made (or are making) their call, and
        with ``armed`` those armed ahead of it too."""
        return Counter(
            claim.approval_id
            for gen_id, claim in self.in_flight.items()
            if claim.approval_id is not None and (armed or gen_id not in self.armed)
        )

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run work until ``stop``; then drain, release and save learned limits."""
        async with anyio.create_task_group() as workers:
            workers.start_soon(self.commits.run)
            while not self._stopping:
                pause = IDLE_POLL_S
                try:
                    await self._reconcile()
                    pause = await self._schedule(workers)
                except Exception:  # a failed claim must not stop the pool; it tries again
                    log.exception("claim_failed")
                with anyio.move_on_after(max(pause, MIN_PAUSE_S)):
                    await self._wake.wait()
                self._wake = anyio.Event()
            await self._drain(workers)
        await self.save_limits()

    async def _drain(self, workers: anyio.abc.TaskGroup) -> None:
        grace = self.settings.current.pool.grace_s
        self.armed.call_off()
        if self.in_flight:
            log.info("pool_draining", in_flight=len(self.in_flight), grace_s=grace)
            with anyio.move_on_after(grace):
                while self.in_flight:
                    self._idle = anyio.Event()
                    await self._idle.wait()
        leftover = list(self.in_flight.values())
        workers.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            released = await self.store.release(leftover)
        log.info("pool_stopped", released=released, outcomes=dict(self.counters.outcomes))

    async def _schedule(self, workers: anyio.abc.TaskGroup) -> float:
        """Read ready work that the lanes lack, send armed work that may call now, and arm more.

        Returns the seconds after which a rate window that holds work back opens (at most
        ``IDLE_POLL_S``): the loop looks again then even if nothing wakes it.
        """
        jobs = self.current.jobs
        if jobs is None or self.limits.paused or self.runner.disk.failing or self.state_db.failing:
            self.armed.call_off()
            return IDLE_POLL_S
        if self._budgets_stale:
            self._budgets_stale = False
            await self.refresh_budgets()
        exhausted = self.exhausted_approvals()
        if self._forget or set(exhausted) != self._exhausted:
            spent = set(exhausted) - self._exhausted
            # A budget reaching its end calls off only its own armed work; anything else, all of it.
            self.armed.call_off(None if self._forget else lambda ready: ready.approval_id in spent)
            self.lanes.forget()
            self._parents.clear()
            self._forget = False
            self._exhausted = set(exhausted)
        keys = _keys(jobs)
        await self._read(keys, exhausted)
        pause = IDLE_POLL_S if self._forget else self._launch(keys)
        await self._arm(workers, keys)
        await self._read_children()
        return pause

    async def _read_children(self) -> None:
        """Add the now-ready children of generations that finished, when there is a free slot
        they could take (or every ``CHILDREN_EVERY_S``): while the lanes fill every slot, the
        lookup waits, and the parents it covers pile up into one query."""
        now = time.monotonic()
        if not self._parents or (self.limits.free() <= 0 and now - self._children_at < CHILDREN_EVERY_S):
            return
        self._children_at = now
        parents, self._parents = self._parents, []
        if self.lanes.add(await self.ready.children(parents), busy=self.in_flight):
            self._wake.set()  # start them at once

    async def _read(self, keys: list[Key], exhausted: list[int]) -> None:
        """Bring the lanes of keys that may start up to date: keys never read (one probe for all of
        them), and lanes running low."""
        open_keys = [key for key in keys if self._may_read(key)]
        unread = [key for key in open_keys if not self.lanes.known(key)]
        if unread:
            with_work = await self.ready.keys_with_work()
            for key in unread:
                if key not in with_work:
                    self.lanes.fill(key, [], asked=1)
        batch = self.lanes.batch
        for key in open_keys:
            if self.lanes.needs_read(key):
                rows = await self.ready.ready(key, limit=batch, exclude_approvals=exhausted)
                self.lanes.fill(key, rows, asked=batch, busy=self.in_flight)

    def _may_read(self, key: Key) -> bool:
        """Whether reading ``key``'s work can lead anywhere now (its calls are not all held)."""
        mode, model_id = key
        if mode == "copy":
            return True
        return (
            self.breaker.closed
            and model_id not in self.limits.paused_models
            and self.limits.parked_for(time.monotonic()) is None
        )

    def _launch(self, keys: list[Key]) -> float:
        """Send armed, prepared generations round-robin over their models, as far as everything that
        limits a call allows now: a slot, the model's concurrency, a place in each rate window
        (taken here), an endpoint with room for its tokens (the one with the most room), the
        provider up, the approval's budget (this call counted, armed ones not).
        Returns the seconds until a rate window that holds one back opens (at most ``IDLE_POLL_S``).
        """
        blocked: list[float] = []
        now = time.monotonic()
        calling = self._calls_by_approval()

        def may_call(key: Key) -> bool:
            model_id = key[1]
            if not self.breaker.closed or self.limits.model_free(model_id, 1, now) <= 0:
                return False  # the provider is down, or the model paused, parked or at its concurrency
            wait = max(window.wait_time() for window in self.limits.windows(model_id))
            if wait == 0 and not any(e.has_room(0, now) for e in self.endpoints.of(model_id)):
                wait = self.endpoints.wait_time(model_id, now)  # 0 when only their calls at once are full
                if wait == 0:
                    return False
            if wait > 0:
                blocked.append(wait)
            return wait == 0

        picked: dict[str, Endpoint] = {}

        def allowed(ready: Ready) -> bool:
            if ready.approval_id is not None and ready.approval_id in self.budgets.exhausted(calling):
                return False
            tokens = self._estimates.get(ready.gen_id, 0)
            endpoint = self.endpoints.pick(ready.generation.llm_model_id, tokens, now)
            if endpoint is not None:
                picked[ready.gen_id] = endpoint
            return endpoint is not None

        def launch(ready: Ready) -> None:
            model_id, tokens = ready.generation.llm_model_id, self._estimates.get(ready.gen_id, 0)
            endpoint = picked.pop(ready.gen_id)  # allowed() picked it, with no await since
            self._places[ready.gen_id] = self.endpoints.take(endpoint, tokens)
            self.limits.take(ready.gen_id, model_id)
            for window in self.limits.windows(model_id):
                window.try_acquire()  # may_call saw room in each, with no await since
            if ready.approval_id is not None:
                calling[ready.approval_id] += 1
            self.armed.launch(ready)

        waiting = self.armed.waiting
        waiting.choose(self.limits.free(), keys, may_start=may_call, allowed=allowed, take=launch)
        return min([IDLE_POLL_S, *blocked])

    async def _arm(self, workers: anyio.abc.TaskGroup, keys: list[Key]) -> None:
        """Start (one transaction) and prepare generations ahead of free slots, round-robin over the
        lanes of models that could call soon: as many as there are free slots, plus ``ahead``.
        What was revoked or retired since it was read is not started."""
        async with self._arm_lock:
            if self._holds or self._stopping:
                return
            room = self._arming_room()
            if room <= 0:
                return
            chosen = self.lanes.choose(
                room, keys, may_start=self._may_arm(), allowed=self._within_budget(), take=self.armed.arm
            )
            if not chosen:
                return
            try:
                claims = await self.ready.start(
                    chosen, lease_s=self.settings.current.pool.lease_s, now=time.time()
                )
            except BaseException:  # nothing started: read the lanes again
                for ready in chosen:
                    self.armed.finished(ready.gen_id)
                self._forget = True
                raise
            started = {claim.generation.gen_id: claim for claim in claims}
            for ready in chosen:
                claim = started.get(ready.gen_id)
                if claim is None:
                    self.armed.finished(ready.gen_id)
                else:
                    self._start(workers, claim, ready)

    def _ahead(self) -> int:
        """How many generations are armed beyond the free slots: enough that a slot freed by a
        call that ended finds a prepared one while the next is prepared (a few milliseconds)."""
        return max(2, self.settings.current.pool.concurrency // 8)

    def _arming_room(self) -> int:
        """How many more generations may be armed now: free slots plus :meth:`_ahead`, less those
        armed, and never more than would put ``2 x pool.concurrency`` generations between start
        and commit (saving the reply, parsing and committing happen outside the slot; this bounds
        how many replies may wait for them in memory: a slow disk, a run state that takes no writes)."""
        concurrency = self.settings.current.pool.concurrency
        ahead = self.limits.free() + self._ahead() - len(self.armed)
        return min(ahead, 2 * concurrency - len(self.in_flight))

    def _may_arm(self) -> Callable[[Key], bool]:
        """Whether a key's next generation may be armed: copies always (they need no slot); calls
        while their model is not held back, has an endpoint, has room for it within its own and its
        endpoints' calls at once plus :meth:`_ahead` (one alone while none of its endpoints is open,
        so a model held back there keeps no room from the others), and each of its rate windows
        has a place for it."""
        now, ahead = time.monotonic(), self._ahead()

        def may_arm(key: Key) -> bool:
            mode, model_id = key
            if mode == "copy":
                return True
            if not self.breaker.closed or self.limits.holds_back(model_id, now):
                return False
            if not self.endpoints.of(model_id):
                return False  # its work waits, queued (a trouble in status) until a route is configured
            armed = self.armed.of(key)
            if self.endpoints.held_back(model_id, now):
                return armed < 1  # one prepared for when it opens, no more room kept from the others
            room = min(self.limits.model_room(model_id), self.endpoints.room(model_id, now))
            if armed >= max(0, room) + ahead:
                return False
            rooms = (window.room() for window in self.limits.windows(model_id))
            return all(room is None or room > armed for room in rooms)

        return may_arm

    def _within_budget(self) -> Callable[[Ready], bool]:
        """Whether a generation may be armed under its approval's budget: counted with every
        generation of that approval started and not committed (armed ones too), so prefetched
        work can never start what the budget would not pay for."""
        budgeted = self._calls_by_approval(armed=True)

        def allowed(ready: Ready) -> bool:
            approval = ready.approval_id
            if approval is None:
                return True
            if self.budgets.unknown(approval):
                self._budgets_stale = True  # read its budget (if any) first, then look again
                self._wake.set()
                return False
            if approval in self.budgets.exhausted(budgeted):
                return False
            budgeted[approval] += 1
            return True

        return allowed

    def _start(self, workers: anyio.abc.TaskGroup, claim: Claim, ready: Ready) -> None:
        g = claim.generation
        self.in_flight[g.gen_id] = claim
        self._started[g.gen_id] = ready
        self.bus.publish("generation_started", gen_id=g.gen_id, stage=str(g.stage), model=g.llm_model_id)
        workers.start_soon(self._work, claim, ready, name=g.gen_id)

    def _release_slot(self, claim: Claim) -> None:
        """Free the claim's concurrency slot and its place at its endpoint (once): its call is over."""
        gen_id = claim.generation.gen_id
        place = self._places.pop(gen_id, None)
        if place is not None:
            self.endpoints.give_back(place)
        self._estimates.pop(gen_id, None)
        if self.limits.release(gen_id, _call_model(claim)):
            self._launch_now()
            self.wake(new_work=False)

    def _launch_now(self) -> None:
        """Hand a slot that just freed to a prepared generation at once, in the callback that freed
        it. Waiting for the scheduling loop to come round costs a turn of the event loop per call,
        which under load is a few percent of a 100 ms call. Only when nothing the loop would check
        first has changed (no new work to read, nothing paused or failing, not stopping)."""
        jobs = self.current.jobs
        if (
            jobs is None
            or self._forget
            or self._stopping
            or self.limits.paused
            or self.runner.disk.failing
            or self.state_db.failing
        ):
            return
        self._launch(_keys(jobs))

    def _provider_of(self, model_id: str) -> str:
        jobs = self.current.jobs
        model = jobs.model(model_id) if jobs is not None else None
        return model.provider if model is not None else ""

    def may_submit(self, model_id: str) -> bool:
        """Whether a model's batch work may be submitted now (neither it nor the pool is paused)."""
        return not self.limits.paused and model_id not in self.limits.paused_models

    def price(self, model_id: str) -> Price | None:
        """A model's price per token (its CSV row's, else the config's), None when unknown."""
        return self._price(model_id)

    def _price(self, model_id: str) -> Price | None:
        jobs = self.current.jobs
        return price_for(
            jobs.model(model_id) if jobs else None, configured_prices(self.settings.current.prices)
        )

    # -- one generation ------------------------------------------------------------------------

    async def _work(self, claim: Claim, ready: Ready) -> None:
        g = claim.generation
        bound = log.bind(gen_id=g.gen_id, stage=str(g.stage), model=g.llm_model_id)
        attempts: list[AttemptRow] = []
        outages = self.breaker.opened_count
        done = False
        try:
            try:
                with self.armed.scope(g.gen_id) as preparing:
                    outcome = await self._run(claim, attempts, bound)
            except CalledOff:
                await self._give_back(claim, ready, bound)
                return
            if preparing.cancelled_caught:  # called off during its preparation: no call was made
                await self._give_back(claim, ready, bound)
                return
            if self.breaker.caused(outcome.kind, outages) and self._requeues[g.gen_id] < self._max_requeues:
                await self._requeue(claim, attempts, outcome, bound)
                return
            completion = completion_of(claim, outcome, attempts)
            committed = await self._commit(completion, bound)
            if committed is None:
                return
            done = bool(committed) and outcome.ok
            self.counters.generation(
                str(g.stage), str(State.DONE) if outcome.ok else str(outcome.kind), time.monotonic()
            )
            if not committed:
                bound.warning("stale_commit_ignored", token=claim.token)
            elif outcome.ok:
                bound.info("generation_done", attempts=len(attempts), reused_reply=outcome.reused_reply)
            else:
                bound.warning("generation_failed", error_type=str(outcome.kind), message=outcome.message)
            event = "generation_done" if outcome.ok else "generation_failed"
            self.bus.publish(
                event,
                gen_id=g.gen_id,
                stage=str(g.stage),
                model=g.llm_model_id,
                error_type=str(outcome.kind) if outcome.kind else None,
            )
        finally:
            self._release_slot(claim)
            self.armed.finished(g.gen_id)
            self.in_flight.pop(g.gen_id, None)
            self._started.pop(g.gen_id, None)
            if done and g.stage is not Stage.EVALUATION:
                self._parents.append(g.gen_id)  # its children may be ready now
            if not self.in_flight:
                self._idle.set()
            self.wake(new_work=False)

    async def _give_back(self, claim: Claim, ready: Ready, bound: Any) -> None:
        """An armed generation called off before its call: its row goes back to the queue (under
        its fencing token), and to its lane. While the run state takes no writes it is tried
        again, as a commit is: a revoke waiting for it (:meth:`held`) must find it queued, not
        left ``running`` for the reconciler. At shutdown one try: a row left running then is
        sent back at the next start."""
        release = functools.partial(self.store.release, [claim])
        try:
            if self._stopping:
                with anyio.CancelScope(shield=True):
                    await release()
            else:
                await self.state_db.retrying(release, is_db_fault)
        except Exception:
            bound.exception("give_back_failed")
            return
        if not self._stopping:
            self.lanes.add([ready])

    async def _commit(self, completion: Completion, bound: Any) -> bool | None:
        """Commit a completion, retrying while the run state takes no writes (a full disk, a lock
        another process holds), so the row never stays ``running`` without its owner. None: an
        unexpected error (logged); the in-process reconciler sends the row back to the queue."""
        try:
            return await self.state_db.retrying(lambda: self.commits.commit(completion), is_db_fault)
        except Exception:
            bound.exception("commit_failed")
            return None

    async def _reconcile(self) -> None:
        """Every so often, send back to the queue any ``running`` row this process does not own
        (a commit that failed for good, a worker that died): not only at startup."""
        now = time.monotonic()
        if now - self._reconciled < RECONCILE_S:
            return
        self._reconciled = now
        orphans = [gen_id for _, gen_id in await self.store.running() if gen_id not in self.in_flight]
        if orphans:
            requeued = await self.store.requeue(orphans)
            log.warning("orphans_requeued", count=requeued, first=orphans[:5])
            self.wake()

    @property
    def _max_requeues(self) -> int:
        return self.settings.current.pool.outage_requeues

    async def _requeue(self, claim: Claim, attempts: list[AttemptRow], outcome: Outcome, bound: Any) -> None:
        g = claim.generation
        self._requeues[g.gen_id] += 1
        completion = Completion(
            gen_id=g.gen_id,
            token=claim.token,
            llm_model_id=g.llm_model_id,
            ok=False,
            requeue=True,
            error_message=f"requeued: the provider was down ({outcome.message})",
            attempts=tuple(attempts),
        )
        if await self._commit(completion, bound) is None:
            return
        ready = self._started.get(g.gen_id)
        if ready is not None:
            self.lanes.add([ready], busy=())
        bound.warning("generation_requeued", reason="provider_down", times=self._requeues[g.gen_id])
        self.bus.publish("generation_requeued", gen_id=g.gen_id, stage=str(g.stage), model=g.llm_model_id)

    async def _run(self, claim: Claim, attempts: list[AttemptRow], bound: Any) -> Outcome:
        g = claim.generation
        jobs = self.current.jobs
        job = jobs.job(g) if jobs is not None else None
        if job is None:
            message = NO_JOB
            return Outcome(
                gen_id=g.gen_id, stage=g.stage, ok=False, kind=FailureKind.RENDER_ERROR, message=message
            )
        provider = None
        if job.model is not None:
            if not self.endpoints.of(g.llm_model_id):
                message = (
                    f"no endpoint serves model {g.llm_model_id}: add [models.{g.llm_model_id}] "
                    "endpoints = [...] to the config, or an [llm] section"
                )
                return Outcome(
                    gen_id=g.gen_id,
                    stage=g.stage,
                    ok=False,
                    kind=FailureKind.INVALID_REQUEST,
                    message=message,
                )
            windows = self.limits.windows(g.llm_model_id)
            provider = _GatedProvider(lambda: self._places[g.gen_id], windows, self, g.llm_model_id)

        async def before_call(request: LlmRequest) -> None:
            self._estimates[g.gen_id] = estimate_tokens(request)
            await self.armed.until_launched(g.gen_id)

        def on_attempt(record: AttemptRecord) -> None:
            attempts.append(_attempt_row(record))
            last_try = record.outcome != "ok" and record.delay_s is None
            change = self.breaker.record(g.gen_id, record.outcome, record.status, last_try=last_try)
            if change is not None:
                self.breaker.announce(change, bound, self.bus)
                if change.state is BreakerState.CLOSED:
                    self.wake()
            place = self._places.get(g.gen_id)
            if place is not None:
                self._endpoint_attempt(place, record, bound)
            cost = self.counters.attempt(g.llm_model_id, record, self._price(g.llm_model_id))
            if cost is not None:
                self.budgets.record(claim.approval_id, cost)
            self._adapt(g.llm_model_id, record, bound)

        try:
            return await self.runner.run(
                job,
                on_attempt=on_attempt,
                before_call=before_call,
                on_call_over=lambda: self._release_slot(claim),
                provider=provider,
                fresh=claim.fresh,
                policy=self.settings.current.retry,
            )
        except CalledOff:
            raise
        except Exception as exc:  # the per-task boundary: a bug here fails one generation, not the service
            bound.exception("generation_crashed")
            return Outcome(
                gen_id=g.gen_id, stage=g.stage, ok=False, kind=None, message=f"internal error: {exc!r}"
            )

    def _endpoint_attempt(self, place: Place, record: AttemptRecord, bound: Any) -> None:
        """Count the attempt's reported tokens at its endpoint, and its health: an endpoint that
        stops answering is parked, and its model's calls go to the others."""
        endpoint = place.endpoint
        if record.usage is not None and record.usage.total_tokens is not None:
            endpoint.tokens.correct(place.tokens, record.usage.total_tokens)
        pool = self.settings.current.pool
        parked = self.endpoints.record(
            endpoint,
            AttemptResult(
                ok=record.outcome == "ok",
                outage=is_outage(record.outcome, record.status),
                rate_limited=record.outcome == FailureKind.RATE_LIMIT,
                retry_after=record.retry_after,
            ),
            now=time.monotonic(),
            outages=OutagePolicy(
                failures=pool.outage_failures,
                probe_s=pool.outage_probe_s,
                probe_cap_s=pool.outage_probe_cap_s,
            ),
        )
        if parked:
            seconds = round(endpoint.parked_until - time.monotonic(), 1)
            bound.warning(
                "endpoint_parked", endpoint=endpoint.name, failures=endpoint.failures, seconds=seconds
            )
            self.bus.publish("endpoint_parked", endpoint=endpoint.name, seconds=seconds)

    def _adapt(self, model_id: str, record: AttemptRecord, bound: Any) -> None:
        state = self.limits.model(model_id)
        if record.outcome == "ok":
            before = state.limit.limit
            state.limit.on_success()
            if state.limit.limit != before:
                bound.info("limit_raised", concurrency=state.limit.limit)
                self.bus.publish("limit_raised", model=model_id, concurrency=state.limit.limit)
        elif record.outcome == FailureKind.RATE_LIMIT:
            if state.limit.on_rate_limited(record.retry_after, in_flight=state.in_flight):
                bound.warning("limit_cut", concurrency=state.limit.limit, retry_after=record.retry_after)
                self.bus.publish("limit_cut", model=model_id, concurrency=state.limit.limit)
        elif record.outcome == FailureKind.QUOTA:
            park_s = self.settings.current.pool.quota_park_s
            self.limits.park(park_s)
            bound.error("provider_parked", until_s=park_s, message=record.message)
            self.bus.publish("provider_parked", model=model_id, seconds=park_s)

    async def save_limits(self) -> None:
        """Persist learned per-model concurrency."""
        learned = self.limits.learned()
        if learned:
            with anyio.CancelScope(shield=True):
                await RestartMemory(self.store).save_limits(learned)

    # -- reading -------------------------------------------------------------------------------

    def troubles(self) -> tuple[Trouble, ...]:
        """What holds work back now: the provider down, the data folder or the run state unwritable,
        models with queued work and no endpoint."""
        found = (
            self.breaker.trouble(),
            self.runner.disk.trouble(),
            self.state_db.trouble(),
            self._unrouted(),
        )
        return tuple(t for t in found if t is not None)

    def _unrouted(self) -> Trouble | None:
        """Models whose read-ahead work waits because no endpoint serves them (a config without
        ``[llm]`` and without a route for them, or a reload routing them to an endpoint not started)."""
        jobs = self.current.jobs
        models = [model.model_id for model in jobs.models()] if jobs is not None else []
        stuck = [m for m in models if self.lanes.held(("llm", m)) and not self.endpoints.of(m)]
        if not stuck:
            self._unrouted_since = None
            return None
        self._unrouted_since = self._unrouted_since or utc_now()
        message = (
            f"no endpoint serves {', '.join(stuck)}: its queued work waits; route it with "
            "[models.<id>] endpoints = [...] (an endpoint the service started with) or add an [llm] "
            "section, then reload (a new endpoint needs a restart)"
        )
        return Trouble(what="no_endpoint", since=self._unrouted_since, message=message)

    def snapshot(self) -> PoolSnapshot:
        """Limits and counters now, frozen."""
        now = time.monotonic()
        limits, counters, pool_settings = self.limits, self.counters, self.settings.current.pool
        parked = limits.parked_for(now)
        jobs = self.current.jobs
        for model in jobs.models() if jobs is not None else ():
            limits.model(model.model_id)  # every model of the experiment shows, run or not
        models = {}
        for model_id, state in sorted(limits.models.items()):
            configured = pool_settings.model_limits(model_id)
            models[model_id] = ModelStatus(
                in_flight=state.in_flight,
                concurrency=state.limit.limit,
                max_concurrency=configured.concurrency,
                requests_per_minute=configured.requests_per_minute,
                requests_last_minute=state.window.in_window(),
                provider=state.provider,
                paused=model_id in limits.paused_models,
                cost_usd=round(counters.cost.get(model_id, 0.0), 6),
                unpriced_calls=counters.unpriced_calls.get(model_id, 0),
            )
        return PoolSnapshot(
            in_flight=len(limits.slots),
            claimed=len(self.in_flight),
            pool=PoolStatus(
                concurrency=pool_settings.concurrency,
                paused=limits.paused,
                paused_models=tuple(sorted(limits.paused_models)),
                parked={"all": ParkedStatus(resumes_in_s=round(parked, 1))} if parked else {},
                outcomes=dict(counters.outcomes),
                budgets=self.budgets.statuses(set(self.exhausted_approvals())),
                troubles=self.troubles(),
            ),
            models=models,
            endpoints=self._endpoint_statuses(),
            spent_usd=counters.spent_usd(),
            rates_per_minute=counters.rates(now),
            calls=dict(counters.calls),
            tokens=dict(counters.tokens),
            cost_usd=dict(counters.cost),
        )

    def _endpoint_statuses(self) -> dict[str, EndpointStatus]:
        jobs = self.current.jobs
        model_ids = [model.model_id for model in jobs.models()] if jobs is not None else []
        served: dict[str, list[str]] = {}
        for model_id in model_ids:
            for endpoint in self.endpoints.of(model_id):
                served.setdefault(endpoint.name, []).append(model_id)
        return {
            endpoint.name: EndpointStatus(
                in_flight=endpoint.in_flight,
                concurrency=endpoint.limit.limit if endpoint.limit is not None else 0,
                requests_per_minute=endpoint.settings.requests_per_minute,
                requests_last_minute=endpoint.requests.in_window(),
                tokens_per_minute=endpoint.settings.tokens_per_minute,
                tokens_last_minute=endpoint.tokens.in_window(),
                models=tuple(served.get(endpoint.name, ())),
            )
            for endpoint in self.endpoints.all()
        }


def _keys(jobs: Jobs) -> list[Key]:
    """Every lane the pool serves: each model's copy work and its online calls."""
    return [(mode, model.model_id) for model in jobs.models() for mode in ("copy", "llm")]


def _ready_model(ready: Ready) -> str | None:
    """The model whose slot a chosen generation took (None for copy work)."""
    return ready.generation.llm_model_id if ready.mode == "llm" else None


def _call_model(claim: Claim) -> str | None:
    """The model whose slot an LLM claim holds (None for copy work, which holds only a global slot)."""
    return claim.generation.llm_model_id if claim.mode == "llm" else None


def _attempt_row(record: AttemptRecord) -> AttemptRow:
    usage = record.usage
    return AttemptRow(
        attempt=record.attempt,
        started_at=record.started_at,
        finished_at=record.finished_at,
        outcome=record.outcome,
        status=record.status,
        message=record.message,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        total_tokens=usage.total_tokens if usage else None,
        reasoning_tokens=usage.reasoning_tokens if usage else None,
        cost=usage.cost if usage else None,
    )
