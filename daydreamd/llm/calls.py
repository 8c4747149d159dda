"""The one loop that retries LLM attempts, and the record of each attempt it reports.

Retrying is not a provider's job: :func:`call_with_retries` is the single place that decides,
using the pure policy in :mod:`daydreamd.core.retry`, and reports every attempt through a hook so
the worker pool can record it and slow down on 429s. Truncation is not an error here: a reply cut
at ``max_tokens`` is returned with ``Reply.truncated=True`` (its text was paid for), and the
caller decides per stage whether that fails the generation.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from daydreamd.core.retry import FailureKind, RetryPolicy, backoff_delay, max_tries
from daydreamd.llm.types import CallFailure, LlmRequest, Provider, Reply, Usage


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptRecord:
    """What one attempt did, handed to ``on_attempt`` right after it finished.

    ``started_at``/``finished_at`` are wall-clock Unix times (for the record); ``duration_s``
    is measured on the monotonic clock. ``outcome`` is ``"ok"`` or a :class:`FailureKind` value.
    ``delay_s`` is the backoff about to be slept before the next attempt, ``None`` when there is
    no next attempt (success, or the failure is final).
    """

    attempt: int
    started_at: float
    finished_at: float
    duration_s: float
    outcome: str
    status: int | None
    message: str | None
    retry_after: float | None
    usage: Usage | None
    delay_s: float | None


AttemptHook = Callable[[AttemptRecord], Awaitable[None] | None]
Sleep = Callable[[float], Awaitable[Any]]


async def _notify(hook: AttemptHook | None, record: AttemptRecord) -> None:
    if hook is None:
        return
    result = hook(record)
    if inspect.isawaitable(result):
        await result


def _failure_record(
    failure: CallFailure, attempt: int, started: tuple[float, float], delay: float | None
) -> AttemptRecord:
    wall, mono = started
    return AttemptRecord(
        attempt=attempt,
        started_at=wall,
        finished_at=time.time(),
        duration_s=time.monotonic() - mono,
        outcome=failure.kind.value,
        status=failure.status,
        message=failure.message,
        retry_after=failure.retry_after,
        usage=failure.reply.usage if failure.reply is not None else None,
        delay_s=delay,
    )


def _success_record(reply: Reply, attempt: int, started: tuple[float, float]) -> AttemptRecord:
    wall, mono = started
    return AttemptRecord(
        attempt=attempt,
        started_at=wall,
        finished_at=time.time(),
        duration_s=time.monotonic() - mono,
        outcome="ok",
        status=None,
        message=None,
        retry_after=None,
        usage=reply.usage,
        delay_s=None,
    )


async def call_with_retries(
    provider: Provider,
    request: LlmRequest,
    policy: RetryPolicy,
    *,
    rng: random.Random,
    sleep: Sleep = anyio.sleep,
    on_attempt: AttemptHook | None = None,
) -> tuple[Reply, int]:
    """Call ``provider.complete`` until it succeeds or the policy gives up.

    Attempts are budgeted per failure kind: a call may meet ``rate_limit_tries`` rate limits
    *and* ``transient_tries`` transient faults, so a burst of 429s does not use up the budget for
    real server errors (and vice versa); every other kind fails at once. The backoff for the
    n-th failure of a kind is :func:`~daydreamd.core.retry.backoff_delay` with ``attempt=n``.

    ``on_attempt`` (sync or async) sees every attempt, before the backoff sleep.

    Returns:
        The reply (possibly ``truncated``) and the number of attempts made.

    Raises:
        CallFailure: the last failure, with ``attempts`` set to the number of attempts made.
    """
    failures_by_kind: dict[FailureKind, int] = {}
    attempt = 0
    while True:
        attempt += 1
        started = (time.time(), time.monotonic())
        try:
            reply = await provider.complete(request)
        except CallFailure as failure:
            failure.attempts = attempt
            count = failures_by_kind.get(failure.kind, 0) + 1
            failures_by_kind[failure.kind] = count
            delay = None
            if count < max_tries(failure.kind, policy):
                delay = backoff_delay(failure.kind, count, policy, retry_after=failure.retry_after, rng=rng)
            await _notify(on_attempt, _failure_record(failure, attempt, started, delay))
            if delay is None:
                raise
            await sleep(delay)
            continue
        await _notify(on_attempt, _success_record(reply, attempt, started))
        return reply, attempt
