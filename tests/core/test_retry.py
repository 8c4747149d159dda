"""Pins the retry policy: which failures are retried, how long we wait, and how answers classify.

These are the rules that decide whether money is spent again, so every row is spelled out.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daydreamd.core.retry import (
    FailureKind,
    RetryPolicy,
    backoff_delay,
    classify_status,
    max_tries,
    parse_retry_after,
)

POLICY = RetryPolicy()
NOW = 1_700_000_000.0


# ---- max_tries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (FailureKind.RATE_LIMIT, 8),
        (FailureKind.TRANSIENT, 3),
        (FailureKind.RENDER_ERROR, 1),
        (FailureKind.QUOTA, 1),
        (FailureKind.INVALID_REQUEST, 1),
        (FailureKind.AUTH, 1),
        (FailureKind.CONTENT_FILTER, 1),
        (FailureKind.TRUNCATED, 1),
        (FailureKind.TOO_SHORT, 1),
        (FailureKind.PARSE_ERROR, 1),
        (FailureKind.EMPTY, 1),
        (FailureKind.INTERNAL, 1),
        (FailureKind.BATCH_EXPIRED, 1),
        (FailureKind.BATCH_CANCELLED, 1),
        (FailureKind.BATCH_FAILED, 1),
    ],
)
def test_max_tries_per_kind(kind: FailureKind, expected: int) -> None:
    assert max_tries(kind, POLICY) == expected


def test_every_kind_has_a_row_above() -> None:
    assert {kind.value for kind in FailureKind} == {
        "render_error",
        "rate_limit",
        "transient",
        "quota",
        "invalid_request",
        "auth",
        "content_filter",
        "truncated",
        "too_short",
        "parse_error",
        "empty",
        "internal",
        "batch_expired",
        "batch_cancelled",
        "batch_failed",
    }


def test_max_tries_follows_the_policy_and_never_drops_below_one() -> None:
    policy = RetryPolicy(rate_limit_tries=2, transient_tries=0)
    assert max_tries(FailureKind.RATE_LIMIT, policy) == 2
    assert max_tries(FailureKind.TRANSIENT, policy) == 1


def test_policy_is_frozen_and_keyword_only() -> None:
    with pytest.raises(AttributeError):
        POLICY.transient_tries = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[misc]


# ---- backoff_delay -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "base", "cap"),
    [(FailureKind.RATE_LIMIT, 2.0, 120.0), (FailureKind.TRANSIENT, 1.0, 30.0)],
)
def test_backoff_is_full_jitter_within_the_exponential_ceiling(
    kind: FailureKind, base: float, cap: float
) -> None:
    rng = random.Random(1234)
    for attempt in range(1, 12):
        ceiling = min(cap, base * 2 ** (attempt - 1))
        delays = [backoff_delay(kind, attempt, POLICY, retry_after=None, rng=rng) for _ in range(200)]
        assert all(0.0 <= delay <= ceiling for delay in delays)
        # Full jitter: spread over the whole range, not bunched near the ceiling.
        assert min(delays) < ceiling * 0.1
        assert max(delays) > ceiling * 0.9


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_delay(FailureKind.TRANSIENT, 3, POLICY, retry_after=None, rng=random.Random(7))]
    second = [backoff_delay(FailureKind.TRANSIENT, 3, POLICY, retry_after=None, rng=random.Random(7))]
    assert first == second


def test_backoff_survives_huge_attempt_numbers() -> None:
    delay = backoff_delay(FailureKind.RATE_LIMIT, 10_000, POLICY, retry_after=None, rng=random.Random(0))
    assert 0.0 <= delay <= 120.0


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(7.0, 7.0), (0.0, 0.0), (119.5, 119.5), (120.0, 120.0), (5000.0, 120.0), (-3.0, 0.0)],
)
def test_retry_after_is_honoured_and_capped(retry_after: float, expected: float) -> None:
    delay = backoff_delay(FailureKind.RATE_LIMIT, 1, POLICY, retry_after=retry_after, rng=random.Random(0))
    assert delay == expected


def test_retry_after_on_a_transient_failure_uses_the_transient_cap() -> None:
    delay = backoff_delay(FailureKind.TRANSIENT, 1, POLICY, retry_after=100.0, rng=random.Random(0))
    assert delay == 30.0


def test_non_finite_retry_after_falls_back_to_backoff() -> None:
    delay = backoff_delay(FailureKind.TRANSIENT, 1, POLICY, retry_after=math.inf, rng=random.Random(0))
    assert 0.0 <= delay <= 1.0


@given(
    kind=st.sampled_from(list(FailureKind)),
    attempt=st.integers(min_value=-5, max_value=500),
    retry_after=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_is_always_within_zero_and_cap(
    kind: FailureKind, attempt: int, retry_after: float | None, seed: int
) -> None:
    delay = backoff_delay(kind, attempt, POLICY, retry_after=retry_after, rng=random.Random(seed))
    cap = POLICY.rate_limit_cap_s if kind is FailureKind.RATE_LIMIT else POLICY.transient_cap_s
    assert 0.0 <= delay <= cap


# ---- parse_retry_after -------------------------------------------------------------------------


def _http_date(offset_s: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset_s, tz=UTC), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "5"}, 5.0),
        ({"retry-after": "0"}, 0.0),
        ({"RETRY-AFTER": " 1.5 "}, 1.5),
        ({"Retry-After": _http_date(30)}, 30.0),
        ({"Retry-After": _http_date(-30)}, 0.0),
        ({"X-RateLimit-Reset": str(int((NOW + 12) * 1000))}, 12.0),
        ({"X-RateLimit-Reset": str(int(NOW + 9))}, 9.0),
        ({"X-RateLimit-Reset": str(int((NOW - 5) * 1000))}, 0.0),
        ({"X-RateLimit-Reset": "4"}, 4.0),
        ({"x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1h2m3.5s"}, 3723.5),
        ({"x-ratelimit-reset-tokens": "2.5s"}, 2.5),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "7s"}, 7.0),
        ({"Retry-After": "3", "X-RateLimit-Reset": str(int((NOW + 50) * 1000))}, 3.0),
        ({"Retry-After": "soon", "x-ratelimit-reset-requests": "2s"}, 2.0),
    ],
)
def test_parse_retry_after_forms(headers: dict[str, str], expected: float) -> None:
    parsed = parse_retry_after(headers, NOW)
    assert parsed is not None
    assert parsed == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "application/json"},
        {"Retry-After": ""},
        {"Retry-After": "soon"},
        {"Retry-After": "-5"},
        {"Retry-After": "nan"},
        {"Retry-After": "inf"},
        {"Retry-After": "Wed, 99 Foo 2024 99:99:99 GMT"},
        {"X-RateLimit-Reset": "later"},
        {"X-RateLimit-Reset": "-1"},
        {"x-ratelimit-reset-requests": "1x"},
        {"x-ratelimit-reset-requests": "-1s"},
        {"x-ratelimit-reset-requests": "1s5"},
        {"x-ratelimit-reset-requests": ""},
    ],
)
def test_parse_retry_after_returns_none_for_absent_or_junk(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers, NOW) is None


@given(
    name=st.sampled_from(
        ["Retry-After", "X-RateLimit-Reset", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
    ),
    value=st.text(max_size=40),
)
def test_parse_retry_after_never_raises(name: str, value: str) -> None:
    parsed = parse_retry_after({name: value}, NOW)
    assert parsed is None or (math.isfinite(parsed) and parsed >= 0.0)


# ---- classify_status ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "body_code", "expected"),
    [
        (200, {}, None, None),
        (201, {}, None, None),
        (429, {}, None, FailureKind.RATE_LIMIT),
        (429, {"Retry-After": "3"}, None, FailureKind.RATE_LIMIT),
        (408, {}, None, FailureKind.TRANSIENT),
        (500, {}, None, FailureKind.TRANSIENT),
        (502, {}, None, FailureKind.TRANSIENT),
        (503, {}, None, FailureKind.TRANSIENT),
        (504, {}, None, FailureKind.TRANSIENT),
        (524, {}, None, FailureKind.TRANSIENT),
        (402, {}, None, FailureKind.QUOTA),
        (402, {"Retry-After": "10"}, None, FailureKind.RATE_LIMIT),
        (402, {"retry-after": "10"}, None, FailureKind.RATE_LIMIT),
        (400, {}, None, FailureKind.INVALID_REQUEST),
        (404, {}, None, FailureKind.INVALID_REQUEST),
        (413, {}, None, FailureKind.INVALID_REQUEST),
        (422, {}, None, FailureKind.INVALID_REQUEST),
        (409, {}, None, FailureKind.INVALID_REQUEST),
        (418, {}, None, FailureKind.INVALID_REQUEST),
        (401, {}, None, FailureKind.AUTH),
        (403, {}, None, FailureKind.AUTH),
        # An error object inside a 200 body is classified by its code.
        (200, {}, 502, FailureKind.TRANSIENT),
        (200, {}, 503, FailureKind.TRANSIENT),
        (200, {}, 429, FailureKind.RATE_LIMIT),
        (200, {}, 402, FailureKind.QUOTA),
        (200, {}, 401, FailureKind.AUTH),
        (200, {}, 400, FailureKind.INVALID_REQUEST),
        (200, {}, 0, FailureKind.TRANSIENT),
        # An HTTP error status wins over the body's code.
        (500, {}, 400, FailureKind.TRANSIENT),
        (401, {}, 502, FailureKind.AUTH),
    ],
)
def test_classify_status(
    status: int, headers: dict[str, str], body_code: int | None, expected: FailureKind | None
) -> None:
    assert classify_status(status, headers, body_code) == expected
