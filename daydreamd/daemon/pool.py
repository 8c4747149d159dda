"""The worker pool: claim approved work from SQLite, run it through the runner within limits.

Limits, all enforced here and nowhere else: a global concurrency; per-model concurrency that
adapts (halved once per episode of 429s, honouring Retry-After; grown back slowly on success;
never below 1); and requests per minute per model and per provider, never exceeded in any
sliding 60-second window, checked before every HTTP attempt including retries. A quota
failure parks all LLM work for ``pool.quota_park_s`` instead of hammering the provider.

Only work whose parent is done is claimed, parents first. Every claim carries a fencing token
(see ``store``). On shutdown the pool stops claiming, lets in-flight calls finish within the
grace period, and gives back whatever is left.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, replace
from typing import Any

import anyio
import structlog

from daydreamd.core.config import Limits, Settings
from daydreamd.core.pricing import call_cost, configured_prices, price_for
from daydreamd.core.retry import FailureKind
from daydreamd.core.stages import Stage
from daydreamd.daemon.events import EventBus
from daydreamd.daemon.ratelimit import AdaptiveLimit, SlidingWindow, acquire_all
from daydreamd.daemon.rebuild import Current
from daydreamd.daemon.runner import Outcome, Runner
from daydreamd.llm.client import AttemptRecord, LlmRequest, Provider, Reply
from daydreamd.storage.store import AttemptRow, Claim, Completion, Store

log = structlog.get_logger("daydreamd.daemon.pool")
IDLE_POLL_S = 1.0
RPM_WINDOW_S = 61.0
"""Our requests-per-minute window is a second longer than the provider's: requests reach the
server a little after we count them, and a server that counts rejected requests too turns one
early request into a run of 429s. The margin costs under 2% of the budget."""


class _GatedProvider:
    """Waits for every rate window that applies before each attempt, then asks the provider."""

    def __init__(self, inner: Provider, windows: list[SlidingWindow], pool: Pool) -> None:
        self._inner = inner
        self._windows = windows
        self._pool = pool

    async def complete(self, request: LlmRequest) -> Reply:
        await self._pool.wait_unparked()
        await acquire_all(self._windows)
        return await self._inner.complete(request)


@dataclass(slots=True)
class _PendingCommit:
    """A completion waiting for the next batched commit."""

    completion: Completion
    done: anyio.Event
    committed: bool = False
    error: BaseException | None = None


@dataclass(slots=True)
class ModelState:
    """Live limits and counters of one model."""

    limit: AdaptiveLimit
    window: SlidingWindow
    provider: str
    in_flight: int = 0


class Pool:
    """Runs claimed generations; see the module docstring for the rules it keeps."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        runner: Runner,
        current: Current,
        bus: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.current = current
        self.bus = bus or EventBus()
        self.models: dict[str, ModelState] = {}
        self.providers: dict[str, SlidingWindow] = {}
        self.in_flight: dict[str, Claim] = {}
        """Every claimed generation not yet committed."""
        self.slots: set[str] = set()
        """Generations holding a concurrency slot: from their claim until their reply arrives.

        Saving and parsing a reply happen outside the slot, so disk latency never idles the
        provider's concurrency.
        """
        self.parked_until: float | None = None
        self.paused = False
        self.paused_models: set[str] = set()
        self.outcomes: Counter[str] = Counter()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.tokens: Counter[tuple[str, str]] = Counter()
        self.cost: defaultdict[str, float] = defaultdict(float)
        self.unpriced_calls: Counter[str] = Counter()
        self.budgets: dict[int, float] = {}
        self.spend: defaultdict[int, float] = defaultdict(float)
        self.spend_calls: Counter[int] = Counter()
        self.finished: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=100_000))
        self._pending: list[_PendingCommit] = []
        self._flush = anyio.Event()
        self._wake = anyio.Event()
        self._dry: set[tuple[str, str | None]] = set()
        self._epoch = 0
        """Bumped when new work may have become ready: a claim that started earlier proves nothing."""
        self._idle = anyio.Event()
        self._stopping = False
        self._learned: dict[str, float] = {}

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

    def update_settings(self, settings: Settings) -> None:
        """Apply reloaded limits without touching in-flight calls (SIGHUP)."""
        self.settings = settings
        for model_id, state in self.models.items():
            limits = settings.pool.model_limits(model_id)
            state.limit.set_maximum(limits.concurrency)
            state.window.set_limit(limits.requests_per_minute)
        for provider, window in self.providers.items():
            window.set_limit(settings.pool.provider_rpm(provider))
        self.wake()

    def set_paused(self, model_id: str | None, paused: bool) -> None:
        """Pause or resume claiming for every model (None) or one; in-flight calls go on."""
        if model_id is None:
            self.paused = paused
            if not paused:
                self.paused_models.clear()
        elif paused:
            self.paused_models.add(model_id)
        else:
            self.paused_models.discard(model_id)
        self.wake()

    def set_limits(self, model_id: str | None, concurrency: int | None, rpm: int | None) -> None:
        """Change limits live (they last until the next reload of the config)."""
        pool = self.settings.pool
        if model_id is None:
            if concurrency is not None:
                pool = replace(pool, concurrency=concurrency)
        else:
            own = dict(pool.models).get(model_id, Limits())
            own = replace(
                own,
                concurrency=concurrency if concurrency is not None else own.concurrency,
                requests_per_minute=rpm if rpm is not None else own.requests_per_minute,
            )
            pool = replace(pool, models=tuple(sorted({**dict(pool.models), model_id: own}.items())))
        self.update_settings(replace(self.settings, pool=pool))

    async def restore_limits(self) -> None:
        """Resume learned per-model concurrency from the run state, and the spend of budgets."""
        self._learned = await self.store.load_limits()
        await self.refresh_budgets()

    async def refresh_budgets(self) -> None:
        """Reload budgeted approvals and what they have spent so far (after an approval)."""
        self.budgets = await self.store.budgets()
        prices = configured_prices(self.settings.prices)
        self.spend.clear()
        self.spend_calls.clear()
        for row in await self.store.usage_by_approval(list(self.budgets)):
            jobs = self.current.jobs
            price = price_for(jobs.model(row["model"]) if jobs else None, prices)
            priced = price.cost(row["unpriced_prompt"], row["unpriced_completion"]) if price else 0.0
            self.spend[row["approval_id"]] += (row["cost"] or 0.0) + priced
            self.spend_calls[row["approval_id"]] += row["calls"]

    def exhausted_approvals(self) -> list[int]:
        """Budgeted approvals where one more call would pass the budget (spent + calls in flight)."""
        in_flight = Counter(c.approval_id for c in self.in_flight.values() if c.approval_id is not None)
        exhausted = []
        for approval_id, budget in self.budgets.items():
            spent, calls = self.spend[approval_id], self.spend_calls[approval_id]
            per_call = spent / calls if calls else 0.0
            if spent + (in_flight[approval_id] + 1) * per_call > budget or spent >= budget:
                exhausted.append(approval_id)
        return exhausted

    async def wait_unparked(self) -> None:
        """Hold a call while the provider is parked after a quota failure."""
        if self.parked_until is not None and (delay := self.parked_until - time.monotonic()) > 0:
            await anyio.sleep(delay)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run work until ``stop``; then drain, release and save learned limits."""
        async with anyio.create_task_group() as workers:
            workers.start_soon(self._flusher)
            while not self._stopping:
                try:
                    await self._fill(workers)
                except Exception:  # a failed claim must not stop the pool; it tries again
                    log.exception("claim_failed")
                with anyio.move_on_after(IDLE_POLL_S):
                    await self._wake.wait()
                self._wake = anyio.Event()
            await self._drain(workers)
        await self.save_limits()

    async def _drain(self, workers: anyio.abc.TaskGroup) -> None:
        grace = self.settings.pool.grace_s
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
        log.info("pool_stopped", released=released, outcomes=dict(self.outcomes))

    async def _fill(self, workers: anyio.abc.TaskGroup) -> None:
        """Claim work for every free slot: per model within its limits, and copy work.

        A (mode, model) whose claim came back short is *dry* until something can make new work
        ready (an approval, a retry, a rebuild, a parent finishing), so an idle model costs no
        queries while the others run.
        """
        jobs = self.current.jobs
        if jobs is None or self.paused:
            return
        exhausted = self.exhausted_approvals()
        candidates = [("copy", None), *(("llm", model.model_id) for model in jobs.models())]
        for mode, model_id in candidates:
            free = self.settings.pool.concurrency - len(self.slots)
            if free <= 0:
                return
            if (mode, model_id) in self._dry:
                continue
            if model_id is not None:
                if self.parked_until is not None and time.monotonic() < self.parked_until:
                    continue
                state = self._model(model_id)
                if model_id in self.paused_models or state.limit.resume_at > time.monotonic():
                    continue
                free = min(free, state.limit.limit - state.in_flight)
                if free <= 0:
                    continue
            epoch = self._epoch
            claims = await self.store.claim(
                mode=mode,
                llm_model_id=model_id,
                limit=free,
                lease_s=self.settings.pool.lease_s,
                exclude_approvals=exhausted,
            )
            if len(claims) < free and epoch == self._epoch and not exhausted:
                self._dry.add((mode, model_id))  # (a spent budget frees up as calls finish: not dry)
            for claim in claims:
                self._start(workers, claim)

    def _start(self, workers: anyio.abc.TaskGroup, claim: Claim) -> None:
        g = claim.generation
        self.in_flight[g.gen_id] = claim
        self.slots.add(g.gen_id)
        self.bus.publish("generation_started", gen_id=g.gen_id, stage=str(g.stage), model=g.llm_model_id)
        if claim.mode == "llm":
            self._model(g.llm_model_id).in_flight += 1
        workers.start_soon(self._work, claim, name=g.gen_id)

    def _release_slot(self, claim: Claim) -> None:
        """Free the claim's concurrency slot (once): its call is over."""
        g = claim.generation
        if g.gen_id not in self.slots:
            return
        self.slots.discard(g.gen_id)
        if claim.mode == "llm":
            self._model(g.llm_model_id).in_flight -= 1
        self.wake(new_work=False)

    def _model(self, model_id: str) -> ModelState:
        state = self.models.get(model_id)
        if state is None:
            limits = self.settings.pool.model_limits(model_id)
            jobs = self.current.jobs
            model = jobs.model(model_id) if jobs is not None else None
            provider = model.provider if model is not None else ""
            try:
                limit = AdaptiveLimit(
                    self._learned.get(model_id, limits.concurrency), maximum=limits.concurrency
                )
            except ValueError:  # a corrupt learned value: start again from the configured level
                limit = AdaptiveLimit(limits.concurrency, maximum=limits.concurrency)
            state = ModelState(
                limit=limit, window=SlidingWindow(limits.requests_per_minute, RPM_WINDOW_S), provider=provider
            )
            self.models[model_id] = state
        return state

    def _provider_window(self, provider: str) -> SlidingWindow:
        window = self.providers.get(provider)
        if window is None:
            window = self.providers[provider] = SlidingWindow(
                self.settings.pool.provider_rpm(provider), RPM_WINDOW_S
            )
        return window

    # -- one generation ------------------------------------------------------------------------

    async def _work(self, claim: Claim) -> None:
        g = claim.generation
        bound = log.bind(gen_id=g.gen_id, stage=str(g.stage), model=g.llm_model_id)
        attempts: list[AttemptRow] = []
        try:
            outcome = await self._run(claim, attempts, bound)
            completion = Completion(
                gen_id=g.gen_id,
                token=claim.token,
                llm_model_id=g.llm_model_id,
                ok=outcome.ok,
                error_kind=str(outcome.kind) if outcome.kind else (None if outcome.ok else "internal"),
                error_message=outcome.message or None,
                attempts=tuple(attempts),
                score=outcome.score,
            )
            try:
                committed = await self._commit(completion)
            except Exception:  # the files are saved; a restart recovers the row and re-parses them
                bound.exception("commit_failed")
                return
            self.outcomes["done" if outcome.ok else str(outcome.kind)] += 1
            self.finished[str(g.stage)].append(time.monotonic())
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

    async def _commit(self, completion: Completion) -> bool:
        """Queue ``completion`` for the next batched transaction and wait for it."""
        pending = _PendingCommit(completion, anyio.Event())
        self._pending.append(pending)
        self._flush.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.committed

    async def _flusher(self) -> None:
        """Commit queued completions together: one transaction for all that finished meanwhile."""
        while True:
            await self._flush.wait()
            self._flush = anyio.Event()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            with anyio.CancelScope(shield=True):
                try:
                    results = await self.store.complete_each([p.completion for p in batch])
                except Exception as exc:  # every waiter sees the failure; the flusher goes on
                    results = []
                    for pending in batch:
                        pending.error = exc
            for pending, committed in zip(batch, results, strict=False):
                pending.committed = committed
            for pending in batch:
                pending.done.set()

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
            state = self._model(g.llm_model_id)
            windows = [state.window, self._provider_window(state.provider)]
            provider = _GatedProvider(self.runner.provider, windows, self)

        def on_attempt(record: AttemptRecord) -> None:
            attempts.append(_attempt_row(record))
            self._count(g.llm_model_id, claim.approval_id, record)
            self._adapt(g.llm_model_id, record, bound)
            if record.outcome == "ok":
                self._release_slot(claim)

        try:
            return await self.runner.run(job, on_attempt=on_attempt, provider=provider, fresh=claim.fresh)
        except Exception as exc:  # the per-task boundary: a bug here fails one generation, not the service
            bound.exception("generation_crashed")
            return Outcome(
                gen_id=g.gen_id, stage=g.stage, ok=False, kind=None, message=f"internal error: {exc!r}"
            )

    def _count(self, model_id: str, approval_id: int | None, record: AttemptRecord) -> None:
        """Calls, tokens and dollars, for /metrics, status and budgets."""
        self.calls[(model_id, record.outcome)] += 1
        usage = record.usage
        if usage is None:
            return
        for kind, n in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            self.tokens[(model_id, kind)] += n or 0
        jobs = self.current.jobs
        price = price_for(jobs.model(model_id) if jobs else None, configured_prices(self.settings.prices))
        cost = call_cost(usage.cost, usage.prompt_tokens, usage.completion_tokens, price)
        if cost is None:
            self.unpriced_calls[model_id] += 1
            cost = 0.0
        self.cost[model_id] += cost
        if approval_id is not None and approval_id in self.budgets:
            self.spend[approval_id] += cost
            self.spend_calls[approval_id] += 1

    def _adapt(self, model_id: str, record: AttemptRecord, bound: Any) -> None:
        state = self._model(model_id)
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
            self.parked_until = time.monotonic() + self.settings.pool.quota_park_s
            bound.error("provider_parked", until_s=self.settings.pool.quota_park_s, message=record.message)
            self.bus.publish("provider_parked", model=model_id, seconds=self.settings.pool.quota_park_s)

    async def save_limits(self) -> None:
        """Persist learned per-model concurrency."""
        learned = {model_id: state.limit.value for model_id, state in self.models.items()}
        if learned:
            with anyio.CancelScope(shield=True):
                await self.store.save_limits(learned)

    def rates(self, now: float, window_s: float = 300.0) -> dict[str, float]:
        """Generations finished per minute, per stage, over the last ``window_s`` (or since start)."""
        rates = {}
        for stage, times in self.finished.items():
            while times and times[0] < now - window_s:
                times.popleft()
            if times:
                span = max(now - times[0], 60.0)
                rates[stage] = round(len(times) * 60.0 / span, 1)
        return rates

    def snapshot(self) -> dict[str, Any]:
        """Limits and counters for ``/v1/status``."""
        now = time.monotonic()
        exhausted = set(self.exhausted_approvals())
        parked = self.parked_until is not None and self.parked_until > now
        return {
            "in_flight": len(self.slots),
            "finishing": len(self.in_flight) - len(self.slots),
            "concurrency": self.settings.pool.concurrency,
            "paused": self.paused,
            "parked": {"all": {"resumes_in_s": round(self.parked_until - now, 1)}}
            if parked and self.parked_until
            else {},
            "models": {
                model_id: {
                    "in_flight": state.in_flight,
                    "concurrency": state.limit.limit,
                    "max_concurrency": self.settings.pool.model_limits(model_id).concurrency,
                    "requests_per_minute": self.settings.pool.model_limits(model_id).requests_per_minute,
                    "requests_last_minute": state.window.in_window(),
                    "provider": state.provider,
                    "paused": model_id in self.paused_models,
                    "cost_usd": round(self.cost.get(model_id, 0.0), 6),
                    "unpriced_calls": self.unpriced_calls.get(model_id, 0),
                }
                for model_id, state in sorted(self.models.items())
            },
            "outcomes": dict(self.outcomes),
            "paused_models": sorted(self.paused_models),
            "rates_per_minute": self.rates(now),
            "spent_usd": round(sum(self.cost.values()), 6),
            "budgets": {
                str(approval_id): {
                    "budget_usd": budget,
                    "spent_usd": round(self.spend[approval_id], 6),
                    "exhausted": approval_id in exhausted,
                }
                for approval_id, budget in sorted(self.budgets.items())
            },
        }


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
