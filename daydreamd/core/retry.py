"""Retry decisions for LLM calls, as pure functions.

Every failed call is first classified into a :class:`FailureKind`; the kind alone decides whether
the call may be tried again (rate limits and transient faults may, everything that would fail the
same way again or that costs money for nothing may not) and how long to wait. Keeping this free of
I/O, clocks and logging lets the whole policy be tested with a seeded RNG and plain dicts, and lets
the worker pool and the client share one definition of "retryable".
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from enum import StrEnum


class FailureKind(StrEnum):
    """Why one attempt at a generation failed."""

    RENDER_ERROR = "render_error"
    RATE_LIMIT = "rate_limit"
    TRANSIENT = "transient"
    QUOTA = "quota"
    INVALID_REQUEST = "invalid_request"
    AUTH = "auth"
    CONTENT_FILTER = "content_filter"
    TRUNCATED = "truncated"
    TOO_SHORT = "too_short"
    PARSE_ERROR = "parse_error"
    EMPTY = "empty"
    INTERNAL = "internal"
    """A bug in the service failed the generation (never retried automatically)."""
    BATCH_EXPIRED = "batch_expired"
    """Its batch expired (the provider's completion window passed) before it was answered."""
    BATCH_CANCELLED = "batch_cancelled"
    """Its batch was cancelled before it was answered."""
    BATCH_FAILED = "batch_failed"
    """Its batch failed as a whole (refused by the provider), or ended without a line for it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how patiently retryable failures are retried.

    ``*_tries`` count every attempt, the first included: ``transient_tries=3`` means one call and
    at most two retries. Delays grow exponentially from ``*_base_s`` and never exceed ``*_cap_s``.
    """

    rate_limit_tries: int = 8
    rate_limit_base_s: float = 2.0
    rate_limit_cap_s: float = 120.0
    transient_tries: int = 3
    transient_base_s: float = 1.0
    transient_cap_s: float = 30.0


def max_tries(kind: FailureKind, policy: RetryPolicy) -> int:
    """Total attempts allowed for failures of ``kind`` (1 means: never retry)."""
    if kind is FailureKind.RATE_LIMIT:
        return max(1, policy.rate_limit_tries)
    if kind is FailureKind.TRANSIENT:
        return max(1, policy.transient_tries)
    return 1


def _base_and_cap(kind: FailureKind, policy: RetryPolicy) -> tuple[float, float]:
    if kind is FailureKind.RATE_LIMIT:
        return policy.rate_limit_base_s, policy.rate_limit_cap_s
    return policy.transient_base_s, policy.transient_cap_s


def backoff_delay(
    kind: FailureKind,
    attempt: int,
    policy: RetryPolicy,
    *,
    retry_after: float | None,
    rng: random.Random,
) -> float:
    """Seconds to wait after the ``attempt``-th failure (1-based) of ``kind`` before trying again.

    A server-provided ``retry_after`` wins (clamped to ``[0, cap]``); otherwise exponential backoff
    with full jitter, ``uniform(0, min(cap, base * 2**(attempt - 1)))``, so that many workers hit
    by the same 429 do not all come back at the same instant. Kinds that are never retried use the
    transient parameters, so the function is total.
    """
    base, cap = _base_and_cap(kind, policy)
    cap = max(0.0, cap)
    if retry_after is not None and math.isfinite(retry_after):
        return min(cap, max(0.0, retry_after))
    exponent = max(0, attempt - 1)
    ceiling = cap if exponent >= 64 else min(cap, max(0.0, base) * 2.0**exponent)
    return rng.uniform(0.0, ceiling)


_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

_EPOCH_MS_THRESHOLD = 1e11  # 1e11 s is year 5138; larger numbers are milliseconds
_EPOCH_S_THRESHOLD = 1e9  # 2001-09-09; smaller numbers are a delay in seconds, not an instant


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(key).lower(): str(value) for key, value in headers.items()}


def _finite_non_negative(value: float) -> float | None:
    if not math.isfinite(value):
        return None
    return max(0.0, value)


def _parse_seconds_or_date(value: str, now: float) -> float | None:
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return _finite_non_negative(seconds) if seconds >= 0 else None
    try:
        from email.utils import parsedate_to_datetime  # rare: only HTTP-date Retry-After

        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" zone: UTC by RFC 5322
        when = when.replace(tzinfo=UTC)
    return _finite_non_negative(when.timestamp() - now)


def _parse_reset_instant(value: str, now: float) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    if number >= _EPOCH_MS_THRESHOLD:
        return max(0.0, number / 1000.0 - now)
    if number >= _EPOCH_S_THRESHOLD:
        return max(0.0, number - now)
    return number


def _parse_go_duration(value: str) -> float | None:
    text = value.strip()
    if not text:
        return None
    total = 0.0
    position = 0
    for match in _GO_DURATION_PART.finditer(text):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text):
        # A bare number is a count of seconds on some servers.
        try:
            total = float(text)
        except ValueError:
            return None
    return _finite_non_negative(total) if total >= 0 else None


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the server asked us to wait, or ``None`` when it did not say (or said junk).

    Understands, in order of precedence: ``Retry-After`` (delta seconds or HTTP-date, relative
    to ``now``, a Unix timestamp); ``X-RateLimit-Reset`` (OpenRouter: epoch milliseconds; epoch
    seconds and small delta-seconds values are accepted too); OpenAI's
    ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` durations such as ``"1s"``,
    ``"6m0s"``, ``"20ms"`` (the longer of the two when both are present, as either may be the
    limit that was hit). Header names are matched case-insensitively.
    """
    lowered = _lower_keys(headers)
    if "retry-after" in lowered:
        parsed = _parse_seconds_or_date(lowered["retry-after"], now)
        if parsed is not None:
            return parsed
    if "x-ratelimit-reset" in lowered:
        parsed = _parse_reset_instant(lowered["x-ratelimit-reset"], now)
        if parsed is not None:
            return parsed
    durations = [
        parsed
        for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
        if name in lowered and (parsed := _parse_go_duration(lowered[name])) is not None
    ]
    return max(durations) if durations else None


def _has_retry_after(headers: Mapping[str, str]) -> bool:
    return any(str(key).lower() == "retry-after" for key in headers)


def _classify_code(code: int, headers: Mapping[str, str]) -> FailureKind | None:
    if code < 400:
        return None
    if code == 429:
        return FailureKind.RATE_LIMIT
    if code == 408 or code >= 500:
        return FailureKind.TRANSIENT
    if code == 402:
        return FailureKind.RATE_LIMIT if _has_retry_after(headers) else FailureKind.QUOTA
    if code in (401, 403):
        return FailureKind.AUTH
    return FailureKind.INVALID_REQUEST


def classify_status(
    status: int, headers: Mapping[str, str], body_error_code: int | None
) -> FailureKind | None:
    """Classify an HTTP answer; ``None`` means it is not an error.

    The HTTP status decides when it is an error (>= 400). When the status claims success but the
    body carries an error object (OpenRouter does this when the upstream provider fails after
    the response has started), ``body_error_code`` is classified as if it were the status; a
    body code that is not an HTTP error code (e.g. ``0``) counts as a transient upstream failure.

    429 -> rate_limit; 408 and 5xx -> transient; 402 -> quota, unless the server also sent
    ``Retry-After`` (a temporary credit/rate block) -> rate_limit; 401/403 -> auth; every other
    4xx (400, 404, 413, 422, ...) -> invalid_request.
    """
    if status >= 400:
        return _classify_code(status, headers)
    if body_error_code is None:
        return None
    return _classify_code(body_error_code, headers) or FailureKind.TRANSIENT
