"""The running service: its parts composed, and its control surface (what the socket answers).

:class:`Service` owns the rebuilder, the pool, the re-parser and the event bus, keeps the counts
``status`` shows fresh, and implements :class:`~daydreamd.core.control.Control`. The process
around it (startup, signals, shutdown) is :mod:`daydreamd.daemon.lifecycle`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import structlog

from daydreamd import __version__
from daydreamd.core.config import Settings
from daydreamd.core.control import (
    ApprovalRequest,
    ControlError,
    LimitsRequest,
    PauseRequest,
    ReparseRequest,
    RetryRequest,
)
from daydreamd.core.estimates import plan_hash
from daydreamd.core.problems import Level, Problem
from daydreamd.core.stages import Stage
from daydreamd.core.status import ModelStatus, ServiceStatus, StageCounts
from daydreamd.core.timestamps import utc_now
from daydreamd.daemon.batches import Batcher
from daydreamd.daemon.details import generation_detail
from daydreamd.daemon.events import EventBus
from daydreamd.daemon.metrics import MetricsSnapshot, render_metrics
from daydreamd.daemon.planner import PlanContext, make_plan
from daydreamd.daemon.pool import Pool
from daydreamd.daemon.rebuild import Current, Rebuilder
from daydreamd.daemon.reparse import Reparser, reparsable
from daydreamd.daemon.runner import Runner
from daydreamd.daemon.settings import LiveSettings
from daydreamd.daemon.watcher import Trigger
from daydreamd.llm.types import Provider
from daydreamd.storage.batch_files import BatchFiles
from daydreamd.storage.gens import GensStore
from daydreamd.storage.layout import DataLayout
from daydreamd.storage.readers import spent_by_cohort
from daydreamd.storage.restart_memory import RestartMemory
from daydreamd.storage.store import Store

log = structlog.get_logger("daydreamd")


@dataclass(slots=True)
class Summary:
    """Counts from the run state, refreshed in the background so ``/v1/status`` never waits on SQLite."""

    counts: dict[str, StageCounts] = field(default_factory=dict)
    failures: dict[str, dict[str, int]] = field(default_factory=dict)
    recent_errors: dict[str, int] = field(default_factory=dict)
    parent_changed: dict[str, int] = field(default_factory=dict)


class Service:
    """The running service: owns the components and answers the control socket."""

    SUMMARY_INTERVAL_S = 0.2
    """How stale the counts in ``/v1/status`` may be (actions refresh them at once)."""
    SUMMARY_IDLE_S = 5.0
    """With no write to the run state, the counts are re-read this often (recent errors age out)."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        runner: Runner,
        *,
        providers: Mapping[str, Provider] | None = None,
    ) -> None:
        """``providers``: one per endpoint (see :mod:`~daydreamd.daemon.endpoints`); without them the
        runner's provider serves every model."""
        self.live = LiveSettings(settings)
        """The settings in force: a reload replaces them here, for every part at once."""
        self.store = store
        self.current = Current()
        self.runner = runner
        self.rebuilder = Rebuilder(
            self.live, store, self.current, renderer=runner.renderer, on_synced=self.refresh_summary
        )
        self.bus = EventBus()
        self.pool = Pool(
            settings=self.live,
            store=store,
            runner=runner,
            current=self.current,
            bus=self.bus,
            providers=providers,
        )
        store.on_membership_change = self.pool.wake  # armed work a sync retired or unqueued is called off
        self.batcher = Batcher(
            settings=self.live,
            store=store,
            runner=runner,
            current=self.current,
            providers=providers or {},
            files=BatchFiles(DataLayout(settings.paths.data_dir)),
            price_of=self.pool.price,
            may_submit=self.pool.may_submit,
            on_finished=self.pool.wake,
            counters=self.pool.counters,
            bus=self.bus,
        )
        self.reparser = Reparser(store, runner.store, self.bus)
        self.reparse_due = anyio.Event()
        """Set after a rebuild: the re-parser checks whether a template's parse key moved."""
        self.trigger = Trigger()
        self.stop_watching = anyio.Event()
        self.started = time.monotonic()
        self.started_at = utc_now()
        self.summary = Summary()
        self._rebuilding = anyio.Lock()
        """One rebuild at a time (the startup one runs beside the socket, the watch's after it)."""

    @property
    def settings(self) -> Settings:
        """The settings in force."""
        return self.live.current

    async def refresh_summary(self) -> None:
        """Re-read the counts (after an action, and every SUMMARY_INTERVAL_S in the background)."""
        counts = await self.store.counts()
        self.summary = Summary(
            counts={stage: StageCounts.from_counts(states) for stage, states in counts.items()},
            failures=await self.store.failures_by_kind(),
            recent_errors=await self.store.recent_errors(),
            parent_changed=await self.reparser.state.parent_changed(),
        )

    async def keep_summary_fresh(self) -> None:
        """The background refresher (failures are logged and retried, never fatal).

        Every SUMMARY_INTERVAL_S it re-reads the counts if anything was written to the run state since
        the last read (the connection's change counter, read without a query), else every
        SUMMARY_IDLE_S: an idle service costs next to nothing, whatever the cohort's size.
        """
        seen, read_at = -1, 0.0
        while True:
            changes = self.store.db.total_changes
            if changes != seen or time.monotonic() - read_at >= self.SUMMARY_IDLE_S:
                try:
                    await self.refresh_summary()
                    seen, read_at = changes, time.monotonic()
                except Exception:  # a failed read must not stop the service; the next one retries
                    log.exception("summary_refresh_failed")
            await anyio.sleep(self.SUMMARY_INTERVAL_S)

    async def rebuild(self, reason: str) -> None:
        """Apply the files if they changed, then let the pool look for work."""
        async with self._rebuilding:
            await self._rebuild(reason)

    async def _rebuild(self, reason: str) -> None:
        before = self.current.last.at if self.current.last else None
        await self.rebuilder.check(reason=reason)
        await self.refresh_summary()
        last = self.current.last
        if last is not None and last.at != before:
            self.bus.publish(
                "cohort_rebuilt" if last.ok else "experiment_invalid",
                cohort_id=self.current.cohort_id,
                reason=reason,
                errors=sum(1 for e in self.current.errors() if e.is_error),
                added=last.added,
                retired=last.retired,
            )
        self.reparse_due.set()
        self.pool.wake()

    async def keep_parses_current(self) -> None:
        """After each rebuild, re-parse what a changed parser, label or scale affects (never fatal)."""
        while True:
            await self.reparse_due.wait()
            self.reparse_due = anyio.Event()
            build = self.current.build
            if build is None:
                continue
            try:
                if await self.reparser.after_rebuild(build.experiment) is not None:
                    await self.refresh_summary()
                    self.pool.wake()  # a reply that parses now may have made children ready
            except Exception:  # files or the database failed; the next rebuild tries again
                log.exception("reparse_failed")

    # -- the Control protocol ------------------------------------------------------------------

    async def status(self, cohort: str | None = None) -> ServiceStatus:
        """What ``GET /v1/status`` answers: for the default cohort, or for ``cohort``."""
        scope = await self._scope_of(cohort)
        pool, summary = self.pool.snapshot(), self.summary
        if scope is not None:  # counted now (the summary is the default cohort's)
            counts = await self.store.counts(scope=scope)
            summary = Summary(
                counts={stage: StageCounts.from_counts(states) for stage, states in counts.items()},
                failures=await self.store.failures_by_kind(scope=scope),
                recent_errors=summary.recent_errors,
                parent_changed=summary.parent_changed,
            )
        return ServiceStatus(
            version=__version__,
            started_at=self.started_at,
            uptime_s=round(time.monotonic() - self.started, 1),
            cohort_id=scope or self.current.cohort_id,
            stages=summary.counts,
            in_flight=pool.in_flight,
            models=pool.models,
            endpoints=pool.endpoints,
            pool=replace(pool.pool, troubles=(*pool.pool.troubles, *self.batcher.troubles())),
            spent_usd=pool.spent_usd,
            rates_per_minute=pool.rates_per_minute,
            failures=summary.failures,
            recent_errors=summary.recent_errors,
            errors=self.current.errors(),
            last_rebuild=self.current.last,
            parent_changed=summary.parent_changed,
            rebuilds=self.current.rebuilds,
            batches=self.batcher.snapshot,
            cohort_progress=self.current.progress(),
        )

    async def generations(
        self, *, stage: str | None, state: str | None, limit: int, cohort: str | None = None
    ) -> list[dict[str, Any]]:
        """What ``GET /v1/generations`` answers."""
        scope = await self._scope_of(cohort)
        return await self.store.generations(stage=stage, state=state, limit=limit, scope=scope)

    async def cohorts(self) -> dict[str, Any]:
        """What ``GET /v1/cohorts`` answers: the default cohort, then each named one by name."""
        named = await self.store.named_cohorts()
        spent = await anyio.to_thread.run_sync(spent_by_cohort, self.settings.paths.state_db)
        entries: list[dict[str, Any]] = [
            {
                "cohort_id": self.current.cohort_id,
                "kind": "default",
                "stages": await self.store.counts(),
                "spent_usd": round(spent.get(None, 0.0), 6),
            }
        ]
        problems = self.current.spec_problems
        for name, record in sorted(named.items()):
            folder = f"cohorts/{name}/"
            entries.append(
                {
                    "cohort_id": name,
                    "kind": "spec",
                    "spec": f"{folder}spec/",
                    "stages": await self.store.counts(scope=name),
                    "spent_usd": round(spent.get(name, 0.0), 6),
                    "first_seen": record.first_seen,
                    "last_applied": record.last_applied,
                    "errors": [str(p) for p in problems if p.path.startswith(folder) and _is_error(p)],
                }
            )
        return {"cohorts": entries}

    async def _scope_of(self, cohort: str | None) -> str | None:
        """The run state's scope for a request's cohort: None for the default cohort (also when named by
        its id), else a named cohort's name; a 404 for a cohort the service does not hold."""
        if cohort is None:
            return None
        named = await self.store.named_cohorts()
        if cohort == self.current.cohort_id:
            if (
                cohort in named
            ):  # a folder named after the default cohort's id: acting on either could be wrong
                raise ControlError(
                    409,
                    "conflict",
                    f"{cohort!r} is both the default cohort's id and a spec folder's cohort; rename the "
                    f"folder cohorts/{cohort}/ (its spec is not built meanwhile)",
                )
            return None
        if cohort in named:
            return cohort
        raise ControlError(
            404, "not_found", f"no cohort {cohort!r}; daydreamctl cohort list shows the cohorts there are"
        )

    async def generation(self, gen_id: str) -> dict[str, Any] | None:
        """One generation with its attempts, files, parent chain, and the reply's tail if it failed."""
        return await generation_detail(self.store, GensStore(self.settings.paths.data_dir), gen_id)

    async def approve(self, request: ApprovalRequest) -> dict[str, Any]:
        """Queue matching pending generations of the current cohort."""
        self._check_known(request)
        scope = await self._scope_of(request.cohort)
        cohort_id = scope or self.current.cohort_id
        if request.plan is not None:
            await self._check_plan(request, scope)
        batch_keys = await self._batch_keys(
            state="pending",
            stage=request.stage,
            template_id=request.template_id,
            llm_model_id=request.llm_model_id,
            requested=request.batch,
            scope=scope,
        )
        batch_models = sorted({model for _, model in batch_keys})
        if batch_keys and request.budget_usd is not None:
            raise ControlError(
                400,
                "bad_request",
                "budget_usd: a budget cannot bound batch work (the provider bills a whole batch at once); "
                "approve with --online, or without a budget",
            )
        approval_id, matched = await self.store.approve(
            stage=request.stage,
            template_id=request.template_id,
            llm_model_id=request.llm_model_id,
            limit=request.limit,
            requested_by=request.requested_by,
            cohort_id=cohort_id,
            budget_usd=request.budget_usd,
            plan=request.plan,
            scope=scope,
            batch_keys=batch_keys,
        )
        log.info(
            "approved",
            approval_id=approval_id,
            matched=matched,
            budget_usd=request.budget_usd,
            batch_models=batch_models,
            **_scope(request),
        )
        self.bus.publish("approved", approval_id=approval_id, matched=matched, **_scope(request))
        if request.budget_usd is not None:
            await self.pool.refresh_budgets()
        self.pool.wake()
        self.batcher.wake()
        await self.refresh_summary()
        return {
            "approval_id": approval_id,
            "matched": matched,
            "cohort_id": cohort_id,
            "budget_usd": request.budget_usd,
            "batch_models": batch_models,
        }

    async def _batch_keys(
        self,
        *,
        state: str,
        stage: str | None,
        template_id: str | None,
        llm_model_id: str | None,
        requested: bool | None,
        scope: str | None,
        kind: str | None = None,
    ) -> set[tuple[str, str]]:
        """The (stage, model) of the matched work that goes into batches: as asked, else as the
        config says per stage and model. Asked for batches, every matched model must have an endpoint
        that takes them (else 400 naming them)."""
        settings = self.settings
        wanted_by_config = bool(settings.batch_models) or any(st.batch for _, st in settings.stages)
        if requested is False or (requested is None and not wanted_by_config):
            return set()  # online: nothing to look up (an approval of a million rows stays one query)
        keys = await self.store.llm_keys(
            state=state,
            stage=stage,
            template_id=template_id,
            llm_model_id=llm_model_id,
            kind=kind,
            scope=scope,
        )
        if requested:
            missing = sorted({model for _, model in keys if not settings.batch_endpoints_of(model)})
            if missing:
                raise ControlError(
                    400,
                    "bad_request",
                    f"batch: no endpoint serving {', '.join(missing)} takes batches; give the model an "
                    "endpoint with batch = true in the config ([models.<id>] endpoints), or use --online",
                )
            return keys
        return {(s, m) for s, m in keys if settings.runs_in_batch(Stage(s), m, None)}

    async def _check_plan(self, request: ApprovalRequest, scope: str | None) -> None:
        """Refuse an approval that would not cover exactly what the plan showed."""
        ids = await self.store.pending_ids(
            stage=request.stage,
            template_id=request.template_id,
            llm_model_id=request.llm_model_id,
            limit=request.limit,
            scope=scope,
        )
        now = plan_hash(scope or self.current.cohort_id, ids)
        if now != request.plan:
            raise ControlError(
                409,
                "conflict",
                f"plan {request.plan} no longer matches: the cohort or the pending work changed since it was "
                f"made (now {len(ids)} generations, plan {now}); run daydreamctl plan again and approve that",
            )

    async def plan(self, request: ApprovalRequest) -> dict[str, Any]:
        """What approving ``request`` would start, with estimates and the plan's hash."""
        self._check_known(request)
        scope = await self._scope_of(request.cohort)
        context = PlanContext(
            store=self.store,
            cohort_id=scope or self.current.cohort_id,
            scope=scope,
            jobs=self.current.jobs,
            settings=self.settings,
            renderer=self.runner.renderer,
        )
        return await make_plan(context, request)

    async def retry(self, request: RetryRequest) -> dict[str, Any]:
        """Send failed generations back to the queue."""
        scope = await self._scope_of(request.cohort)
        retried = await self.store.retry(
            stage=request.stage,
            kind=request.kind,
            template_id=request.template_id,
            llm_model_id=request.llm_model_id,
            fresh=request.fresh,
            requested_by=request.requested_by,
            cohort_id=scope or self.current.cohort_id,
            scope=scope,
            batch_keys=await self._batch_keys(
                state="failed",
                stage=request.stage,
                template_id=request.template_id,
                llm_model_id=request.llm_model_id,
                requested=request.batch,
                scope=scope,
                kind=request.kind,
            ),
        )
        log.info(
            "retried",
            retried=retried,
            kind=request.kind,
            stage=request.stage,
            model=request.llm_model_id,
            fresh=request.fresh,
        )
        self.bus.publish(
            "retried", retried=retried, kind=request.kind, stage=request.stage, model=request.llm_model_id
        )
        self.pool.wake()
        self.batcher.wake()
        await self.refresh_summary()
        return {"retried": retried, "cohort_id": scope or self.current.cohort_id}

    async def reparse(self, request: ReparseRequest) -> dict[str, Any]:
        """Parse the saved replies of matching finished generations again; no model is called."""
        build = self.current.build
        if build is None:
            raise ControlError(409, "conflict", "there is no cohort yet: fix the errors in data/1_raw first")
        templates = [
            t
            for t in reparsable(build.experiment)
            if (request.stage is None or str(t.stage) == request.stage)
            and (request.template_id is None or t.template_id == request.template_id)
        ]
        if request.template_id is not None and not templates:
            raise ControlError(404, "not_found", f"no {request.stage} LLM template {request.template_id!r}")
        summary = await self.reparser.run(
            templates, reason=f"requested by {request.requested_by or 'unknown'}"
        )
        await self.refresh_summary()
        self.pool.wake()  # a reply that parses now may have made children ready
        return summary.to_json()

    async def pause(self, request: PauseRequest) -> dict[str, Any]:
        """Stop claiming new work (all, or one model); in-flight calls go on."""
        return await self._set_paused(request, paused=True)

    async def resume(self, request: PauseRequest) -> dict[str, Any]:
        """Start claiming again (all, or one model)."""
        return await self._set_paused(request, paused=False)

    async def _set_paused(self, request: PauseRequest, *, paused: bool) -> dict[str, Any]:
        self._check_model(request.llm_model_id)
        self.pool.set_paused(request.llm_model_id, paused)
        limits = self.pool.limits
        await RestartMemory(self.store).save_pauses(
            limits.paused, limits.paused_models
        )  # a restart keeps them
        event = "paused" if paused else "resumed"
        log.info(event, model=request.llm_model_id or "*", requested_by=request.requested_by)
        self.bus.publish(event, model=request.llm_model_id)
        return self._pause_state()

    async def restore_pauses(self) -> None:
        """At startup: what was paused stays paused until ``resume``."""
        paused, models = await RestartMemory(self.store).pauses()
        for model_id in models:
            self.pool.set_paused(model_id, True)
        if paused:
            self.pool.set_paused(None, True)
        if paused or models:
            log.warning("still_paused", all=paused, models=models, resume_with="daydreamctl resume")

    async def save_rate_windows(self) -> None:
        """As the service stops: save the requests in its rate windows for the next start."""
        try:
            with anyio.CancelScope(shield=True):
                await RestartMemory(self.store).save_recent_requests(self.pool.limits.recent_requests())
        except Exception:  # the next start then counts the recorded attempts instead
            log.exception("rate_windows_not_saved")

    def _check_model(self, model_id: str | None) -> None:
        """A model id that is not in llm_models.csv is a typo; acting on it would do nothing."""
        jobs = self.current.jobs
        if model_id and jobs is not None and jobs.model(model_id) is None:
            raise ControlError(404, "not_found", f"no model {model_id!r} in llm_models.csv")

    def _pause_state(self) -> dict[str, Any]:
        pool = self.pool.snapshot().pool
        return {"paused": pool.paused, "paused_models": list(pool.paused_models)}

    async def limits(self, request: LimitsRequest | None) -> dict[str, Any]:
        """The live limits, changed first when ``request`` says so (until the next reload)."""
        if request is not None:
            if (
                request.llm_model_id
                and self.current.jobs
                and self.current.jobs.model(request.llm_model_id) is None
            ):
                raise ControlError(404, "not_found", f"no model {request.llm_model_id!r} in llm_models.csv")
            self.pool.set_limits(request.llm_model_id, request.concurrency, request.requests_per_minute)
            log.info(
                "limits_changed",
                model=request.llm_model_id or "*",
                concurrency=request.concurrency,
                requests_per_minute=request.requests_per_minute,
            )
            self.bus.publish(
                "limits_changed",
                model=request.llm_model_id,
                concurrency=request.concurrency,
                requests_per_minute=request.requests_per_minute,
            )
        snapshot = self.pool.snapshot()
        return {
            "concurrency": snapshot.pool.concurrency,
            "models": {model: info.to_json() for model, info in snapshot.models.items()},
        }

    def events(self) -> Any:
        """A subscription to the event stream."""
        return self.bus.subscribe()

    async def metrics(self) -> str:
        """Prometheus text."""
        pool, last = self.pool.snapshot(), self.current.last
        snapshot = MetricsSnapshot(
            generations={stage: counts.to_json() for stage, counts in self.summary.counts.items()},
            calls=pool.calls,
            tokens=pool.tokens,
            cost_usd=pool.cost_usd,
            limits={model: _limit_gauges(info) for model, info in pool.models.items()},
            endpoints={
                name: {
                    "in_flight": info.in_flight,
                    "concurrency": info.concurrency,
                    "requests_last_minute": info.requests_last_minute,
                    "tokens_last_minute": info.tokens_last_minute,
                }
                for name, info in pool.endpoints.items()
            },
            in_flight=pool.claimed,
            rebuilds=self.current.rebuilds,
            rebuild_seconds_sum=self.current.rebuild_seconds,
            last_rebuild_seconds=(last.duration_ms if last else 0) / 1000,
            raw_errors=sum(1 for e in self.current.errors() if e.is_error),
            uptime_s=time.monotonic() - self.started,
        )
        return render_metrics(snapshot)

    async def revoke(self, request: ApprovalRequest) -> dict[str, Any]:
        """Send queued, not yet started generations back to pending."""
        self._check_known(request)
        scope = await self._scope_of(request.cohort)
        async with self.pool.held():  # work armed ahead of its call is back in the queue first
            revoked = await self.store.revoke(
                stage=request.stage,
                template_id=request.template_id,
                llm_model_id=request.llm_model_id,
                requested_by=request.requested_by,
                cohort_id=scope or self.current.cohort_id,
                scope=scope,
            )
        log.info("revoked", revoked=revoked, **_scope(request))
        await self.refresh_summary()
        return {"revoked": revoked, "cohort_id": scope or self.current.cohort_id}

    def _check_known(self, request: ApprovalRequest) -> None:
        """A filter naming an unknown template or model is a mistake, not an empty match."""
        build = self.current.build
        if build is None:
            raise ControlError(409, "conflict", "there is no cohort yet: fix the errors in data/1_raw first")
        experiment = build.experiment
        if request.template_id and not any(
            t.template_id == request.template_id and str(t.stage) == request.stage
            for t in experiment.templates
        ):
            raise ControlError(404, "not_found", f"no {request.stage} template {request.template_id!r}")
        if request.llm_model_id and experiment.model(request.llm_model_id) is None:
            raise ControlError(404, "not_found", f"no model {request.llm_model_id!r} in llm_models.csv")


def _is_error(problem: Problem) -> bool:
    return problem.level is Level.ERROR


def _limit_gauges(info: ModelStatus) -> dict[str, float]:
    """A model's limits as ``/metrics`` gauges."""
    return {
        "concurrency": info.concurrency or 0,
        "max_concurrency": info.max_concurrency or 0,
        "requests_per_minute": info.requests_per_minute,
        "in_flight": info.in_flight,
    }


def _scope(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "stage": request.stage,
        "template_id": request.template_id,
        "model": request.llm_model_id,
        "limit": request.limit,
        "requested_by": request.requested_by,
        "cohort": request.cohort,
    }
