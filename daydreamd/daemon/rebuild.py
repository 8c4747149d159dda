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
from dataclasses import dataclass

import anyio.to_thread
import structlog

from daydreamd.core.build import Build, build_from_raw
from daydreamd.core.config import Settings
from daydreamd.core.jobs import Jobs
from daydreamd.core.problems import Level, Problem
from daydreamd.core.snapshot import read_raw_dir
from daydreamd.core.status import ProblemStatus, RebuildStatus
from daydreamd.core.timestamps import utc_now
from daydreamd.daemon.settings import LiveSettings
from daydreamd.storage.cohort_files import write_cohort
from daydreamd.storage.last_good import LastGoodRaw
from daydreamd.storage.store import Store, SyncResult

PENDING = "fingerprint.pending"
APPLIED = "fingerprint.applied"
log = structlog.get_logger("daydreamd.daemon.rebuild")


@dataclass(slots=True)
class Current:
    """What the service works from: the last good build and the problems of the latest files."""

    build: Build | None = None
    jobs: Jobs | None = None
    problems: tuple[Problem, ...] = ()
    last: RebuildStatus | None = None
    """The last check that applied something (None before the first)."""
    rebuilds: int = 0
    rebuild_seconds: float = 0.0

    @property
    def cohort_id(self) -> str | None:
        """The current cohort's id, once one was built."""
        return self.build.cohort.cohort_id if self.build and self.build.cohort else None

    def errors(self) -> tuple[ProblemStatus, ...]:
        """Problems of the latest files, errors first (what ``/v1/status`` shows)."""
        ordered = sorted(self.problems, key=lambda p: p.level is not Level.ERROR)
        return tuple(ProblemStatus.from_problem(p) for p in ordered)


class Rebuilder:
    """Applies the experiment directory's contents to the run state."""

    def __init__(self, settings: LiveSettings, store: Store, current: Current) -> None:
        self.settings = settings
        self.store = store
        self.current = current
        self.last_good = LastGoodRaw(store)

    async def check(self, *, reason: str) -> bool:
        """Rebuild if the files changed since they were last applied; True if a cohort was applied."""
        t0 = time.monotonic()
        settings = self.settings.current
        raw = await anyio.to_thread.run_sync(read_raw_dir, settings.raw_dir)
        fingerprint = raw.fingerprint
        applied = await self.store.get_fact(APPLIED)
        if fingerprint == applied and self.current.build is not None:
            return False
        if fingerprint != applied:
            await self.store.set_fact(PENDING, fingerprint)
        build = await anyio.to_thread.run_sync(build_from_raw, raw, settings)
        self.current.problems = build.problems
        if build.cohort is None:
            await self.store.set_fact(APPLIED, fingerprint)
            if self.current.build is None:  # nothing in force (a start, a reload): the last good one
                await self._serve_last_good(settings, reason)
            self._record(reason, fingerprint, t0, ok=False)
            errors = [str(p) for p in build.problems if p.level is Level.ERROR]
            log.warning("experiment_invalid", errors=len(errors), first=errors[:5], reason=reason)
            return False
        result = await self._apply(settings, build, fingerprint, changed=fingerprint != applied)
        await self.last_good.save(raw)
        self.current.build = build
        self.current.jobs = Jobs(build.experiment, settings)
        self.current.rebuilds += 1
        self._record(reason, fingerprint, t0, ok=True, sync=result)
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
        """Write the cohort's files and make the run state's membership match it."""
        assert build.cohort is not None
        await anyio.to_thread.run_sync(write_cohort, settings.paths.data_dir, build.cohort)
        modes = {(t.stage, t.template_id): str(t.generator) for t in build.experiment.templates}
        result = await self.store.sync_membership(build.cohort, modes, fingerprint)
        await self.store.set_fact("cohort.current", build.cohort.cohort_id)
        return result

    async def _serve_last_good(self, settings: Settings, reason: str) -> None:
        """Put the cohort of the last good files in force (their saved copy), when there is one.

        It is synced like any build: under unchanged settings that changes nothing; under new
        ones (gen_ids include stage settings) the run state follows, as it would for valid files.
        The applied fingerprint stays the current (broken) files', so fixing them rebuilds.
        """
        raw = await self.last_good.load(label=settings.raw_dir.name)
        if raw is None:
            return
        build = await anyio.to_thread.run_sync(build_from_raw, raw, settings)
        if build.cohort is None:  # e.g. checks added since it was saved: there is nothing good to serve
            errors = [str(p) for p in build.problems if p.level is Level.ERROR]
            log.warning("last_good_files_invalid", errors=len(errors), first=errors[:5])
            return
        result = await self._sync(settings, build, raw.fingerprint)
        self.current.build = build
        self.current.jobs = Jobs(build.experiment, settings)
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
