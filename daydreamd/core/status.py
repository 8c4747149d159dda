"""The ``GET /v1/status`` document as types (pure): the daemon builds one, every reader shows it.

Field names are the JSON keys, in order, so the flat parts serialise with ``asdict``.

The service fills a :class:`ServiceStatus`; the server answers its :meth:`~ServiceStatus.to_json`;
``daydreamctl status`` (text and rich views) and the sd_notify ``STATUS=`` line read the answer
back with :meth:`~ServiceStatus.from_json`. The JSON shape::

    {"version": "0.4.0", "started_at": "2025-...Z", "uptime_s": 12.5,
     "cohort_id": "c_...",                                    # None while data/1_raw has errors
     "stages": {"draft": {"pending": 0, "queued": 0, "running": 0, "done": 0, "failed": 0,
                          "retired": 0}, "essay": {...}, "evaluation": {...}},
     "in_flight": 3,                                          # generations holding a slot
     "models": {"<llm_model_id>": {"in_flight": 2, "concurrency": 4, "max_concurrency": 8,
                                   "requests_per_minute": 60, "requests_last_minute": 12,
                                   "provider": "openrouter", "paused": false, "cost_usd": 0.5,
                                   "unpriced_calls": 0}},
     "pool": {"concurrency": 8, "paused": false, "paused_models": [],
              "parked": {"all": {"resumes_in_s": 42.5}}, "outcomes": {"done": 9},
              "budgets": {"<approval_id>": {"budget_usd": 2.0, "spent_usd": 1.25, "exhausted": false}}},
     "spent_usd": 1.5, "rates_per_minute": {"draft": 4.5},
     "failures": {"<stage>": {"<kind>": n}}, "recent_errors": {"<kind>": n},
     "errors": [{"level": "error", "file": "1_raw/x.csv", "line": 3, "column": null, "message": "..."}],
     "last_rebuild": {"at": ..., "reason": ..., "fingerprint": ..., "ok": true, "duration_ms": ...,
                      "added": 0, "retired": 0, "revived": 0},      # {} before the first rebuild
     "rebuilds": 1,
     "parent_changed": {"essay": 2},                          # made from a re-parsed, changed parent
     "cohort_progress": {"phase": "syncing", "reason": "watch", "started_at": ..., "elapsed_s": 4.2,
                         "generations": 1304160, "done": 40000, "total": 948480},   # null when not building
     "batches": [{"id": 3, "endpoint": "openai", "model": "gpt_4o", "stage": "evaluation",
                  "state": "submitted", "provider_state": "in_progress", "requests": 1000,
                  "completed": 420, "failed": 0, "age_s": 3600.0, "problem": null}]}

``from_json`` never raises: the readers always tolerated a partial document (a daemon of
another version, a test's hand-written one). Missing counts read as 0; a missing limit, pool
concurrency or ``in_flight`` as None (unknown, and shown so), since the views tell those apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from daydreamd.core.problems import Problem
from daydreamd.core.stages import State


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _int(value: object, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _number(value: object, default: float = 0.0) -> float:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else default


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_number(value: object) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _optional_text(value: object) -> str | None:
    return None if value is None else str(value)


def _counts(value: object) -> dict[str, int]:
    return {str(key): _int(n) for key, n in _mapping(value).items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class StageCounts:
    """Generations of one stage per state (``retired``: no longer in the cohort, whatever their state)."""

    pending: int = 0
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    retired: int = 0

    def count(self, state: State) -> int:
        """The generations in ``state``."""
        value: int = getattr(self, state.value)
        return value

    @property
    def approved(self) -> int:
        """Approved work: done, failed, queued or running (pending and retired are not)."""
        return self.done + self.failed + self.queued + self.running

    def to_json(self) -> dict[str, int]:
        """``{"pending": n, ..., "retired": n}``, in the order of :class:`State`."""
        return {str(state): self.count(state) for state in State}

    @classmethod
    def from_json(cls, value: object) -> StageCounts:
        """Counts from JSON; a missing or non-integer count is 0."""
        counts = _mapping(value)
        return cls(**{state.value: _int(counts.get(state.value)) for state in State})

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> StageCounts:
        """From ``Store.counts`` rows (state -> count)."""
        return cls(**{state.value: counts.get(state.value, 0) for state in State})


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelStatus:
    """One model's live limits and counters."""

    in_flight: int = 0
    """Calls holding one of its slots."""
    concurrency: float | None = None
    """Its current (adaptive) concurrency limit; None when the document did not say."""
    max_concurrency: float | None = None
    """The configured ceiling of that limit."""
    requests_per_minute: int = 0
    """Its request budget per sliding minute (0: unlimited)."""
    requests_last_minute: int = 0
    provider: str = ""
    paused: bool = False
    cost_usd: float = 0.0
    """Dollars spent on it since the service started."""
    unpriced_calls: int = 0
    """Calls whose cost is unknown (no reported cost, no price)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one model."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> ModelStatus:
        """A model from JSON (``limit`` is what daemons before ``concurrency`` called it)."""
        info = _mapping(value)
        return cls(
            in_flight=_int(info.get("in_flight")),
            concurrency=_optional_number(info.get("concurrency", info.get("limit"))),
            max_concurrency=_optional_number(info.get("max_concurrency")),
            requests_per_minute=_int(info.get("requests_per_minute")),
            requests_last_minute=_int(info.get("requests_last_minute")),
            provider=str(info.get("provider") or ""),
            paused=bool(info.get("paused")),
            cost_usd=_number(info.get("cost_usd")),
            unpriced_calls=_int(info.get("unpriced_calls")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointStatus:
    """One endpoint's limits and what it holds now (``[endpoints.<name>]``, or ``llm``)."""

    in_flight: int = 0
    concurrency: int = 0
    """Its calls-at-once limit (0: none of its own)."""
    requests_per_minute: int = 0
    requests_last_minute: int = 0
    tokens_per_minute: int = 0
    tokens_last_minute: int = 0
    models: tuple[str, ...] = ()
    """The experiment's models it serves."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one endpoint."""
        return {**asdict(self), "models": list(self.models)}

    @classmethod
    def from_json(cls, value: object) -> EndpointStatus:
        """An endpoint from JSON."""
        info = _mapping(value)
        models = info.get("models")
        return cls(
            in_flight=_int(info.get("in_flight")),
            concurrency=_int(info.get("concurrency")),
            requests_per_minute=_int(info.get("requests_per_minute")),
            requests_last_minute=_int(info.get("requests_last_minute")),
            tokens_per_minute=_int(info.get("tokens_per_minute")),
            tokens_last_minute=_int(info.get("tokens_last_minute")),
            models=tuple(str(m) for m in models) if isinstance(models, list) else (),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchStatus:
    """One batch (batch mode): where it stands here and at the provider."""

    id: int = 0
    endpoint: str = ""
    model: str = ""
    stage: str = ""
    state: str = ""
    """preparing | submitting | submitted | collecting | closed (see ``storage.batches``)."""
    provider_state: str | None = None
    """The provider's status of it (validating, in_progress, finalizing, completed, expired...)."""
    requests: int = 0
    completed: int = 0
    failed: int = 0
    age_s: float = 0.0
    """Seconds since it was formed."""
    problem: str | None = None
    """The last error of a step being tried again (None: none)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one batch."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> BatchStatus:
        """A batch from JSON."""
        info = _mapping(value)
        return cls(
            id=_int(info.get("id")),
            endpoint=str(info.get("endpoint") or ""),
            model=str(info.get("model") or ""),
            stage=str(info.get("stage") or ""),
            state=str(info.get("state") or ""),
            provider_state=_optional_text(info.get("provider_state")),
            requests=_int(info.get("requests")),
            completed=_int(info.get("completed")),
            failed=_int(info.get("failed")),
            age_s=_number(info.get("age_s")),
            problem=_optional_text(info.get("problem")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ParkedStatus:
    """Work held back after a quota failure."""

    resumes_in_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"resumes_in_s": seconds}``."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> ParkedStatus:
        """From JSON (anything but an object: parked, for how long unknown)."""
        return cls(resumes_in_s=_optional_number(_mapping(value).get("resumes_in_s")))


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetStatus:
    """One budgeted approval: its budget, what it has spent, whether new calls stop."""

    budget_usd: float = 0.0
    spent_usd: float = 0.0
    exhausted: bool = False

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one budget."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> BudgetStatus:
        """A budget from JSON."""
        info = _mapping(value)
        return cls(
            budget_usd=_number(info.get("budget_usd")),
            spent_usd=_number(info.get("spent_usd")),
            exhausted=bool(info.get("exhausted")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Trouble:
    """Something outside the service that holds work back, until it clears by itself."""

    what: str
    """``provider_down``, ``data_dir_unwritable``, ``state_db_unwritable``, ``no_endpoint`` or
    ``no_batch_endpoint``."""
    since: str
    """When it started (ISO-8601 UTC)."""
    message: str = ""
    next_try_in_s: float | None = None
    """For a provider that is down: seconds until the next probe call."""
    waiting: int = 0
    """Writes (replies, commits) held in memory until it clears."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object of one trouble."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> Trouble:
        """A trouble from JSON."""
        info = _mapping(value)
        return cls(
            what=str(info.get("what") or ""),
            since=str(info.get("since") or ""),
            message=str(info.get("message") or ""),
            next_try_in_s=_optional_number(info.get("next_try_in_s")),
            waiting=_int(info.get("waiting")),
        )

    def describe(self) -> str:
        """One line for a person."""
        words = {
            "provider_down": "provider down",
            "data_dir_unwritable": "paused: data dir not writable",
            "state_db_unwritable": "state database not writable",
            "no_batch_endpoint": "batch work waiting",
        }
        text = f"{words.get(self.what, self.what)} since {self.since}"
        if self.message:
            text += f" ({self.message})"
        if self.next_try_in_s is not None:
            text += f", next probe in {self.next_try_in_s:.0f} s"
        if self.waiting:
            text += f"; {self.waiting} write(s) held until it clears"
        return text + "; resumes by itself"


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolStatus:
    """The worker pool: its global limit, pauses, parking, outcomes and budgets."""

    concurrency: int | None = None
    """Generations in progress at once over all models; None when the document did not say."""
    paused: bool = False
    paused_models: tuple[str, ...] = ()
    parked: Mapping[str, ParkedStatus] = field(default_factory=dict)
    """``{"all": ...}`` while LLM work waits after a quota failure; empty otherwise."""
    outcomes: Mapping[str, int] = field(default_factory=dict)
    """Generations finished since start: ``done`` or their failure kind."""
    budgets: Mapping[str, BudgetStatus] = field(default_factory=dict)
    """Budgeted approvals by id (as text: JSON keys are strings)."""
    troubles: tuple[Trouble, ...] = ()
    """What holds work back now (a provider outage, a disk or database that takes no writes)."""

    def to_json(self) -> dict[str, Any]:
        """The ``pool`` object."""
        return {
            "concurrency": self.concurrency,
            "paused": self.paused,
            "paused_models": list(self.paused_models),
            "parked": {name: parked.to_json() for name, parked in self.parked.items()},
            "outcomes": dict(self.outcomes),
            "budgets": {approval: budget.to_json() for approval, budget in self.budgets.items()},
            "troubles": [trouble.to_json() for trouble in self.troubles],
        }

    @classmethod
    def from_json(cls, value: object) -> PoolStatus:
        """The pool from JSON."""
        pool = _mapping(value)
        paused_models = pool.get("paused_models")
        troubles = pool.get("troubles")
        return cls(
            concurrency=_optional_int(pool.get("concurrency")),
            paused=bool(pool.get("paused")),
            paused_models=tuple(str(m) for m in paused_models)
            if isinstance(paused_models, Sequence) and not isinstance(paused_models, str)
            else (),
            parked={str(k): ParkedStatus.from_json(v) for k, v in _mapping(pool.get("parked")).items()},
            outcomes=_counts(pool.get("outcomes")),
            budgets={str(k): BudgetStatus.from_json(v) for k, v in _mapping(pool.get("budgets")).items()},
            troubles=tuple(Trouble.from_json(t) for t in troubles) if isinstance(troubles, list) else (),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ProblemStatus:
    """A problem in ``data/1_raw`` as the status reports it (fields may be missing in old documents)."""

    level: str | None = None
    """``error`` or ``warning``."""
    file: str | None = None
    line: int | None = None
    column: str | None = None
    message: str | None = None

    @property
    def is_error(self) -> bool:
        """True for an error, and for a problem of no stated level (it may block the cohort)."""
        return (self.level or "error") == "error"

    def to_json(self) -> dict[str, Any]:
        """The shape of :meth:`Problem.to_dict <daydreamd.core.problems.Problem.to_dict>`."""
        return asdict(self)

    @classmethod
    def from_problem(cls, problem: Problem) -> ProblemStatus:
        """A loader problem."""
        return cls(
            level=str(problem.level),
            file=problem.path,
            line=problem.line,
            column=problem.column,
            message=problem.message,
        )

    @classmethod
    def from_json(cls, value: object) -> ProblemStatus:
        """A problem from JSON (anything but an object: a problem of unknown level)."""
        info = _mapping(value)
        return cls(
            level=_optional_text(info.get("level")),
            file=_optional_text(info.get("file")),
            line=_optional_int(info.get("line")),
            column=_optional_text(info.get("column")),
            message=_optional_text(info.get("message")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RebuildStatus:
    """The last time the files in ``1_raw`` were checked and applied."""

    at: str
    """Wall-clock ISO-8601 UTC."""
    reason: str
    """What started it: ``startup``, ``watch``, ``reload``, ..."""
    fingerprint: str
    ok: bool
    """False when the files had errors (the last good cohort stays in force)."""
    duration_ms: float
    added: int = 0
    retired: int = 0
    revived: int = 0

    def to_json(self) -> dict[str, Any]:
        """The ``last_rebuild`` object."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> RebuildStatus | None:
        """The last rebuild from JSON; None for ``{}`` (no rebuild yet)."""
        info = _mapping(value)
        if not info:
            return None
        return cls(
            at=str(info.get("at") or ""),
            reason=str(info.get("reason") or ""),
            fingerprint=str(info.get("fingerprint") or ""),
            ok=bool(info.get("ok")),
            duration_ms=_number(info.get("duration_ms")),
            added=_int(info.get("added")),
            retired=_int(info.get("retired")),
            revived=_int(info.get("revived")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class CohortProgress:
    """A cohort being built and synced into the run state (until it is in force)."""

    phase: str
    """``reading`` (data/1_raw), ``building`` (ids of every generation), ``writing`` (the cohort's
    files), ``comparing`` (with the membership in force), ``syncing`` (the changes into SQLite)."""
    reason: str = ""
    """What started the rebuild: ``startup``, ``watch``, ``reload``, ..."""
    started_at: str = ""
    elapsed_s: float = 0.0
    generations: int = 0
    """The new cohort's size, once built (0 before)."""
    done: int = 0
    """While syncing: changed generations written so far."""
    total: int = 0
    """While syncing: changed generations to write (added, revived and retired)."""

    def describe(self) -> str:
        """One line for a person, e.g. ``building cohort: syncing 40,000 of 1,304,160 changes``."""
        if self.phase == "syncing":
            return (
                f"building cohort: syncing {self.done:,} of {self.total:,} changes "
                f"({self.generations:,} generations, {self.elapsed_s:.0f} s)"
            )
        size = f"{self.generations:,} generations, " if self.generations else ""
        return f"building cohort: {self.phase} ({size}{self.elapsed_s:.0f} s)"

    def to_json(self) -> dict[str, Any]:
        """The ``cohort_progress`` object."""
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> CohortProgress | None:
        """From JSON; None for null or ``{}`` (nothing is being built)."""
        info = _mapping(value)
        if not info:
            return None
        return cls(
            phase=str(info.get("phase") or ""),
            reason=str(info.get("reason") or ""),
            started_at=str(info.get("started_at") or ""),
            elapsed_s=_number(info.get("elapsed_s")),
            generations=_int(info.get("generations")),
            done=_int(info.get("done")),
            total=_int(info.get("total")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceStatus:
    """What ``GET /v1/status`` answers (see the module docstring for the JSON)."""

    version: str = ""
    started_at: str = ""
    uptime_s: float = 0.0
    cohort_id: str | None = None
    """None until a cohort was built (while data/1_raw has errors)."""
    stages: Mapping[str, StageCounts] = field(default_factory=dict)
    """Counts per stage, in stage order."""
    in_flight: int | None = None
    """Generations holding a concurrency slot; None when the document did not say."""
    models: Mapping[str, ModelStatus] = field(default_factory=dict)
    endpoints: Mapping[str, EndpointStatus] = field(default_factory=dict)
    pool: PoolStatus = field(default_factory=PoolStatus)
    spent_usd: float = 0.0
    """Dollars spent since the service started, over all models."""
    rates_per_minute: Mapping[str, float] = field(default_factory=dict)
    """Generations finished per minute per stage, recently."""
    failures: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Failed generations of the cohort: stage -> failure kind -> count."""
    recent_errors: Mapping[str, int] = field(default_factory=dict)
    """Failed attempts in the last hour by kind."""
    errors: tuple[ProblemStatus, ...] = ()
    """Problems in data/1_raw, errors first."""
    last_rebuild: RebuildStatus | None = None
    rebuilds: int = 0
    parent_changed: Mapping[str, int] = field(default_factory=dict)
    """Per stage, finished generations made from a parent text that a re-parse has since changed
    (flagged, not re-run)."""
    cohort_progress: CohortProgress | None = None
    """A cohort being built and synced now (None when none is): ``stages`` still count the
    membership in force, ``cohort_id`` is the cohort in force (None at a first start)."""
    batches: tuple[BatchStatus, ...] = ()
    """Batches not closed, and the last few closed ones, oldest first."""

    def stage(self, stage: str) -> StageCounts:
        """The counts of ``stage`` (zeros when the document has none)."""
        return self.stages.get(stage) or StageCounts()

    def to_json(self) -> dict[str, Any]:
        """The JSON document, exactly as the socket answers it."""
        return {
            "version": self.version,
            "started_at": self.started_at,
            "uptime_s": self.uptime_s,
            "cohort_id": self.cohort_id,
            "stages": {stage: counts.to_json() for stage, counts in self.stages.items()},
            "in_flight": self.in_flight,
            "models": {model: info.to_json() for model, info in self.models.items()},
            "endpoints": {name: info.to_json() for name, info in self.endpoints.items()},
            "pool": self.pool.to_json(),
            "spent_usd": self.spent_usd,
            "rates_per_minute": dict(self.rates_per_minute),
            "failures": {stage: dict(kinds) for stage, kinds in self.failures.items()},
            "recent_errors": dict(self.recent_errors),
            "errors": [error.to_json() for error in self.errors],
            "last_rebuild": self.last_rebuild.to_json() if self.last_rebuild is not None else {},
            "rebuilds": self.rebuilds,
            "parent_changed": dict(self.parent_changed),
            "cohort_progress": self.cohort_progress.to_json() if self.cohort_progress is not None else None,
            "batches": [batch.to_json() for batch in self.batches],
        }

    @classmethod
    def from_json(cls, value: object) -> ServiceStatus:
        """A status document from JSON (never raises; see the module docstring)."""
        doc = _mapping(value)
        errors, batches = doc.get("errors"), doc.get("batches")
        cohort_id = doc.get("cohort_id")
        return cls(
            version=str(doc.get("version") or ""),
            started_at=str(doc.get("started_at") or ""),
            uptime_s=_number(doc.get("uptime_s")),
            cohort_id=str(cohort_id) if cohort_id else None,
            stages={str(k): StageCounts.from_json(v) for k, v in _mapping(doc.get("stages")).items()},
            in_flight=_optional_int(doc.get("in_flight")),
            models={str(k): ModelStatus.from_json(v) for k, v in _mapping(doc.get("models")).items()},
            endpoints={
                str(k): EndpointStatus.from_json(v) for k, v in _mapping(doc.get("endpoints")).items()
            },
            pool=PoolStatus.from_json(doc.get("pool")),
            spent_usd=_number(doc.get("spent_usd")),
            rates_per_minute={
                str(k): v
                for k, v in _mapping(doc.get("rates_per_minute")).items()
                if _optional_number(v) is not None
            },
            failures={str(k): _counts(v) for k, v in _mapping(doc.get("failures")).items()},
            recent_errors=_counts(doc.get("recent_errors")),
            errors=tuple(ProblemStatus.from_json(e) for e in errors) if isinstance(errors, list) else (),
            last_rebuild=RebuildStatus.from_json(doc.get("last_rebuild")),
            rebuilds=_int(doc.get("rebuilds")),
            parent_changed=_counts(doc.get("parent_changed")),
            cohort_progress=CohortProgress.from_json(doc.get("cohort_progress")),
            batches=tuple(BatchStatus.from_json(b) for b in batches) if isinstance(batches, list) else (),
        )

    @classmethod
    def coerce(cls, value: ServiceStatus | Mapping[str, Any]) -> ServiceStatus:
        """``value`` itself, or read from its JSON."""
        return value if isinstance(value, ServiceStatus) else cls.from_json(value)


def parent_changed_note(stage: str, count: int) -> str:
    """The line saying that finished work was made from a parent text a re-parse changed."""
    return (
        f"{count:,} finished {stage} generation(s) were made from a parent whose parsed text a "
        "re-parse has since changed (kept as they are; not re-run)"
    )
