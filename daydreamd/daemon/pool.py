"""The worker pool: claim approved work from SQLite, run it through the runner within limits.

Limits, all enforced here and nowhere else (kept by :mod:`~daydreamd.daemon.limits`): a global
concurrency; per-model concurrency that adapts (halved once per episode of 429s, honouring
Retry-After; grown back slowly on success; never below 1); and requests per minute per model
and per provider, never exceeded in any sliding 60-second window, checked before every HTTP
attempt including retries. A quota failure parks all LLM work for ``pool.quota_park_s``
instead of hammering the provider; an outage opens the provider's circuit breaker
(:mod:`~daydreamd.daemon.breaker`), which holds every call and claim until a probe gets an
answer, and sends the generations whose calls failed meanwhile back to the queue. Approvals
with a spent budget (:mod:`~daydreamd.daemon.budgets`) start no more calls.

Only work whose parent is done is claimed, parents first. Every claim carries a fencing token
(see ``store``); completions are committed in batches (:mod:`~daydreamd.daemon.commits`). On
shutdown the pool stops claiming, lets in-flight calls finish within the grace period, and gives
back whatever is left. What it has done is counted by :mod:`~daydreamd.daemon.counters` and read
through :meth:`Pool.snapshot`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import anyio
import structlog

from daydreamd.core.config import Settings
from daydreamd.core.jobs import Jobs
from daydreamd.core.pricing import Price, configured_prices, price_for
from daydreamd.core.retry import FailureKind
from daydreamd.core.stages import Stage, State
from daydreamd.core.status import ModelStatus, ParkedStatus, PoolStatus, Trouble
from daydreamd.daemon.breaker import Breaker, BreakerState
from daydreamd.daemon.budgets import Budgets
from daydreamd.daemon.commits import CommitBatcher
from daydreamd.daemon.counters import Counters
from daydreamd.daemon.events import EventBus
from daydreamd.daemon.health import Health, is_db_fault
from daydreamd.daemon.limits import PoolLimits
from daydreamd.daemon.ratelimit import SlidingWindow, acquire_all
from daydreamd.daemon.runner import Outcome, Runner
from daydreamd.daemon.settings import LiveSettings
from daydreamd.llm.calls import AttemptRecord
from daydreamd.llm.types import LlmRequest, Provider, Reply
from daydreamd.storage.restart_memory import RestartMemory
from daydreamd.storage.store import AttemptRow, Claim, Completion, Store

log = structlog.get_logger("daydreamd.daemon.pool")
IDLE_POLL_S = 1.0
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
    spent_usd: float
    rates_per_minute: Mapping[str, float]
    calls: Mapping[tuple[str, str], int]
    """(model, attempt outcome) -> attempts since start."""
    tokens: Mapping[tuple[str, str], int]
    """(model, prompt|completion|reasoning) -> tokens since start."""
    cost_usd: Mapping[str, float]
    """Model -> dollars since start."""


class _GatedProvider:
    """Waits for every rate window that applies before each attempt, then asks the provider."""

    def __init__(
        self, inner: Provider, windows: list[SlidingWindow], limits: PoolLimits, breaker: Breaker
    ) -> None:
        self._inner = inner
        self._windows = windows
        self._limits = limits
        self._breaker = breaker

    async def complete(self, request: LlmRequest) -> Reply:
        await self._breaker.permit()
        await self._limits.wait_unparked()
        await acquire_all(self._windows)
        return await self._inner.complete(request)


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
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.current = current
        self.bus = bus or EventBus()
        self.limits = PoolLimits(settings, self._provider_of)
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
        self._wake = anyio.Event()
        self._dry: set[tuple[str, str | None]] = set()
        self._epoch = 0
        """Bumped when new work may have become ready: a claim that started earlier proves nothing."""
        self._idle = anyio.Event()
        self._stopping = False
        self.breaker.configure(settings.current.pool)
        settings.subscribe(self._settings_changed)

    # -- control -------------------------------------------------------------------------------

    def wake(self, *, new_work: bool = True) -> None:
        """Look for work now: a slot freed, or (``new_work``) something may have become ready."""
        if new_work:
            self._dry.clear()
            self._epoch += 1
        self._wake.set()

    def stop(self) -> None:
        """Stop claiming; ``run`` then drains in-flight work within the grace period."""
        self._stopping = True
        self.wake()

    def _settings_changed(self, settings: Settings) -> None:
        """Apply reloaded limits without touching in-flight calls (SIGHUP, or a live change)."""
        self.limits.apply(settings)
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
        """Budgeted approvals where one more call would pass the budget (spent + calls in flight)."""
        in_flight = Counter(c.approval_id for c in self.in_flight.values() if c.approval_id is not None)
        return self.budgets.exhausted(in_flight)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run work until ``stop``; then drain, release and save learned limits."""
        async with anyio.create_task_group() as workers:
            workers.start_soon(self.commits.run)
            while not self._stopping:
                try:
                    await self._reconcile()
                    await self._fill(workers)
                except Exception:  # a failed claim must not stop the pool; it tries again
                    log.exception("claim_failed")
                with anyio.move_on_after(IDLE_POLL_S):
                    await self._wake.wait()
                self._wake = anyio.Event()
            await self._drain(workers)
        await self.save_limits()

    async def _drain(self, workers: anyio.abc.TaskGroup) -> None:
        grace = self.settings.current.pool.grace_s
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

    async def _fill(self, workers: anyio.abc.TaskGroup) -> None:
        """Claim work for every free slot: per model within its limits, and copy work.

        A (mode, model) whose claim came back short is *dry* until something can make new work
        ready (an approval, a retry, a rebuild, a parent finishing), so an idle model costs no
        queries while the others run.
        """
        jobs = self.current.jobs
        if jobs is None or self.limits.paused or self.runner.disk.failing or self.state_db.failing:
            return
        exhausted = self.exhausted_approvals()
        llm = [] if not self.breaker.closed else [("llm", model.model_id) for model in jobs.models()]
        candidates = [("copy", None), *llm]
        for mode, model_id in candidates:
            free = self.limits.free()
            if free <= 0:
                return
            if (mode, model_id) in self._dry:
                continue
            if model_id is not None:
                free = self.limits.model_free(model_id, free, time.monotonic())
                if free <= 0:
                    continue
            epoch = self._epoch
            claims = await self.store.claim(
                mode=mode,
                llm_model_id=model_id,
                limit=free,
                lease_s=self.settings.current.pool.lease_s,
                exclude_approvals=exhausted,
            )
            if len(claims) < free and epoch == self._epoch and not exhausted:
                self._dry.add((mode, model_id))  # (a spent budget frees up as calls finish: not dry)
            for claim in claims:
                self._start(workers, claim)

    def _start(self, workers: anyio.abc.TaskGroup, claim: Claim) -> None:
        g = claim.generation
        self.in_flight[g.gen_id] = claim
        self.limits.take(g.gen_id, _call_model(claim))
        self.bus.publish("generation_started", gen_id=g.gen_id, stage=str(g.stage), model=g.llm_model_id)
        workers.start_soon(self._work, claim, name=g.gen_id)

    def _release_slot(self, claim: Claim) -> None:
        """Free the claim's concurrency slot (once): its call is over."""
        if self.limits.release(claim.generation.gen_id, _call_model(claim)):
            self.wake(new_work=False)

    def _provider_of(self, model_id: str) -> str:
        jobs = self.current.jobs
        model = jobs.model(model_id) if jobs is not None else None
        return model.provider if model is not None else ""

    def _price(self, model_id: str) -> Price | None:
        jobs = self.current.jobs
        return price_for(
            jobs.model(model_id) if jobs else None, configured_prices(self.settings.current.prices)
        )

    # -- one generation ------------------------------------------------------------------------

    async def _work(self, claim: Claim) -> None:
        g = claim.generation
        bound = log.bind(gen_id=g.gen_id, stage=str(g.stage), model=g.llm_model_id)
        attempts: list[AttemptRow] = []
        outages = self.breaker.opened_count
        try:
            outcome = await self._run(claim, attempts, bound)
            if self.breaker.caused(outcome.kind, outages) and self._requeues[g.gen_id] < self._max_requeues:
                await self._requeue(claim, attempts, outcome, bound)
                return
            completion = Completion(
                gen_id=g.gen_id,
                token=claim.token,
                llm_model_id=g.llm_model_id,
                ok=outcome.ok,
                error_kind=str(outcome.kind)
                if outcome.kind
                else (None if outcome.ok else str(FailureKind.INTERNAL)),
                error_message=outcome.message or None,
                attempts=tuple(attempts),
                score=outcome.score,
                parse_key=_parse_key(outcome.parse),
                parse_info=json.dumps(outcome.parse, separators=(",", ":")) if outcome.parse else None,
            )
            committed = await self._commit(completion, bound)
            if committed is None:
                return
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
            self.in_flight.pop(g.gen_id, None)
            if not self.in_flight:
                self._idle.set()
            self.wake(new_work=g.stage is not Stage.EVALUATION)

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
        bound.warning("generation_requeued", reason="provider_down", times=self._requeues[g.gen_id])
        self.bus.publish("generation_requeued", gen_id=g.gen_id, stage=str(g.stage), model=g.llm_model_id)

    async def _run(self, claim: Claim, attempts: list[AttemptRow], bound: Any) -> Outcome:
        g = claim.generation
        jobs = self.current.jobs
        job = jobs.job(g) if jobs is not None else None
        if job is None:
            message = "its template or model is no longer in the experiment"
            return Outcome(
                gen_id=g.gen_id, stage=g.stage, ok=False, kind=FailureKind.RENDER_ERROR, message=message
            )
        provider = None
        if job.model is not None:
            windows = self.limits.windows(g.llm_model_id)
            provider = _GatedProvider(self.runner.provider, windows, self.limits, self.breaker)

        def on_attempt(record: AttemptRecord) -> None:
            attempts.append(_attempt_row(record))
            last_try = record.outcome != "ok" and record.delay_s is None
            change = self.breaker.record(g.gen_id, record.outcome, record.status, last_try=last_try)
            if change is not None:
                self.breaker.announce(change, bound, self.bus)
                if change.state is BreakerState.CLOSED:
                    self.wake()
            cost = self.counters.attempt(g.llm_model_id, record, self._price(g.llm_model_id))
            if cost is not None:
                self.budgets.record(claim.approval_id, cost)
            self._adapt(g.llm_model_id, record, bound)
            if record.outcome == "ok":
                self._release_slot(claim)

        try:
            return await self.runner.run(
                job,
                on_attempt=on_attempt,
                provider=provider,
                fresh=claim.fresh,
                policy=self.settings.current.retry,
            )
        except Exception as exc:  # the per-task boundary: a bug here fails one generation, not the service
            bound.exception("generation_crashed")
            return Outcome(
                gen_id=g.gen_id, stage=g.stage, ok=False, kind=None, message=f"internal error: {exc!r}"
            )

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
        """What holds work back now: the provider down, the data folder or the run state unwritable."""
        found = (self.breaker.trouble(), self.runner.disk.trouble(), self.state_db.trouble())
        return tuple(t for t in found if t is not None)

    def snapshot(self) -> PoolSnapshot:
        """Limits and counters now, frozen."""
        now = time.monotonic()
        limits, counters, pool_settings = self.limits, self.counters, self.settings.current.pool
        parked = limits.parked_for(now)
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
            spent_usd=counters.spent_usd(),
            rates_per_minute=counters.rates(now),
            calls=dict(counters.calls),
            tokens=dict(counters.tokens),
            cost_usd=dict(counters.cost),
        )


def _parse_key(parse: dict[str, Any] | None) -> str | None:
    key = parse.get("key") if parse else None
    return key if isinstance(key, str) else None


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
