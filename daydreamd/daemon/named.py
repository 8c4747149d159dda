"""Keeping the named cohorts current: each ``data/cohorts/<name>/spec/`` compiled, built and synced.

After every rebuild check (and whenever a spec folder changes), each spec is compared by its key
-- the experiment's files, the default cohort's content id (stage settings included) and the
spec folder's contents -- with the key its cohort was last synced under. A changed one is
compiled (:mod:`daydreamd.core.spec`), turned into generations
(:mod:`daydreamd.core.spec.membership`), written to ``data/cohorts/<name>/`` and synced into
the run state, which holds every cohort's membership at once: a generation is retired only when
no cohort holds it (:meth:`Store.sync_named`). A spec with errors changes nothing: its cohort
keeps its last good membership and ``status`` shows the errors with their file and line. A spec
folder that is gone removes its cohort (what no other cohort holds is retired, never deleted).

Compiling and building run in worker threads, off the event loop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import anyio.to_thread
import structlog

from daydreamd.core.build import Build
from daydreamd.core.canonical import sha256_hex
from daydreamd.core.cohort import Generation
from daydreamd.core.config import Settings
from daydreamd.core.errors import CohortError
from daydreamd.core.problems import Level, Problem, error
from daydreamd.core.spec.catalog import catalog_from_experiment
from daydreamd.core.spec.compile import compile_spec
from daydreamd.core.spec.membership import SpecInputs, build_spec_cohort, curated_ids
from daydreamd.core.stages import State
from daydreamd.storage.cohort_files import write_cohort
from daydreamd.storage.spec_files import CohortSpec, read_cohort_specs
from daydreamd.storage.store import NamedCohortRecord, Store

log = structlog.get_logger("daydreamd.daemon.named")


@dataclass(slots=True)
class NamedCohorts:
    """The named cohorts of the run state, kept in step with their spec folders."""

    store: Store
    problems: tuple[Problem, ...] = ()
    """The spec folders' current problems (``status`` lists them with ``1_raw``'s)."""
    _seen: dict[str, tuple[str, tuple[Problem, ...]]] = field(default_factory=dict)
    """name -> (key, problems) of each spec this process built without error: an unchanged spec is
    skipped, and its warnings are still shown. A spec with errors is tried again at every check (a
    curated id it names may have appeared in the run state since)."""

    async def apply(self, build: Build, settings: Settings) -> None:
        """Bring every named cohort in line with its spec, under the build in force."""
        cohort = build.cohort
        if cohort is None:
            return
        found = await anyio.to_thread.run_sync(read_cohort_specs, settings.paths.data_dir)
        recorded = await self.store.named_cohorts()
        problems: dict[str, tuple[Problem, ...]] = {}
        changed = False
        for spec in found.specs:
            problems[spec.name], synced = await self._check_one(spec, build, settings, recorded)
            changed = changed or synced
        failed = [spec for spec in found.specs if _errors(problems[spec.name])]
        if changed and failed:  # a cohort built now may hold what a failed one's curated ids name
            for spec in failed:
                problems[spec.name], _ = await self._check_one(spec, build, settings, recorded)
        if found.listed:
            keep = {spec.name for spec in found.specs} | found.held
            for name in sorted(recorded.keys() - keep):
                retired = await self.store.drop_named(name)
                self._seen.pop(name, None)
                log.info("cohort_removed", cohort=name, retired=retired)
        self.problems = (*found.problems, *(p for spec in found.specs for p in problems[spec.name]))

    async def _check_one(
        self, spec: CohortSpec, build: Build, settings: Settings, recorded: Mapping[str, NamedCohortRecord]
    ) -> tuple[tuple[Problem, ...], bool]:
        """One spec brought in line (skipped when unchanged); its problems, and whether it synced.

        Any failure is the spec's problem, never the rebuild's: one bad spec (or a full disk while
        writing its files) must not stop the default cohort or the other specs.
        """
        cohort = build.cohort
        assert cohort is not None
        content = cohort.manifest.get("content_id", "")
        key = sha256_hex(
            f"{build.raw.fingerprint}\n{content}\n{cohort.cohort_id}\n{spec.document.fingerprint}"
        )
        seen = self._seen.get(spec.name)
        if seen is not None and seen[0] == key:  # built without error under these very inputs
            return seen[1], False
        self._seen.pop(spec.name, None)
        if spec.name == cohort.cohort_id:
            message = f"the cohort name {spec.name!r} is the default cohort's id; rename the folder"
            return (error(spec.document.path, message),), False
        record = recorded.get(spec.name)
        try:
            problems, synced = await self._apply_one(
                spec, key, build, settings, synced=record is not None and record.key == key
            )
        except Exception as exc:  # any failure stays this spec's, shown in status
            log.exception("cohort_spec_failed", cohort=spec.name)
            reason = f"{type(exc).__name__}: {exc}"
            return (
                error(
                    spec.document.path, f"could not be built: {reason}; it is tried again at the next change"
                ),
            ), False
        if not _errors(problems):
            self._seen[spec.name] = (key, problems)
        return problems, synced

    async def _apply_one(
        self, spec: CohortSpec, key: str, build: Build, settings: Settings, *, synced: bool
    ) -> tuple[tuple[Problem, ...], bool]:
        """Compile, build, write and sync one spec's cohort; its problems (errors leave it as it was)."""
        t0 = time.monotonic()
        doc = spec.document
        catalog = catalog_from_experiment(build.experiment, raw_label=build.raw.label)
        compiled, problems = await anyio.to_thread.run_sync(compile_spec, doc, catalog)
        if compiled is None:
            log.warning("cohort_spec_invalid", cohort=spec.name, errors=_errors(problems))
            return problems, False
        wanted = curated_ids(compiled)
        known = await self._finished(wanted)
        inputs = SpecInputs(
            experiment=build.experiment,
            settings=settings,
            default=build.cohort,
            known=known,
            problems=build.problems,
            raw_label=build.raw.label,
        )
        cohort, more = await anyio.to_thread.run_sync(
            lambda: build_spec_cohort(spec.name, compiled, inputs, fingerprint=doc.fingerprint)
        )
        problems = (*problems, *more)
        if cohort is None:
            log.warning("cohort_spec_invalid", cohort=spec.name, errors=_errors(more))
            return problems, False
        try:
            await anyio.to_thread.run_sync(write_cohort, settings.paths.data_dir, cohort)
        except CohortError as exc:
            return (*problems, error(doc.path, str(exc))), False
        if synced:  # this process's first look at a spec synced before: its files are rewritten, nothing else
            return problems, False
        modes = {(t.stage, t.template_id): str(t.generator) for t in build.experiment.templates}
        result = await self.store.sync_named(
            spec.name, cohort.generations, modes, key=key, counts=cohort.counts()
        )
        log.info(
            "cohort_built",
            cohort=spec.name,
            generations=len(cohort.generations),
            added=result.added,
            revived=result.revived,
            retired=result.retired,
            duration_ms=round((time.monotonic() - t0) * 1000, 1),
        )
        return problems, True

    async def _finished(self, gen_ids: set[str]) -> dict[str, Generation]:
        """The finished generations of the run state among ``gen_ids``, with their parents.

        Only ``done`` ones: a curated id names work that exists. One that never finished (made
        under templates or settings since changed) would run under its old id with today's inputs.
        """
        if not gen_ids:
            return {}
        states = await self.store.states(sorted(gen_ids))
        done = {gen_id for gen_id, state in states.items() if state == State.DONE}
        known = await self.store.generations_by_id(done)
        parents = {g.parent_gen_id for g in known.values() if g.parent_gen_id} - known.keys()
        return known | (await self.store.generations_by_id(parents) if parents else {})


def _errors(problems: tuple[Problem, ...]) -> int:
    return sum(1 for p in problems if p.level is Level.ERROR)
