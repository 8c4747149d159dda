"""Keeping the cohort current: fingerprint the raw files, rebuild, write, sync, record.

At-least-once: the fingerprint being applied is recorded as *pending* before the work and as
*applied* after it, so a rebuild interrupted by a crash is redone at the next start, and the
same contents are never applied twice. Invalid input is applied too, in the sense that its
problems become the service's current errors; the last good cohort stays in force until the
files are fixed. Loading and building run in a worker thread, off the event loop.

The files of every good build are kept in the run state (:mod:`daydreamd.storage.last_good`), so
"the last good cohort stays in force" holds across restarts too: a start (or a reload, which
drops the cohort to rebuild it under new settings) that finds errors in ``1_raw`` builds the
cohort from that copy, and the pool, approvals and status go on while the errors are shown.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import anyio.to_thread
import structlog

from daydreamd.core.build import Build, build_from_raw
from daydreamd.core.cohort import Cohort, Generation
from daydreamd.core.collector import frozen_when_built
from daydreamd.core.config import Settings
from daydreamd.core.jobs import Jobs
from daydreamd.core.problems import Level, Problem
from daydreamd.core.snapshot import RawFiles, read_raw_dir
from daydreamd.core.status import CohortProgress, ProblemStatus, RebuildStatus
from daydreamd.core.templates import PromptRenderer
from daydreamd.core.timestamps import utc_now
from daydreamd.daemon.named import NamedCohorts
from daydreamd.daemon.settings import LiveSettings
from daydreamd.storage.cohort_files import write_cohort
from daydreamd.storage.last_good import LastGoodRaw
from daydreamd.storage.store import MembershipDiff, Store, SyncResult, membership_diff

PENDING = "fingerprint.pending"
APPLIED = "fingerprint.applied"
SYNCED_CONTENT = "cohort.synced_content"
"""The content id (files and settings) of the default cohort the run state was last synced to: the
same files under new stage settings give new gen_ids, and must be synced although the files are
the same."""
log = structlog.get_logger("daydreamd.daemon.rebuild")


@dataclass(slots=True)
class Building:
    """A rebuild in progress, as ``status`` shows it (:class:`CohortProgress`)."""

    reason: str
    phase: str = "reading"
    started: float = field(default_factory=time.monotonic)
    started_at: str = field(default_factory=utc_now)
    generations: int = 0
    done: int = 0
    total: int = 0

    def progress(self) -> CohortProgress:
        """Where it is now."""
        return CohortProgress(
            phase=self.phase,
            reason=self.reason,
            started_at=self.started_at,
            elapsed_s=round(time.monotonic() - self.started, 1),
            generations=self.generations,
            done=self.done,
            total=self.total,
        )

    def synced(self, done: int, total: int) -> None:
        """A sync chunk was committed."""
        self.done, self.total = done, total


@dataclass(slots=True)
class Current:
    """What the service works from: the last good build and the problems of the latest files."""

    build: Build | None = None
    jobs: Jobs | None = None
    problems: tuple[Problem, ...] = ()
    spec_problems: tuple[Problem, ...] = ()
    """Problems of the named cohorts' spec folders (see :mod:`daydreamd.daemon.named`)."""
    last: RebuildStatus | None = None
    """The last check that applied something (None before the first)."""
    rebuilds: int = 0
    rebuild_seconds: float = 0.0
    building: Building | None = None
    """The rebuild in progress (None when none is)."""
    synced: Cohort | None = None
    """The cohort whose membership this process synced last, while the run state still matches it
    (None before the first sync, and while one is under way): rebuilds diff against it in memory."""

    def progress(self) -> CohortProgress | None:
        """The rebuild in progress, for ``status``."""
        return self.building.progress() if self.building is not None else None

    @property
    def cohort_id(self) -> str | None:
        """The current cohort's id, once one was built."""
        return self.build.cohort.cohort_id if self.build and self.build.cohort else None

    def errors(self) -> tuple[ProblemStatus, ...]:
        """Problems of the latest files, errors first (what ``/v1/status`` shows), at most
        :data:`MAX_PROBLEMS_SHOWN` and a last line counting the rest: a ``1_raw`` pointed at
        ``/`` has tens of thousands, and every status answer would carry them all."""
        ordered = sorted((*self.problems, *self.spec_problems), key=lambda p: p.level is not Level.ERROR)
        shown = [ProblemStatus.from_problem(p) for p in ordered[:MAX_PROBLEMS_SHOWN]]
        hidden = ordered[MAX_PROBLEMS_SHOWN:]
        if hidden:
            errors = sum(p.level is Level.ERROR for p in hidden)
            message = (
                f"and {len(hidden)} more problems ({errors} errors) not shown here; "
                "daydreamctl validate lists them all"
            )
            shown.append(ProblemStatus(level="error" if errors else "warning", message=message))
        return tuple(shown)


MAX_PROBLEMS_SHOWN = 100
"""Problems ``status`` lists one by one (``validate`` lists every one)."""


class Rebuilder:
    """Applies the experiment directory's contents to the run state."""

    def __init__(
        self,
        settings: LiveSettings,
        store: Store,
        current: Current,
        *,
        renderer: PromptRenderer | None = None,
        on_synced: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.renderer = renderer
        """Renders each template once per build on sample inputs (see ``core.trials``)."""
        self.store = store
        self.current = current
        self.last_good = LastGoodRaw(store)
        self.named = NamedCohorts(store)
        self.on_synced = on_synced
        """Called after a sync, before its cohort is put in force (the service re-reads its counts)."""

    async def check(self, *, reason: str) -> bool:
        """Rebuild if the files changed since they were last applied; True if a cohort was applied."""
        if self.current.build is None:  # nothing in force (a start, a reload): show it from the start
            self.current.building = Building(reason)
        try:
            return await self._check(reason=reason)
        finally:
            self.current.building = None

    def _phase(self, phase: str) -> None:
        if self.current.building is not None:
            self.current.building.phase = phase

    async def _check(self, *, reason: str) -> bool:
        t0 = time.monotonic()
        settings = self.settings.current
        raw = await anyio.to_thread.run_sync(read_raw_dir, settings.raw_dir)
        fingerprint = raw.fingerprint
        applied = await self.store.get_fact(APPLIED)
        if fingerprint == applied and self.current.build is not None:
            await self._named(settings, self.current.build)  # a spec folder may have changed
            return False
        if self.current.building is None:
            self.current.building = Building(reason)
        if fingerprint != applied:
            await self.store.set_fact(PENDING, fingerprint)
        self._phase("building")
        build = await anyio.to_thread.run_sync(_build, raw, settings, self.renderer)
        self.current.problems = build.problems
        if build.cohort is None:
            await self.store.set_fact(APPLIED, fingerprint)
            if self.current.build is None:  # nothing in force (a start, a reload): the last good one
                await self._serve_last_good(settings, reason)
                if self.current.build is not None:
                    await self._named(settings, self.current.build)
            self._record(reason, fingerprint, t0, ok=False)
            errors = [str(p) for p in build.problems if p.level is Level.ERROR]
            log.warning("experiment_invalid", errors=len(errors), first=errors[:5], reason=reason)
            return False
        content = str(build.cohort.manifest.get("content_id", ""))
        changed = fingerprint != applied or await self.store.get_fact(SYNCED_CONTENT) != content
        result = await self._apply(settings, build, fingerprint, changed=changed)
        await self.last_good.save(raw)
        self.current.build = build
        self.current.jobs = build.jobs
        self.current.rebuilds += 1
        self._record(reason, fingerprint, t0, ok=True, sync=result)
        await self._named(settings, build)
        log.info(
            "cohort_rebuilt",
            cohort_id=build.cohort.cohort_id,
            generations=len(build.cohort.generations),
            added=result.added if result else 0,
            retired=result.retired if result else 0,
            revived=result.revived if result else 0,
            warnings=len(build.problems),
            duration_ms=round((time.monotonic() - t0) * 1000, 1),
            reason=reason,
        )
        return True

    async def _apply(
        self, settings: Settings, build: Build, fingerprint: str, *, changed: bool
    ) -> SyncResult | None:
        """Write the cohort files and sync membership (skipped when these contents were applied)."""
        if not changed:
            return None
        result = await self._sync(settings, build, fingerprint)
        await self.store.set_fact(APPLIED, fingerprint)
        return result

    async def _sync(self, settings: Settings, build: Build, fingerprint: str) -> SyncResult:
        """Write the cohort's files and make the run state's membership match it.

        Only the difference is written, in chunks (:meth:`Store.sync_membership`): against the cohort
        this process synced last when there is one (in memory), else against the run state. The
        files are written first, not beside the sync: on two cores the two only slowed each other
        (a 1.3M-generation rebuild took as long either way), and the writer's share of the
        interpreter lock held ``status`` answers up to 0.7 s. A failure (a full disk) leaves the
        cohort not applied, to be done again.
        """
        cohort = build.cohort
        assert cohort is not None
        building = self.current.building
        if building is not None:
            building.generations = len(cohort.generations)
        self._phase("writing")
        await anyio.to_thread.run_sync(write_cohort, settings.paths.data_dir, cohort)
        result = await self._sync_membership(build, fingerprint, building)
        await self.store.set_fact("cohort.current", cohort.cohort_id)
        await self.store.set_fact(SYNCED_CONTENT, str(cohort.manifest.get("content_id", "")))
        self.current.synced = cohort
        if self.on_synced is not None:  # status shows the new cohort's id with its counts, not older ones
            await self.on_synced()
        return result

    async def _sync_membership(self, build: Build, fingerprint: str, building: Building | None) -> SyncResult:
        """The membership diff against the cohort synced last (or the run state), written."""
        cohort = build.cohort
        assert cohort is not None
        self._phase("comparing")
        previous, self.current.synced = self.current.synced, None  # unknown until this sync completes
        live = previous.generations if previous is not None else await self.store.live_gen_ids()
        diff = await anyio.to_thread.run_sync(_diff, cohort, live)
        self._phase("syncing")
        if building is not None:
            building.synced(0, len(diff.add) + len(diff.retire))
        modes = {(t.stage, t.template_id): str(t.generator) for t in build.experiment.templates}
        return await self.store.sync_membership(
            cohort, modes, fingerprint, diff=diff, progress=building.synced if building else None
        )

    async def _named(self, settings: Settings, build: Build) -> None:
        """The named cohorts, in step with their specs under ``build`` (the build in force)."""
        self._phase("cohorts")
        await self.named.apply(build, settings)
        self.current.spec_problems = self.named.problems

    async def _serve_last_good(self, settings: Settings, reason: str) -> None:
        """Put the cohort of the last good files in force (their saved copy), when there is one.

        It is synced like any build: under unchanged settings that changes nothing; under new
        ones (gen_ids include stage settings) the run state follows, as it would for valid files.
        The applied fingerprint stays the current (broken) files', so fixing them rebuilds.
        """
        raw = await self.last_good.load(label=settings.raw_dir.name)
        if raw is None:
            return
        self._phase("building")
        build = await anyio.to_thread.run_sync(_build, raw, settings, self.renderer)
        if build.cohort is None:  # e.g. checks added since it was saved: there is nothing good to serve
            errors = [str(p) for p in build.problems if p.level is Level.ERROR]
            log.warning("last_good_files_invalid", errors=len(errors), first=errors[:5])
            return
        result = await self._sync(settings, build, raw.fingerprint)
        self.current.build = build
        self.current.jobs = build.jobs
        log.warning(
            "serving_last_good_cohort",
            cohort_id=build.cohort.cohort_id,
            fingerprint=raw.fingerprint,
            added=result.added,
            retired=result.retired,
            revived=result.revived,
            reason=reason,
        )

    def _record(
        self, reason: str, fingerprint: str, t0: float, *, ok: bool, sync: SyncResult | None = None
    ) -> None:
        self.current.last = RebuildStatus(
            at=utc_now(),
            reason=reason,
            fingerprint=fingerprint,
            ok=ok,
            duration_ms=round((time.monotonic() - t0) * 1000, 1),
            added=sync.added if sync else 0,
            retired=sync.retired if sync else 0,
            revived=sync.revived if sync else 0,
        )


def _diff(cohort: Cohort, live: Sequence[Generation] | Sequence[str]) -> MembershipDiff:
    """The membership changes from ``live`` (generations or gen_ids) to ``cohort`` (in a worker thread)."""
    ids = [g if isinstance(g, str) else g.gen_id for g in live]
    return membership_diff(cohort.generations, ids)


def _build(raw: RawFiles, settings: Settings, renderer: PromptRenderer | None) -> Build:
    """:func:`build_from_raw` with the cyclic collector paused and the result frozen (in a worker
    thread): a million generations build a fifth faster, and no collection walks them afterwards
    (each such pass would hold the event loop up to a second)."""
    with frozen_when_built():
        return build_from_raw(raw, settings, renderer)
