"""The seam between the control server and the service (pure: typing and validation, no I/O).

The HTTP server (``server.py``) and the service internals (store, pool, watcher) meet only
here: the server parses requests into these values and calls a :class:`Control`; the service
implements it. Either side can then be built and tested without the other (the server's tests
use a fake ``Control``).

``status()`` answers a :class:`~daydreamd.core.status.ServiceStatus`, which the server sends as
its ``to_json()`` (the document is described there). Shapes the server passes through unchanged
(the service fills them in):

``generations()`` returns store rows (``gen_id, stage, state, template_id, llm_model_id, ...``);
``generation()`` one row plus its ``attempt_log``; ``approve()`` at least ``approval_id`` and
``matched``; ``revoke()`` at least ``revoked``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from daydreamd.core.errors import DaydreamError
from daydreamd.core.ids import cohort_id_problem
from daydreamd.core.retry import FailureKind
from daydreamd.core.stages import Stage, State
from daydreamd.core.status import ServiceStatus

STAGE_NAMES: tuple[str, ...] = tuple(stage.value for stage in Stage)
"""The stages a request may name (the values of :class:`daydreamd.core.stages.Stage`)."""
STATE_NAMES: tuple[str, ...] = tuple(state.value for state in State)
"""The states a generation listing may filter on; ``retired`` selects rows no longer in the cohort."""


class ControlError(DaydreamError):
    """A control request that cannot be carried out, with the HTTP status and error type to answer.

    Args:
        status: the HTTP status code, e.g. 400, 404, 409, 503.
        type: a short machine-readable kind: ``bad_request``, ``not_found``, ``conflict``, ``unavailable``.
        message: what is wrong, for a person; names the field or parameter at fault.
    """

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message


def bad_request(message: str) -> ControlError:
    """A 400 ``bad_request`` error."""
    return ControlError(400, "bad_request", message)


# Every number the API accepts has a range, checked here before it reaches SQLite (whose integers
# are 64-bit: a larger one was an OverflowError and a 500) or the pool. The bounds are far above
# any real use and far below what could overflow or allocate; an answer outside them is a 400 that
# names the field and the range.
MAX_APPROVAL_LIMIT = 1_000_000_000
"""Most generations one approval (or plan) may select: far above any cohort's size."""
MAX_CONCURRENCY = 1024
"""Highest concurrency ``/v1/limits`` sets (each call in flight holds a connection and a file
descriptor; config files are not bound by this)."""
MAX_REQUESTS_PER_MINUTE = 1_000_000
"""Highest requests-per-minute budget ``/v1/limits`` sets (0 stays "unlimited")."""
MAX_BUDGET_USD = 1e9
"""Budgets are below a billion dollars."""


def shown(value: object, width: int = 40) -> str:
    """``repr(value)``, cut to ``width`` characters (a 4,000-digit number is not echoed back whole)."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 3]}..."


def checked_int(value: object, name: str, low: int, high: int, *, nullable: bool = True) -> int | None:
    """``value`` when it is a JSON integer from ``low`` to ``high``; None for null (when ``nullable``).

    Raises:
        ControlError: 400 naming the field and the allowed range (true/false and 2.0 are not integers).
    """
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        also = " or null" if nullable else ""
        raise bad_request(f"{name}: must be an integer from {low} to {high}{also}, got {shown(value)}")
    return value


_REQUEST_FIELDS = (
    "stage",
    "template_id",
    "llm_model_id",
    "limit",
    "requested_by",
    "budget_usd",
    "plan",
    "cohort",
    "batch",
)
FAILURE_KINDS: tuple[str, ...] = tuple(kind.value for kind in FailureKind)
"""Failure kinds a retry may select (the values of ``daydreamd.core.retry.FailureKind``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ApprovalRequest:
    """Which pending generations to approve (or queued ones to revoke): one stage, optionally narrowed."""

    stage: str
    """``draft``, ``essay`` or ``evaluation``."""
    template_id: str | None = None
    """Only generations of this template (None: every template of the stage)."""
    llm_model_id: str | None = None
    """Only generations on this model (None: every model)."""
    limit: int | None = None
    """Approve at most this many, 1 to :data:`MAX_APPROVAL_LIMIT` (None: all that match)."""
    requested_by: str = ""
    """Who asked (the OS user name of the CLI), recorded with the approval."""
    budget_usd: float | None = None
    """Stop starting calls for this approval once its recorded spend would pass this many dollars
    (above 0, below :data:`MAX_BUDGET_USD`)."""
    plan: str | None = None
    """The hash of a ``plan``: refuse unless the approval would cover exactly what that plan showed."""
    cohort: str | None = None
    """Only generations of this cohort: a named cohort, or the default cohort's id (None: the default)."""
    batch: bool | None = None
    """True: run the calls in batches (every matched model must have an endpoint with ``batch =
    true``); False: online; None: as the config's ``batch`` of the stage or the model says."""

    @classmethod
    def from_json(cls, body: object) -> ApprovalRequest:
        """Validate a decoded JSON body; unknown keys are refused, since a misspelt filter would widen it.

        Raises:
            ControlError: 400, with a message naming the field at fault.
        """
        if not isinstance(body, Mapping):
            raise bad_request("the request body must be a JSON object")
        unknown = sorted(str(key) for key in body if key not in _REQUEST_FIELDS)
        if unknown:
            raise bad_request(f"{unknown[0]}: unknown field; expected one of {', '.join(_REQUEST_FIELDS)}")
        return cls(
            stage=_stage(body.get("stage")),
            template_id=_optional_text(body, "template_id"),
            llm_model_id=_optional_text(body, "llm_model_id"),
            limit=_limit(body.get("limit")),
            requested_by=_requested_by(body.get("requested_by", "")),
            budget_usd=_budget(body.get("budget_usd")),
            plan=_optional_text(body, "plan"),
            cohort=cohort_name(body.get("cohort")),
            batch=_optional_flag(body, "batch"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON body ``from_json`` accepts (None fields left out)."""
        fields = {name: getattr(self, name) for name in _REQUEST_FIELDS}
        return {name: value for name, value in fields.items() if value is not None}


def _optional_flag(body: Mapping[str, object], name: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"{name}: must be true, false or null, got {shown(value)}")
    return value


def _budget(value: object) -> float | None:
    if value is None:
        return None
    # NaN and infinities (JSON's NaN, Infinity, 1e999) fail the comparison; a huge integer is
    # compared exactly, before float() could overflow.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < MAX_BUDGET_USD:
        raise bad_request(
            f"budget_usd: must be a number of dollars above 0 and below {MAX_BUDGET_USD:.0f}, or null, "
            f"got {shown(value)}"
        )
    return float(value)


def _object(body: object, allowed: tuple[str, ...]) -> Mapping[str, object]:
    """A JSON object with only ``allowed`` keys (a misspelt key is refused, never ignored)."""
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object")
    unknown = sorted(str(key) for key in body if key not in allowed)
    if unknown:
        raise bad_request(f"{unknown[0]}: unknown field; expected one of {', '.join(allowed)}")
    return body


def _optional_choice(body: Mapping[str, object], name: str, choices: tuple[str, ...]) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if value not in choices:
        raise bad_request(f"{name}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


_RETRY_FIELDS = ("stage", "kind", "template_id", "llm_model_id", "fresh", "requested_by", "cohort", "batch")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryRequest:
    """Which failed generations to send back to the queue."""

    stage: str | None = None
    kind: str | None = None
    """Only failures of this kind, e.g. ``rate_limit`` or ``transient``."""
    template_id: str | None = None
    llm_model_id: str | None = None
    fresh: bool = False
    """Pay for a new reply even where one is saved (for empty, cut-off or filtered replies)."""
    requested_by: str = ""
    cohort: str | None = None
    """Only failures of this cohort (None: the default cohort)."""
    batch: bool | None = None
    """As :attr:`ApprovalRequest.batch`, for the calls retried."""

    @classmethod
    def from_json(cls, body: object) -> RetryRequest:
        """Validate a decoded JSON body (400 naming the field at fault)."""
        fields = _object(body, _RETRY_FIELDS)
        fresh = fields.get("fresh", False)
        if not isinstance(fresh, bool):
            raise bad_request(f"fresh: must be true or false, got {fresh!r}")
        return cls(
            stage=_optional_choice(fields, "stage", STAGE_NAMES),
            kind=_optional_choice(fields, "kind", FAILURE_KINDS),
            template_id=_optional_text(fields, "template_id"),
            llm_model_id=_optional_text(fields, "llm_model_id"),
            fresh=fresh,
            requested_by=_requested_by(fields.get("requested_by", "")),
            cohort=cohort_name(fields.get("cohort")),
            batch=_optional_flag(fields, "batch"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ReparseRequest:
    """Parse finished generations' saved replies again: all LLM templates, one stage, or one template."""

    stage: str | None = None
    template_id: str | None = None
    requested_by: str = ""

    @classmethod
    def from_json(cls, body: object) -> ReparseRequest:
        """Validate a decoded JSON body (400 naming the field at fault)."""
        fields = _object(body, ("stage", "template_id", "requested_by"))
        request = cls(
            stage=_optional_choice(fields, "stage", STAGE_NAMES),
            template_id=_optional_text(fields, "template_id"),
            requested_by=_requested_by(fields.get("requested_by", "")),
        )
        if request.template_id is not None and request.stage is None:
            raise bad_request("template_id: needs stage (template ids are per stage)")
        return request


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseRequest:
    """Pause or resume claiming: for every model (``llm_model_id`` None) or one."""

    llm_model_id: str | None = None
    requested_by: str = ""

    @classmethod
    def from_json(cls, body: object) -> PauseRequest:
        """Validate a decoded JSON body (400 naming the field at fault)."""
        fields = _object(body, ("llm_model_id", "requested_by"))
        return cls(
            llm_model_id=_optional_text(fields, "llm_model_id"),
            requested_by=_requested_by(fields.get("requested_by", "")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitsRequest:
    """Change limits live: the pool's concurrency, or one model's concurrency and requests per minute."""

    llm_model_id: str | None = None
    concurrency: int | None = None
    """1 to :data:`MAX_CONCURRENCY`."""
    requests_per_minute: int | None = None
    """0 (unlimited) to :data:`MAX_REQUESTS_PER_MINUTE`."""

    @classmethod
    def from_json(cls, body: object) -> LimitsRequest:
        """Validate a decoded JSON body (400 naming the field at fault)."""
        fields = _object(body, ("llm_model_id", "concurrency", "requests_per_minute"))
        concurrency = fields.get("concurrency")
        if type(concurrency) is int and concurrency == 0:
            raise bad_request("concurrency: must be at least 1 (pause a model to stop it)")
        request = cls(
            llm_model_id=_optional_text(fields, "llm_model_id"),
            concurrency=checked_int(concurrency, "concurrency", 1, MAX_CONCURRENCY),
            requests_per_minute=checked_int(
                fields.get("requests_per_minute"), "requests_per_minute", 0, MAX_REQUESTS_PER_MINUTE
            ),
        )
        if request.llm_model_id is None and request.requests_per_minute is not None:
            raise bad_request("requests_per_minute: needs llm_model_id (budgets are per model)")
        return request


def cohort_name(value: object) -> str | None:
    """A cohort named by a request: None (the default cohort) or a valid cohort id (400 otherwise)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request(f"cohort: must be a cohort name or null, got {shown(value)}")
    if problem := cohort_id_problem(value):
        raise bad_request(f"cohort: {problem}")
    return value


def _stage(value: object) -> str:
    if value is None:
        raise bad_request("stage: required; one of " + ", ".join(STAGE_NAMES))
    if value not in STAGE_NAMES:
        raise bad_request(f"stage: {value!r} is not one of {', '.join(STAGE_NAMES)}")
    return str(value)


def _optional_text(body: Mapping[str, object], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{name}: must be a non-empty string or null, got {value!r}")
    return value.strip()


def _limit(value: object) -> int | None:
    return checked_int(value, "limit", 1, MAX_APPROVAL_LIMIT)


def _requested_by(value: object) -> str:
    if not isinstance(value, str):
        raise bad_request(f"requested_by: must be a string, got {value!r}")
    return value


class Control(Protocol):
    """What the control server needs from the service. Every method may raise :class:`ControlError`."""

    async def status(self, cohort: str | None = None) -> ServiceStatus:
        """The service's state: cohort, counts per stage and state (of ``cohort``; None: the default
        cohort), pool, raw-input errors. Raises a 404 ControlError for an unknown cohort."""
        ...

    async def generations(
        self, *, stage: str | None, state: str | None, limit: int, cohort: str | None = None
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` generations, optionally of one stage and/or state and/or cohort, parents first."""
        ...

    async def cohorts(self) -> dict[str, Any]:
        """Every cohort: the default one and each named one, with sizes per stage and state, and spend."""
        ...

    async def generation(self, gen_id: str) -> dict[str, Any] | None:
        """One generation with its attempts, or None when the id is unknown."""
        ...

    async def approve(self, request: ApprovalRequest) -> dict[str, Any]:
        """Queue matching pending generations; returns ``{"approval_id": n, "matched": n, ...}``."""
        ...

    async def revoke(self, request: ApprovalRequest) -> dict[str, Any]:
        """Send matching queued (not started) generations back to pending; returns ``{"revoked": n}``."""
        ...

    async def retry(self, request: RetryRequest) -> dict[str, Any]:
        """Send matching failed generations back to queued; returns ``{"retried": n}``."""
        ...

    async def reparse(self, request: ReparseRequest) -> dict[str, Any]:
        """Re-parse finished generations from their saved replies (no call); returns the counts."""
        ...

    async def pause(self, request: PauseRequest) -> dict[str, Any]:
        """Stop claiming (all work or one model); in-flight calls are not touched."""
        ...

    async def resume(self, request: PauseRequest) -> dict[str, Any]:
        """Start claiming again (all work or one model)."""
        ...

    async def limits(self, request: LimitsRequest | None) -> dict[str, Any]:
        """The current limits, after applying ``request`` when one is given."""
        ...

    async def plan(self, request: ApprovalRequest) -> dict[str, Any]:
        """What approving ``request`` would start, with an estimate of tokens and dollars and a hash."""
        ...

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        """A subscription to the live event stream (state changes, rebuilds, limit changes)."""
        ...

    async def metrics(self) -> str:
        """Prometheus text exposition of the service's counters and gauges."""
        ...
